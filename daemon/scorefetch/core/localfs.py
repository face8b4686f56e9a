"""The local side of a download, where the disk and the folder can say no: OS errors
become a `LocalError` (recorded and retried), temporary names that always fit, and
placing a finished file under its final name without ever replacing another one —
also on folders that refuse hard links (SMB/CIFS shares, some FUSE file systems).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from scorefetch.core.errors import LocalError, describe
from scorefetch.core.libc import libc

NAME_MAX = 255  # bytes in one path component (ext4, xfs, tmpfs, btrfs; SMB allows more)
# os.link says "this folder does not do hard links" with one of these.
NO_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}
)
_RENAME_NOREPLACE = 1  # linux/fs.h
_rename_lock = threading.Lock()  # this process never races itself in the rename fallback


@contextlib.contextmanager
def local_faults(what: str) -> Iterator[None]:
    """Turn an OSError of the local file system (not of the network) into a LocalError."""
    try:
        yield
    except (OSError, UnicodeError) as exc:
        code = exc.errno if isinstance(exc, OSError) else None
        raise LocalError(f"{what}: {describe(exc)}", errno=code) from None


def part_name(name: str, n: int = 0) -> str:
    """`.NAME.part` (or `.NAME.N.part`), shortened with a hash of NAME to fit NAME_MAX: a
    vendor's name may itself be 255 bytes. Still matches `.*.part` (remove_partials)."""
    suffix = ".part" if n == 0 else f".{n}.part"
    full = f".{name}{suffix}"
    if len(full.encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return full
    tag = "~" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    room = NAME_MAX - 1 - len(tag) - len(suffix)
    head = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{head}{tag}{suffix}"


def numbered_name(name: str, n: int) -> str:
    """NAME-N.EXT (NAME itself for 0), the stem cut to fit NAME_MAX: a vendor's name may
    itself be 255 bytes. An extension that leaves no room is treated as part of the stem."""
    if n == 0:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = f"-{n}{dot}{ext}"
    if not dot or not stem or len(suffix.encode("utf-8", "surrogateescape")) >= NAME_MAX:
        stem, suffix = name, f"-{n}"
    room = NAME_MAX - len(suffix.encode("utf-8", "surrogateescape"))
    head = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return head + suffix


def place_no_replace(part: Path, target: Path) -> None:
    """Give `part`'s file the name `target`, or FileExistsError if `target` exists.

    A hard link is atomic and never replaces anything. Where the folder refuses hard
    links, renameat2(RENAME_NOREPLACE) is as good. Where that is missing too (old kernels,
    CIFS), the name is checked and then renamed under a process-wide lock: this daemon
    never races itself, but another program creating the same name in the same instant
    could be replaced (a trade-off such folders force; the vendor names are unique)."""
    try:
        os.link(part, target)
    except OSError as exc:
        if exc.errno not in NO_LINKS:
            raise
    else:
        part.unlink()
        return
    if _renameat2(part, target):
        return
    with _rename_lock:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        part.rename(target)


def _renameat2(part: Path, target: Path) -> bool:
    """rename with RENAME_NOREPLACE; False where the kernel or file system lacks it."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    at_fdcwd = -100
    result = fn(at_fdcwd, os.fsencode(part), at_fdcwd, os.fsencode(target), _RENAME_NOREPLACE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def _libc_renameat2() -> Callable[..., int] | None:
    fn = getattr(libc(), "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    result: Callable[..., int] = fn
    return result
