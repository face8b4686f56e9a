"""Durable downloads: a URL checked before any connection, bytes streamed to a hidden
`.NAME.part`, fsynced, then linked into place under a name that never overwrites a
different file. Shared by every vendor.

While streaming, each `WRITE_BEHIND` bytes already written are handed to the kernel to
write out now (posix_fadvise DONTNEED starts writeback without waiting, and lets the pages
go once clean): the final fsync then has only the tail left, and a daemon landing large
files does not crowd the page cache. Durability still rests on that fsync.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from scorefetch.core import interrupt
from scorefetch.core.errors import (
    Failure,
    LocalError,
    RefusedError,
    ScorefetchError,
    VendorError,
    describe,
    local_errno,
)
from scorefetch.core.filenames import check_name
from scorefetch.core.http import Deadline, HttpError, Response, Session, deadline, redirect_target
from scorefetch.core.localfs import local_faults, numbered_name, part_name, place_no_replace
from scorefetch.core.urls import UrlError, connect_target, host_allowed, is_loopback

CHUNK = 1024 * 1024
_DIGITS = re.compile(r"[0-9]{1,19}")
WRITE_BEHIND = 64 * 1024 * 1024
Progress = Callable[[int, int | None], None]
FOREVER_S = 365 * 24 * 3600.0  # `land` without a deadline


@dataclass(frozen=True)
class Landed:
    path: Path
    size: int
    sha256: str
    elapsed_s: float


def check_url(url: str, hosts: Iterable[str]) -> None:
    """RefusedError unless `url` is https (http only on loopback) to an allowed host, read
    the way the connection will read it (core/urls.py); a remote https URL on the default
    port only (a presigned S3 URL never names one)."""
    try:
        target = connect_target(url)
    except UrlError as exc:
        raise RefusedError(f"download URL refused: {exc}") from None
    loopback = is_loopback(target.host)
    if target.scheme == "http" and not loopback:
        raise RefusedError(f"download URL to {target.host} is plain http to a remote host")
    if not loopback and target.port not in (None, 443):
        raise RefusedError(f"download URL to {target.host} names port {target.port}")
    if not host_allowed(target.host, hosts):
        raise RefusedError(f"download host {target.host!r} is not in download_hosts")


def check_inside(root: Path, folder: Path, name: str) -> Path:
    """`folder/name`, once it is sure to resolve inside `root` (symlinks and `..` followed):
    nothing a vendor said can place a file elsewhere."""
    base = root.resolve()
    target = (folder / name).resolve()
    if target.parent != folder.resolve() or not target.is_relative_to(base) or target == base:
        raise RefusedError(f"{name!r} would land outside {root}")
    return target


def ensure_folder(folder: Path) -> None:
    """Create `folder` (and parents) 0700; fsync the parent so the entry survives a crash."""
    if folder.is_dir():
        return
    ensure_folder(folder.parent)
    folder.mkdir(mode=0o700, exist_ok=True)
    fsync_dir(folder.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_part(folder: Path, name: str) -> tuple[int, Path]:
    """A new hidden `.NAME.part` (0600) in `folder`, or `.NAME.N.part` while another download
    of the same name (another Encoura export, a `fetch` beside the daemon) is writing one."""
    for n in range(100):
        part = folder / part_name(name, n)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(part, flags, 0o600), part
        except FileExistsError:
            continue
    raise RefusedError(f"too many downloads of {name!r} at once in {folder}")


def remove_partials(root: Path) -> list[Path]:
    """Delete leftover `.NAME.part` files under `root` (a crash mid-download); return them."""
    removed = []
    if root.is_dir():
        for path in root.rglob(".*.part"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _place(part: Path, folder: Path, name: str, sha256: str) -> Path:
    """Link `part` to its final name; an existing different file keeps its name, we take NAME-N."""
    for n in range(1000):
        target = folder / numbered_name(name, n)
        try:
            place_no_replace(part, target)  # never replaces a file
        except FileExistsError:
            if target.is_file() and _sha256_of(target) == sha256:
                break  # the very same bytes are already here
            continue
        break
    else:
        raise RefusedError(f"too many different files named like {name!r} in {folder}")
    part.unlink(missing_ok=True)  # linked (or, where links are refused, renamed)
    fsync_dir(folder)
    return target


def land(
    chunks: Iterable[bytes],
    folder: Path,
    name: str,
    *,
    expected: int | None = None,
    max_size: int | None = None,
    progress: Progress | None = None,
    deadline_s: float | None = None,
    root: Path | None = None,
) -> Landed:
    """Any source's bytes as `folder/name`, complete or not at all: streamed to a hidden
    `.NAME.part` (0600), checksummed, fsynced, then linked into place under a name that
    never replaces a different file (NAME-1 …; the very same bytes already there are that
    file). `expected` bytes when the source says how many, at most `max_size`, within
    `deadline_s`, and only inside `root` (default: `folder`). The landing every source
    shares, HTTP or not (`fetch_to_file` is it for a URL).

    Raises RefusedError for a bad name, VendorError when the bytes fall short, overrun or
    outlast the deadline, LocalError when the disk or the folder says no; whatever the
    chunks raise goes through, and no part file stays in any case."""
    check_name(name)
    check_inside(root or folder, folder, name)
    started = time.monotonic()
    with local_faults(f"cannot save {name}"), deadline(deadline_s or FOREVER_S) as clock:
        return _land(chunks, folder, name, started, clock, expected, max_size, progress)


def fetch_to_file(
    session: Session,
    url: str,
    folder: Path,
    name: str,
    *,
    hosts: Iterable[str],
    deadline_s: float,
    progress: Progress | None = None,
    max_size: int | None = None,
    root: Path | None = None,
) -> Landed:
    """Stream `url` into `folder/name` (see `land`): the bytes exactly as the server stores
    them (identity encoding), at most `max_size`, within `deadline_s` however they arrive
    (the request included), and only inside `root` (default: `folder`).

    Raises RefusedError before any connection for a bad name or URL, VendorError whose
    `kind` says how to retry, and LocalError when the disk or the folder says no.
    """
    check_name(name)
    check_url(url, hosts)
    check_inside(root or folder, folder, name)
    started = time.monotonic()
    with local_faults(f"cannot save {name}"), deadline(deadline_s) as clock:
        ensure_folder(folder)  # a local fault (the folder, no descriptors) shows first,
        opened: tuple[int, Path] | None = open_part(folder, name)  # before any request
        try:
            response = _get(session, url, clock)
            with response:
                _raise_for_download_status(response)
                expected = _content_length(response)
                _check_size(expected, max_size)
                chunks = _raw_chunks(response, clock)
                landing, opened = opened, None  # _land owns the part from here
                return _land(
                    chunks, folder, name, started, clock, expected, max_size, progress, landing
                )
        finally:
            if opened is not None:
                os.close(opened[0])
                with contextlib.suppress(OSError):
                    opened[1].unlink(missing_ok=True)


def _land(
    chunks: Iterable[bytes],
    folder: Path,
    name: str,
    started: float,
    clock: Deadline,
    expected: int | None,
    max_size: int | None,
    progress: Progress | None,
    opened: tuple[int, Path] | None = None,
) -> Landed:
    """Stream `chunks` into a part file (`opened`, or a new one), then place it."""
    ensure_folder(folder)
    fd, part = opened or open_part(folder, name)
    try:
        with os.fdopen(fd, "wb") as out:
            size, digest = _stream(chunks, out, clock, expected, max_size, progress)
        interrupt.check()  # lost at the end of the stream (the response's release)
        if expected is not None and size != expected:
            raise VendorError(
                f"download truncated: {size} of {expected} bytes", kind=Failure.TRANSIENT
            )
        path = _place(part, folder, name, digest)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder: the next start removes it
            part.unlink(missing_ok=True)
        raise
    return Landed(path, size, digest, time.monotonic() - started)


def _get(session: Session, url: str, clock: Deadline) -> Response:
    """The answer's head; the body is read from `response.raw`, as stored (not decoded)."""
    connect, read = session.timeout
    left = max(clock.remaining(), 0.1)
    try:
        return session.get(
            url,
            stream=True,
            allow_redirects=False,
            headers={"Accept-Encoding": "identity"},
            timeout=(min(connect, left), min(read, left)),
        )
    except HttpError as exc:
        raise _failed("download failed", exc, clock) from None


def _failed(what: str, exc: BaseException, clock: Deadline) -> ScorefetchError:
    if (code := local_errno(exc)) is not None:  # no descriptor for a socket: ours, not theirs
        return LocalError(f"{what}: {describe(exc)}", errno=code)
    if clock.passed:
        return VendorError("download exceeded its overall deadline", kind=Failure.TRANSIENT)
    return VendorError(f"{what}: {describe(exc)}", kind=Failure.TRANSIENT)


def _raw_chunks(response: Response, clock: Deadline) -> Iterator[bytes]:
    """The body's bytes as they come off the wire: a `Content-Encoding: gzip` file lands as
    the gzip the vendor stored (what curl saves without --compressed), and its size is the
    Content-Length. Library errors become VendorError here, disk errors stay the caller's."""
    reader = response.iter_content(CHUNK, decoded=False)
    while True:
        try:
            chunk = next(reader, None)
        except HttpError as exc:
            raise _failed("download interrupted", exc, clock) from None
        if clock.passed:  # the watchdog shut the socket: what came last may be short
            raise VendorError("download exceeded its overall deadline", kind=Failure.TRANSIENT)
        if chunk is None:
            return
        yield chunk


def _check_size(size: int | None, max_size: int | None) -> None:
    # Too large for this configuration is not a passing fault: never retried (REFUSED);
    # a person raises max_file_size and runs `scorefetch fetch`.
    if size is not None and max_size is not None and size > max_size:
        raise VendorError(
            f"download refused: larger than max_file_size ({max_size} bytes)",
            kind=Failure.REFUSED,
        )


def _stream(
    chunks: Iterable[bytes],
    out: BinaryIO,
    clock: Deadline,
    expected: int | None,
    max_size: int | None,
    progress: Progress | None,
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = written_back = 0
    for chunk in chunks:
        interrupt.check()
        size += len(chunk)
        _check_size(size, max_size)
        out.write(chunk)
        digest.update(chunk)
        if size - written_back >= 2 * WRITE_BEHIND:
            written_back = _write_behind(out, written_back)
        if progress is not None:
            progress(size, expected)
        if clock.remaining() <= 0:
            raise VendorError("download exceeded its overall deadline", kind=Failure.TRANSIENT)
    out.flush()
    os.fsync(out.fileno())
    return size, digest.hexdigest()


def _write_behind(out: BinaryIO, start: int) -> int:
    """Start writing `WRITE_BEHIND` bytes from `start` to disk, without waiting; the
    offset where the next round begins."""
    if hasattr(os, "posix_fadvise"):  # Linux and most Unixes; elsewhere the fsync does it all
        out.flush()
        os.posix_fadvise(out.fileno(), start, WRITE_BEHIND, os.POSIX_FADV_DONTNEED)
    return start + WRITE_BEHIND


def _content_length(response: Response) -> int | None:
    value = (response.headers.get("Content-Length") or "").strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def _raise_for_download_status(response: Response) -> None:
    status = response.status_code
    if status == 200:
        return
    if 300 <= status < 400:  # never followed; retried like a server error (answers.py)
        raise VendorError(
            f"download answered HTTP {status} redirect to {redirect_target(response)}"
            " (never followed)",
            kind=Failure.TRANSIENT,
            status=status,
        )
    if status == 403:  # S3: AccessDenied, "Request has expired"
        raise VendorError(
            "download URL refused (403): expired or not valid", kind=Failure.EXPIRED, status=status
        )
    if status >= 500 or status == 429:
        raise VendorError(
            f"download server error ({status})", kind=Failure.TRANSIENT, status=status
        )
    raise VendorError(f"download failed with HTTP {status}", kind=Failure.FATAL, status=status)
