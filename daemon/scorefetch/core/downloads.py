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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import requests

from scorefetch.config import is_loopback
from scorefetch.core.errors import Failure, RefusedError, VendorError
from scorefetch.core.filenames import check_name
from scorefetch.core.localfs import local_faults, part_name, place_no_replace
from scorefetch.core.logs import strip_query

CHUNK = 1024 * 1024
WRITE_BEHIND = 64 * 1024 * 1024
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Landed:
    path: Path
    size: int
    sha256: str
    elapsed_s: float


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """`host` equals a pattern, or matches `*.suffix` with one or more labels before it."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def check_url(url: str, hosts: Iterable[str]) -> None:
    """RefusedError unless `url` is https (http only on loopback) to an allowed host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in {"https", "http"} or not host:
        raise RefusedError(f"download URL {strip_query(url)!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise RefusedError(f"download URL {strip_query(url)!r} is plain http to a remote host")
    if parts.username or parts.password:
        raise RefusedError("download URL carries credentials")
    if not host_allowed(host, hosts):
        raise RefusedError(f"download host {host!r} is not in download_hosts")


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
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    for n in range(1000):
        target = folder / (name if n == 0 else f"{stem}-{n}{dot}{ext}")
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


def fetch_to_file(
    session: requests.Session,
    url: str,
    folder: Path,
    name: str,
    *,
    hosts: Iterable[str],
    deadline_s: float,
    progress: Progress | None = None,
) -> Landed:
    """Stream `url` into `folder/name`, complete or not at all.

    Raises RefusedError before any connection for a bad name or URL, VendorError whose
    `kind` says how to retry, and LocalError when the disk or the folder says no.
    """
    check_name(name)
    check_url(url, hosts)
    started = time.monotonic()
    with local_faults(f"cannot save {name}"):
        return _fetch(session, url, folder, name, started, deadline_s, progress)


def _fetch(
    session: requests.Session,
    url: str,
    folder: Path,
    name: str,
    started: float,
    deadline_s: float,
    progress: Progress | None,
) -> Landed:
    ensure_folder(folder)
    fd, part = open_part(folder, name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = session.get(url, stream=True, allow_redirects=False)
            except requests.RequestException as exc:
                raise VendorError(
                    f"download failed: {_describe(exc)}", kind=Failure.TRANSIENT
                ) from None
            with response:
                _raise_for_download_status(response)
                expected = _content_length(response)
                size, digest = _stream(response, out, started + deadline_s, expected, progress)
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


def _stream(
    response: requests.Response,
    out: BinaryIO,
    deadline: float,
    expected: int | None,
    progress: Progress | None,
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = written_back = 0
    try:
        for chunk in response.iter_content(chunk_size=CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            if size - written_back >= 2 * WRITE_BEHIND:
                written_back = _write_behind(out, written_back)
            if progress is not None:
                progress(size, expected)
            if time.monotonic() > deadline:
                raise VendorError("download exceeded its overall deadline", kind=Failure.TRANSIENT)
    except requests.RequestException as exc:
        raise VendorError(
            f"download interrupted: {_describe(exc)}", kind=Failure.TRANSIENT
        ) from None
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


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _raise_for_download_status(response: requests.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    if status == 403:  # S3: AccessDenied, "Request has expired"
        raise VendorError(
            "download URL refused (403): expired or not valid", kind=Failure.EXPIRED, status=status
        )
    if status >= 500 or status == 429:
        raise VendorError(
            f"download server error ({status})", kind=Failure.TRANSIENT, status=status
        )
    raise VendorError(f"download failed with HTTP {status}", kind=Failure.FATAL, status=status)


def _describe(exc: requests.RequestException) -> str:
    """The exception's class and text with any URL query removed."""
    return strip_query(f"{type(exc).__name__}: {exc}")
