"""One file to an SFTP server (Slate's, usually), the way an import mask wants it: under a
dot-name first, size confirmed, then renamed, never over another file.

The server's key is pinned: only the configured keys are accepted, checked after the key
exchange and before any credential is offered. Nothing is read from ~/.ssh or the agent.
Every library error leaves here as a ForwardError whose text is safe to log.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar, cast

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_STATUS, CMD_WRITE, int64

from scorefetch.config import SftpDestination, keys
from scorefetch.core.errors import Failure, RefusedError, local_errno
from scorefetch.core.filenames import check_name
from scorefetch.core.logs import untrusted
from scorefetch.forward import ForwardError, Placed

# Larger than paramiko's defaults (2 MiB window, 32 KiB packets): a long fat pipe to Slate
# and fewer window adjustments on loopback.
WINDOW = 16 * 1024 * 1024
PACKET = 256 * 1024
READ_CHUNK = 1024 * 1024
PART_SUFFIX = ".part"
PART_EXTRA = len(".12345678") + len(PART_SUFFIX)  # what the temporary name adds to its stem
NAME_MAX = 255  # bytes in one remote path component (OpenSSH on ext4, xfs, tmpfs)
LEGACY = "legacy"  # an upload the previous release began (its rename was not recorded)
MIN_WRITE = 32768  # every SFTP server takes writes this large
MAX_WRITE = 1024 * 1024
IN_FLIGHT_BYTES = 8 * 1024 * 1024  # written and not yet answered, at most
P = ParamSpec("P")
T = TypeVar("T")


class SftpTarget:
    """A configured SFTP destination (`forward.<name>` with `type: sftp`)."""

    def __init__(self, name: str, config: SftpDestination) -> None:
        self.name = name
        self.config = config
        self.retry_schedule = tuple(config.retry_schedule)
        self._pinned = config.pinned_keys()
        self._key: paramiko.PKey | None = None
        if config.private_key is not None:
            passphrase = config.passphrase.get_secret_value() if config.passphrase else None
            self._key = keys.load_private_key(config.private_key.get_secret_value(), passphrase)
        self._where = f"{config.host}:{config.port}"

    def wants(self, vendor: str) -> bool:
        return self.config.wants(vendor)

    def remote_dir(self, vendor: str, product_key: str | None) -> str:
        for part in (vendor, product_key):
            if part is not None and (not part or "/" in part or part in (".", "..")):
                raise ForwardError(f"{part!r} cannot be a remote folder name", kind=Failure.REFUSED)
        return self.config.remote_dir.format(vendor=vendor, product_key=product_key or "")

    def upload(
        self,
        local: Path,
        filename: str,
        vendor: str,
        product_key: str | None,
        *,
        sha256: str | None = None,
        ours: str | None = None,
        renaming: Callable[[str], None] | None = None,
    ) -> Placed:
        """Put `local` at remote_dir/`filename`; ForwardError says why not."""
        try:
            check_name(filename)
        except RefusedError as exc:
            raise ForwardError(f"{filename!r}: {exc}", kind=Failure.REFUSED) from None
        folder = self.remote_dir(vendor, product_key)
        final = posixpath.join(folder, filename)
        source = _open_landed(local)
        with source, self._session() as sftp:
            size = os.fstat(source.fileno()).st_size
            self._call(_makedirs, sftp, folder)
            if self._call(_size_of, sftp, final) is not None:
                mine = ours in (final, LEGACY)
                return self._existing(sftp, final, size, sha256, mine=mine)
            self._call(_remove_stale_parts, sftp, folder, filename)
            temp = posixpath.join(
                folder, f"{_part_stem(filename)}.{secrets.token_hex(4)}{PART_SUFFIX}"
            )
            try:
                sent = self._call(_put, sftp, source, temp, size)
                if sha256 is not None and sent != sha256:
                    raise ForwardError(
                        f"the local copy {local} is not the file that landed (its SHA-256 "
                        "differs: changed since, by hand or by another program); not sent: "
                        "move it away, then `scorefetch fetch --force` it to send the "
                        "vendor's file",
                        kind=Failure.REFUSED,
                        reason="changed",
                    )
                if renaming is not None:
                    renaming(final)
                try:
                    # Plain SFTP rename fails when the target exists (OpenSSH: link+unlink),
                    # so a file that appeared since the check above is never replaced.
                    self._call(sftp.rename, temp, final)
                except ForwardError:
                    if self._call(_size_of, sftp, final) is None:
                        raise
                    # Ours when the rename went through and only its answer was lost.
                    mine = renaming is not None and self._call(_size_of, sftp, temp) is None
                    return self._existing(sftp, final, size, sha256, mine=mine)
                temp = ""
            finally:
                if temp:
                    with contextlib.suppress(Exception):
                        sftp.remove(temp)
        return Placed(final, size)

    def probe(self) -> str:
        """Log in, then write and remove a probe file in each remote folder (the part of
        remote_dir before any {product_key}); says what it did, or raises ForwardError (a
        ScorefetchError) with a clear message. For `scorefetch doctor`."""
        template = self.config.remote_dir.split("{product_key}")[0]
        if "{product_key}" in self.config.remote_dir:
            template = (
                template.rstrip("/") if template.endswith("/") else posixpath.dirname(template)
            )
        folders = sorted({template.format(vendor=v) or "." for v in self.config.vendors})
        with self._session() as sftp:
            for folder in folders:
                made = self._call(_makedirs, sftp, folder)
                probe = posixpath.join(folder, f".scorefetch-probe.{secrets.token_hex(4)}")
                try:
                    self._call(_write_small, sftp, probe, b"scorefetch probe\n")
                finally:  # never a dot-file left in Slate's import folder, written or not
                    with contextlib.suppress(Exception):
                        sftp.remove(probe)
                    for path in reversed(made):  # doctor changes nothing: folders it made go
                        with contextlib.suppress(Exception):
                            sftp.rmdir(path)
        pinned = ", ".join(keys.fingerprint(k) for k in self._pinned)
        return (
            f"{self._where}: host key verified ({pinned}), logged in as "
            f"{self.config.username}, wrote and removed a probe file in {', '.join(folders)}"
        )

    def _existing(
        self, sftp: paramiko.SFTPClient, final: str, size: int, sha256: str | None, *, mine: bool
    ) -> Placed:
        """A file is at the final name: ours (our rename was sent, the same bytes), or a
        conflict that is never overwritten nor counted as delivered."""
        there = self._call(_size_of, sftp, final)
        if (
            mine
            and there == size
            and (sha256 is None or self._call(_sha256_of, sftp, final) == sha256)
        ):
            return Placed(final, size, already=True)  # our earlier attempt got this far
        raise ForwardError(
            f"conflict: {final} already exists on {self._where} ({there} bytes) and is not "
            f"the upload scorefetch made; not overwritten: move it away there (or give this "
            "vendor or product its own remote_dir) to have this file sent",
            kind=Failure.REFUSED,
            reason="conflict",
        )

    @contextlib.contextmanager
    def _session(self) -> Iterator[paramiko.SFTPClient]:
        config = self.config
        try:
            sock = socket.create_connection((config.host, config.port), timeout=config.timeout)
        except OSError as exc:
            raise self._error(exc, "cannot connect") from None
        transport = paramiko.Transport(
            sock, default_window_size=WINDOW, default_max_packet_size=PACKET
        )
        try:
            transport.banner_timeout = transport.handshake_timeout = config.timeout
            transport.auth_timeout = config.timeout
            # Offer only the pinned key types, so the server shows a key we can check.
            options = transport.get_security_options()
            options.key_types = keys.algorithms(self._pinned)
            # AES-GCM first: one pass over the data instead of a cipher and a MAC.
            options.ciphers = sorted(options.ciphers, key=lambda c: "-gcm@" not in c)
            try:
                transport.start_client(timeout=config.timeout)
                self._check_host_key(transport.get_remote_server_key())
                if self._key is not None:
                    transport.auth_publickey(config.username, self._key)
                if not transport.is_authenticated() and config.password is not None:
                    transport.auth_password(config.username, config.password.get_secret_value())
                sftp = _start_sftp(transport, config.timeout)
            except ForwardError:
                raise
            except Exception as exc:  # noqa: BLE001 - paramiko raises many kinds; map them all
                raise self._error(exc, "cannot log in") from None
            if sftp is None:
                raise ForwardError(f"{self._where}: no SFTP subsystem", kind=Failure.TRANSIENT)
            sftp.get_channel().settimeout(config.timeout)  # type: ignore[union-attr]
            try:
                yield sftp
            finally:
                # Closing a channel a link reset killed raises (EOFError): that must never
                # replace the error that says what happened.
                with contextlib.suppress(Exception):
                    sftp.close()
        finally:
            with contextlib.suppress(Exception):
                transport.close()

    def _check_host_key(self, key: paramiko.PKey) -> None:
        if any(key == pinned for pinned in self._pinned):
            return
        pinned = ", ".join(keys.fingerprint(k) for k in self._pinned)
        raise ForwardError(
            f"host key mismatch: {self._where} presented {key.get_name()} "
            f"{keys.fingerprint(key)}, which is not pinned ({pinned}); did not log in",
            kind=Failure.AUTH,
            reason="host_key",
        )

    def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One step on an open session; a library error leaves as a ForwardError."""
        try:
            return fn(*args, **kwargs)
        except ForwardError:
            raise
        except Exception as exc:  # noqa: BLE001 - paramiko raises many kinds (UnicodeDecodeError for a non-UTF-8 status): map them all
            doing = getattr(fn, "__name__", "sftp").strip("_").replace("_", " ")
            raise self._error(exc, doing) from None

    def _error(self, exc: BaseException, doing: str) -> ForwardError:
        """A library error as a ForwardError: class, host and reason only. The reason may be
        the server's own words (an SFTP status message arrives as OSError.strerror), so
        every branch's is cleaned by logs.untrusted before it reaches a log, the ledger,
        `status` or a hook's environment."""
        name = type(exc).__name__
        if isinstance(exc, paramiko.AuthenticationException):
            return ForwardError(
                f"{doing}: {self._where} refused {self.config.username} ({name})",
                kind=Failure.AUTH,
            )
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer within {self.config.timeout:g}s"
        elif isinstance(exc, OSError):
            reason = exc.strerror or (str(exc.args[0]) if exc.args else "error")
        elif isinstance(exc, EOFError):
            reason = "connection closed"
        else:
            reason = str(exc)  # paramiko's protocol words
        reason = untrusted(reason, 200) or "error"
        kind = Failure.TRANSIENT
        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
            kind = Failure.AUTH  # a folder we may not write: a person must act
        elif local_errno(exc) is not None:
            kind = Failure.LOCAL  # no descriptor for a socket here: ours, retried for ever
        return ForwardError(f"{doing}: {name}: {reason} ({self._where})", kind=kind)


def _start_sftp(transport: paramiko.Transport, timeout: float) -> paramiko.SFTPClient | None:
    """The SFTP channel, within `timeout`. paramiko bounds the handshake and the login, but
    not this: opening the channel waits up to an hour, the subsystem request and the SFTP
    version for ever (a server that accepted the login and then says nothing). The
    transport is closed when the time is up, which wakes every wait with an error."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        transport.close()

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        return paramiko.SFTPClient.from_transport(
            transport, window_size=WINDOW, max_packet_size=PACKET
        )
    except (OSError, EOFError, paramiko.SSHException):
        if expired.is_set():
            raise TimeoutError from None  # "no answer within …s", not paramiko's EOF
        raise
    finally:
        watchdog.cancel()


def _makedirs(sftp: paramiko.SFTPClient, folder: str) -> list[str]:
    """mkdir -p, one stat when the folder is there (the usual case); the folders it made."""
    missing: list[str] = []
    path = folder
    while path not in ("", "/", "."):
        try:
            if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                break
            raise ForwardError(f"{path} is not a folder", kind=Failure.REFUSED)
        except FileNotFoundError:
            missing.append(path)
            path = posixpath.dirname(path)
    made = []
    for path in reversed(missing):
        try:
            sftp.mkdir(path, 0o755)
            made.append(path)
        except OSError:
            if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):  # raced by another writer
                raise
    return made


def _size_of(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        return sftp.stat(path).st_size or 0
    except FileNotFoundError:
        return None


def _sha256_of(sftp: paramiko.SFTPClient, path: str) -> str:
    """The SHA-256 of a remote file, read back (only to tell our own upload from another)."""
    digest = hashlib.sha256()
    with sftp.open(path, "rb") as handle:
        handle.prefetch()
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _part_stem(filename: str) -> str:
    """`.NAME`, the start of an upload's temporary name (`.NAME.XXXXXXXX.part`); for a name
    too long for that to fit NAME_MAX (a vendor's may be 255 bytes: "Bad message" for
    ever), `.HEAD~HASH`, still dot-named and still one stem per name."""
    full = f".{filename}"
    if len(full.encode("utf-8", "surrogateescape")) + PART_EXTRA <= NAME_MAX:
        return full
    tag = "~" + hashlib.sha256(filename.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    room = NAME_MAX - PART_EXTRA - 1 - len(tag)
    head = filename.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{head}{tag}"


def _remove_stale_parts(sftp: paramiko.SFTPClient, folder: str, filename: str) -> None:
    """Temporary files of this name that an interrupted attempt left behind."""
    prefix = f"{_part_stem(filename)}."
    for name in sftp.listdir(folder or "."):
        if name.startswith(prefix) and name.endswith(PART_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(posixpath.join(folder, name))


def _open_landed(local: Path) -> BinaryIO:
    """The landed file to send, never through a symlink put in its place (the service
    user's secrets, the ledger) and only a regular file; gone is a person's matter."""
    try:
        fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        gone = exc.errno in (errno.ENOENT, errno.ELOOP)  # ELOOP: a symlink in its place
        raise ForwardError(
            f"cannot read the local copy {local}: "
            + ("a symlink in its place" if exc.errno == errno.ELOOP else exc.strerror or "error"),
            kind=Failure.REFUSED if gone else Failure.LOCAL,
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ForwardError(
            f"cannot read the local copy {local}: not a regular file", kind=Failure.REFUSED
        )
    return os.fdopen(fd, "rb")


def _put(sftp: paramiko.SFTPClient, source: BinaryIO, temp: str, size: int) -> str:
    """Stream `source` to `temp` with pipelined writes, every one of them answered OK, flush
    them to the server's disk where it can (fsync@openssh.com), and confirm the size the
    server reports; the SHA-256 of what was sent."""
    request_size = _write_length(sftp)
    in_flight = max(4, IN_FLIGHT_BYTES // request_size)
    digest = hashlib.sha256()
    with sftp.open(temp, "wb") as target:
        writes = _Writes(sftp, cast(bytes, target.handle))
        while chunk := source.read(READ_CHUNK):
            digest.update(chunk)
            for start in range(0, len(chunk), request_size):
                writes.send(chunk[start : start + request_size])
                writes.wait(in_flight)
        writes.wait(0)
        _fsync(sftp, target)
    got = _size_of(sftp, temp)
    if got != size:
        raise ForwardError(
            f"the server holds {got} bytes of {size} after the upload", kind=Failure.TRANSIENT
        )
    return digest.hexdigest()


class _Writes:
    """Pipelined writes to one open handle, whose every answer is read and checked.

    paramiko's own pipelining (SFTPFile.set_pipelined) drops the status of a write it did
    not wait for: a write the server refused (its disk full for a moment) left a hole of
    zeros in a file of the right size, which then passed the size check and was renamed
    into Slate's folder. Here each write is a request of ours; paramiko hands its answer
    to `_async_response`, and the first refusal ends the upload."""

    def __init__(self, sftp: paramiko.SFTPClient, handle: bytes) -> None:
        self._sftp = sftp
        self._handle = handle
        self._offset = 0
        self._pending: set[int] = set()
        self._error: BaseException | None = None

    def send(self, data: bytes) -> None:
        num = self._sftp._async_request(  # type: ignore[attr-defined]
            self, CMD_WRITE, self._handle, int64(self._offset), data
        )
        self._pending.add(num)
        self._offset += len(data)

    def wait(self, most: int) -> None:
        """Read answers until at most `most` writes are unanswered; raise the first refusal."""
        while len(self._pending) > most and self._error is None:
            self._sftp._read_response()  # type: ignore[attr-defined]
        if self._error is not None:
            raise self._error

    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        """paramiko's callback for an answer to one of our requests."""
        self._pending.discard(num)
        if self._error is not None:
            return
        if kind != CMD_STATUS:
            self._error = OSError(f"the server answered a write with message type {kind}")
            return
        try:
            self._sftp._convert_status(msg)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - paramiko's mapping of a refusal (OSError, EOFError, a bad text)
            self._error = exc


def _write_length(sftp: paramiko.SFTPClient) -> int:
    """The largest write the server takes (OpenSSH's limits@openssh.com says; fewer, larger
    requests are cheaper in Python), else the 32 KiB every server takes."""
    try:
        kind, reply = sftp._request(CMD_EXTENDED, "limits@openssh.com")  # type: ignore[attr-defined]
    except OSError:
        return MIN_WRITE  # "unsupported"
    if kind != CMD_EXTENDED_REPLY:
        return MIN_WRITE
    reply.get_int64()  # max packet length
    reply.get_int64()  # max read length
    write = int(reply.get_int64())
    return max(MIN_WRITE, min(write, MAX_WRITE)) if write else MIN_WRITE


def _fsync(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
    """OpenSSH's fsync extension, so a renamed file survives the server's power cut. A
    server without it refuses it in words of its own, which is fine: the size is confirmed
    next (a dead link fails there too) and the rename stays atomic."""
    with contextlib.suppress(OSError):
        sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)  # type: ignore[attr-defined]


def _write_small(sftp: paramiko.SFTPClient, path: str, data: bytes) -> None:
    with sftp.open(path, "wb") as handle:
        handle.write(data)
