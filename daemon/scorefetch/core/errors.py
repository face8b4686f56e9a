"""The one root exception, its few subclasses, and the failure kinds that decide retries.

cli.py maps exceptions to exit codes; core/deliveries.py maps a `Failure` to a retry plan.
"""

from __future__ import annotations

from enum import StrEnum


class Failure(StrEnum):
    """Why one attempt failed, which decides what happens next (see `retry_delay`)."""

    TRANSIENT = "transient"  # network, 5xx, a cut stream: soon again, then on the schedule
    EXPIRED = "expired"  # the presigned URL is dead: ask for a fresh one at once
    NOT_FOUND = "not_found"  # not posted (yet): on the schedule
    AUTH = "auth"  # credentials refused: on the schedule; a person must hear of it
    LOCAL = "local"  # our side: disk full, quota, a folder that refuses: on the schedule
    REFUSED = "refused"  # hostile or impossible input: never retried
    FATAL = "fatal"  # the vendor said no for good: never retried
    INTERNAL = "internal"  # a bug met in one delivery: recorded, retried on the schedule


class ScorefetchError(Exception):
    """Root of every error scorefetch raises on purpose."""


class ConfigError(ScorefetchError):
    """The configuration is invalid; the message names the file and the key path."""


class RefusedError(ScorefetchError):
    """Input refused before any request: a hostile file name, a URL outside download_hosts."""

    kind = Failure.REFUSED


class VendorError(ScorefetchError):
    """A vendor call failed. `kind` tells core/deliveries.py how to retry."""

    def __init__(self, message: str, *, kind: Failure, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class LocalError(ScorefetchError):
    """Our side of a download failed: the disk is full, a quota, a read-only or refusing
    folder, too many open files. Retried until it works (see core/deliveries.py)."""

    kind = Failure.LOCAL

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


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
