"""The one root exception and its few subclasses; cli.py maps them to exit codes."""

from __future__ import annotations


class ScorefetchError(Exception):
    """Root of every error scorefetch raises on purpose."""


class ConfigError(ScorefetchError):
    """The configuration is invalid; the message names the file and the key path."""


class RefusedError(ScorefetchError):
    """Input refused before any request: a hostile file name, a URL outside download_hosts."""


class VendorError(ScorefetchError):
    """A vendor call failed. `kind` tells deliveries.py how to retry."""

    def __init__(self, message: str, *, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # one of: not_found, expired, auth, transient, fatal
        self.status = status


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
