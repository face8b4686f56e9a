"""The one root exception, its few subclasses, and the failure kinds that decide retries.

cli.py maps exceptions to exit codes; core/deliveries.py maps a `Failure` to a retry plan.
"""

from __future__ import annotations

import errno
import os
import re
import ssl
from collections.abc import Iterator
from enum import StrEnum
from urllib.parse import urlsplit

_PLAIN_HOST = re.compile(r"[a-z0-9.:-]{1,253}")  # what a host in an error message may be


class Failure(StrEnum):
    """Why one attempt failed, which decides what happens next (see `retry_delay`)."""

    TRANSIENT = "transient"  # network, 5xx, a cut stream: soon again, then on the schedule
    EXPIRED = "expired"  # the presigned URL is dead: ask for a fresh one at once
    NOT_FOUND = "not_found"  # not posted (yet): on the schedule
    AUTH = "auth"  # credentials refused: on the schedule; a person must hear of it
    LOCAL = "local"  # our side: disk full, quota, a folder that refuses: on the schedule
    REFUSED = "refused"  # hostile or impossible input: never retried
    FATAL = "fatal"  # the vendor said no for good: never retried
    DEFERRED = "deferred"  # listed, not generated yet: looked at again, never given up
    INTERNAL = "internal"  # a bug met in one delivery: recorded, retried on the schedule


class ScorefetchError(Exception):
    """Root of every error scorefetch raises on purpose."""


class ConfigError(ScorefetchError):
    """The configuration is invalid; the message names the file and the key path."""


class RefusedError(ScorefetchError):
    """Input refused before any request: a hostile file name, a URL outside download_hosts."""

    kind = Failure.REFUSED


class VendorError(ScorefetchError):
    """A vendor call failed. `kind` tells core/deliveries.py how to retry; `retry_after` is
    the wait in seconds a 429 or 503 asked for (its `Retry-After`), when it said."""

    def __init__(
        self,
        message: str,
        *,
        kind: Failure,
        status: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.reason = reason  # a word for alerts, e.g. `expired`


class LocalError(ScorefetchError):
    """Our side of a download failed: the disk is full, a quota, a read-only or refusing
    folder, too many open files. Retried until it works (see core/deliveries.py)."""

    kind = Failure.LOCAL

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class LedgerError(ScorefetchError):
    """The ledger could not be read or written: its disk full, an I/O error, a permission.
    Nothing is recorded, so nothing moves on: what was under way is redone once it works."""


class MailboxError(ScorefetchError):
    """The IMAP connection failed or dropped."""


class MailboxAuthError(MailboxError):
    """The IMAP server refused the credentials."""


class TokenError(ScorefetchError):
    """No OAuth2 access token could be had. `refused`: the provider turned the credentials
    down (retrying soon will not help); otherwise the failure may be passing."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def describe(exc: BaseException) -> str:
    """What we say about a library's exception: its class, the innermost cause's class, a
    symbolic errno and the host it concerned. Never the library's message: urllib3 (and
    requests, under msal) quote the request's path, presigned query (signature, token)
    included."""
    if isinstance(exc, ScorefetchError):
        return str(exc)  # our own words, built from facts like these
    if isinstance(exc, OSError | UnicodeError) and type(exc).__module__ == "builtins":
        return _describe_local(exc)  # the file system's own words, about our own paths
    if isinstance(exc, ssl.SSLError):
        return _describe_tls(exc)
    inner, errno_name = _innermost(exc)
    text = type(exc).__name__
    if inner is not None and inner is not type(exc):
        text += f" ({inner.__name__}{f', {errno_name}' if errno_name else ''})"
    elif errno_name:
        text += f" ({errno_name})"
    host = _host_of(exc)
    return f"{text} from {host}" if host else text


def _describe_tls(exc: ssl.SSLError) -> str:
    """`SSLCertVerificationError: CERTIFICATE_VERIFY_FAILED (self-signed certificate)`:
    OpenSSL's reason codes, which say what to fix (its errno is no errno)."""
    text = f"{type(exc).__name__}: {exc.reason or 'TLS error'}"
    verify = getattr(exc, "verify_message", None)
    return f"{text} ({verify})" if verify else text


def _describe_local(exc: OSError | UnicodeError) -> str:
    """`ENOSPC: No space left on device: '/path'`."""
    if isinstance(exc, UnicodeError):
        return f"a file name the file system cannot encode ({type(exc).__name__})"
    if not exc.errno:  # socket.timeout and friends: no errno, and os.strerror(0) is "Success"
        reason = exc.strerror or ("timed out" if isinstance(exc, TimeoutError) else "error")
        text = f"{type(exc).__name__}: {reason}"
        return f"{text}: {exc.filename!r}" if exc.filename else text
    code = errno.errorcode.get(exc.errno, type(exc).__name__)
    text = f"{code}: {exc.strerror or os.strerror(exc.errno)}"
    return f"{text}: {exc.filename!r}" if exc.filename else text


# A connection that fails for one of these failed on our machine, not on the network or at
# the vendor: no descriptor, no buffer, no memory for a socket. Asking the vendor again soon
# helps no more than it would for a full disk.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and its causes, outermost first (via `reason`, __cause__, __context__, args)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        nested = [getattr(current, "reason", None), current.__cause__, current.__context__]
        nested += [arg for arg in current.args if isinstance(arg, BaseException)]
        current = next((n for n in nested if isinstance(n, BaseException)), None)


def local_errno(exc: BaseException) -> int | None:
    """The errno when a library's failure was our machine running out (LOCAL_ERRNOS)."""
    for cause in _causes(exc):
        code = getattr(cause, "errno", None)
        if isinstance(code, int) and code in LOCAL_ERRNOS:
            return code
    return None


def _innermost(exc: BaseException) -> tuple[type[BaseException] | None, str | None]:
    """The class of the deepest cause and the first errno's symbolic name on the way."""
    deepest: type[BaseException] | None = None
    errno_name: str | None = None
    for cause in _causes(exc):
        deepest = type(cause)
        code = getattr(cause, "errno", None)
        if errno_name is None and isinstance(code, int):
            errno_name = errno.errorcode.get(code, str(code))
    return deepest, errno_name


def _host_of(exc: BaseException) -> str | None:
    """The host of the request an exception concerns, if plain: core/http.py's errors say
    `.host`; requests' (under msal) carry `.request`."""
    host = getattr(exc, "host", None)
    if not isinstance(host, str):
        url = getattr(getattr(exc, "request", None), "url", None)
        try:
            host = urlsplit(url).hostname if isinstance(url, str) else None
        except ValueError:
            return None
    return host if host and _PLAIN_HOST.fullmatch(host) else None
