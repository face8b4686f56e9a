"""Every file we write outside the ledger and the downloads (the metrics textfile, doctor's
probe files): a new file of our own, never one someone else left for us.

Such folders are often writable by others (node_exporter's textfile folder is commonly
group-writable): a predictable name opened without O_EXCL follows a planted symlink and
writes through it, onto a score file or the ledger. Here the file is created under a
random name with O_CREAT|O_EXCL|O_NOFOLLOW, relative to the folder opened once, its mode
set with fchmod on our own descriptor (whatever the umask), written, fsynced, and only
then renamed over the target (rename replaces a symlink; it never follows one).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTEMPTS = 16  # random names taken already (by chance or by someone): try another


def _open_folder(folder: Path) -> int:
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _create(dir_fd: int, prefix: str) -> tuple[int, str]:
    for _ in range(_ATTEMPTS):
        name = f"{prefix}{secrets.token_hex(8)}.tmp"
        try:
            return os.open(name, _FLAGS, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name after {_ATTEMPTS} attempts")


def _write_all(fd: int, data: bytes, mode: int) -> None:
    os.fchmod(fd, mode)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def write_new(folder: Path, prefix: str, data: bytes, mode: int = 0o600) -> Path:
    """A new file in `folder` named `prefix` + random, holding `data` with `mode`; gone
    again if anything fails (OSError raised)."""
    dir_fd = _open_folder(folder)
    try:
        fd, name = _create(dir_fd, prefix)
        try:
            _write_all(fd, data, mode)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
        return folder / name
    finally:
        os.close(dir_fd)


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """`path` replaced whole by a file of our own holding `data` with `mode` (readers see
    the old file or the new one, never half of one); OSError when it cannot be."""
    folder = path.parent
    dir_fd = _open_folder(folder)
    try:
        fd, name = _create(dir_fd, f".{path.name}.")
        try:
            try:
                _write_all(fd, data, mode)
            finally:
                os.close(fd)
            os.replace(name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        with contextlib.suppress(OSError):  # not every filesystem syncs a folder
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
