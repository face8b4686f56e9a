"""OAuth2 access tokens for IMAP XOAUTH2: one source per provider, one cache in front.

A source asks its provider for a token (Microsoft 365 through msal, Google with a
refresh token, or any program). The cache hands the same token to every connect
until it is within a margin of its expiry, and tells the mailbox watcher when a
session using it must end. Nothing here logs; no message carries a token or secret.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scorefetch.config import CommandOAuth, GoogleOAuth, ImapAuth, MicrosoftOAuth
from scorefetch.core.answers import parse_json, read_bounded
from scorefetch.core.errors import TokenError, VendorError, describe
from scorefetch.core.http import HttpError, Session, build_session
from scorefetch.core.logs import untrusted

MARGIN_S = 300.0  # a token is replaced this long before it expires …
MARGIN_SHARE = 0.2  # … or, for a short-lived one, when this share of its life is left
# OAuth2 error codes (RFC 6749 §5.2) that mean the credentials themselves were refused.
REFUSED_ERRORS = frozenset(
    {"invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope", "invalid_request"}
)
STDERR_TAIL = 300


@dataclass(frozen=True)
class Grant:
    """An access token as the provider gave it: the value and its lifetime in seconds."""

    token: str = field(repr=False)
    lifetime: float


class TokenSource(Protocol):
    """Asks one provider for a new access token."""

    def fetch(self) -> Grant:
        """A new token; TokenError when none can be had."""
        ...

    def reset(self) -> None:
        """Forget any token the source keeps itself, so the next fetch asks the provider."""
        ...


def refresh_margin(lifetime: float) -> float:
    """How long before its expiry a token is replaced (and a session using it ends)."""
    return min(MARGIN_S, lifetime * MARGIN_SHARE)


class TokenCache:
    """The current token for one mailbox, replaced ahead of its expiry.

    Times are on `clock` (monotonic by default, like the watcher's own deadlines).
    """

    def __init__(self, source: TokenSource, clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._renew_at = 0.0
        self.fetches = 0

    def get(self) -> tuple[str, bool]:
        """The token to log in with, and whether it was fetched just now (not cached)."""
        if self._token is not None and self._clock() < self._renew_at:
            return self._token, False
        asked_at = self._clock()
        grant = self._source.fetch()
        self.fetches += 1
        lifetime = max(0.0, grant.lifetime)
        self._token = grant.token
        self._expires_at = asked_at + lifetime
        self._renew_at = self._expires_at - refresh_margin(lifetime)
        return grant.token, True

    def invalidate(self) -> None:
        """The server refused the token: the next get() asks the provider again."""
        self._token = None
        self._source.reset()

    def expires_at(self) -> float | None:
        """When the current token expires, on the clock; None before the first get()."""
        return self._expires_at if self._token is not None else None

    def renew_at(self) -> float | None:
        """When a session logged in with the current token should end and reconnect."""
        return self._renew_at if self._token is not None else None


class MicrosoftTokens:
    """Microsoft 365 app-only access: the client-credentials grant through msal."""

    def __init__(self, config: MicrosoftOAuth, session: Session) -> None:
        self._config = config
        self._session = session
        self._app: Any = None

    def _build(self) -> Any:
        import msal  # only installations using Microsoft 365 pay for the import

        cfg = self._config
        credential: Any
        if cfg.certificate is not None:
            credential = {
                "private_key": cfg.certificate.get_secret_value(),
                "thumbprint": cfg.thumbprint,
            }
        else:
            assert cfg.client_secret is not None  # config.py requires one of the two
            credential = cfg.client_secret.get_secret_value()
        # Building the app fetches the tenant's OpenID configuration (network I/O).
        return msal.ConfidentialClientApplication(
            cfg.client_id,
            client_credential=credential,
            authority=f"{cfg.authority}/{cfg.tenant_id}",
            # The authority comes from our own config: no call asking login.microsoftonline.com
            # whether it knows a non-default one (national clouds, the sandbox).
            instance_discovery=False,
            http_client=self._session,
        )

    def fetch(self) -> Grant:
        try:
            if self._app is None:
                self._app = self._build()
            # msal answers from its cache when a refresh fails with one of these (by
            # default requests' exceptions, which our session does not raise)
            result = self._app.acquire_token_for_client(
                scopes=[self._config.scope], http_exceptions=(HttpError,)
            )
        except HttpError as exc:
            raise TokenError(
                f"microsoft token request failed: {_http_error(exc)}", refused=False
            ) from None
        except ValueError as exc:  # msal: the tenant's discovery document was refused
            raise TokenError(
                f"microsoft authority refused: {untrusted(str(exc), 200)}", refused=True
            ) from None
        except Exception as exc:  # msal's own: MsalServiceError for a 5xx, say
            if not type(exc).__module__.startswith("msal"):
                raise
            raise TokenError(
                f"microsoft token request failed: {_http_error(exc)}", refused=False
            ) from None
        return _grant("microsoft", result)

    def reset(self) -> None:
        self._app = None  # msal keeps tokens in the app's own cache


class GoogleTokens:
    """Google Workspace: the refresh-token grant at Google's token endpoint."""

    def __init__(self, config: GoogleOAuth, session: Session) -> None:
        self._config = config
        self._session = session

    def fetch(self) -> Grant:
        cfg = self._config
        form = {
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret.get_secret_value(),
            "refresh_token": cfg.refresh_token.get_secret_value(),
            "grant_type": "refresh_token",
        }
        try:
            with self._session.post(cfg.token_url, data=form, stream=True) as response:
                status, raw = response.status_code, read_bounded(response, "google token")
        except HttpError as exc:
            raise TokenError(
                f"google token request failed: {_http_error(exc)}", refused=False
            ) from None
        except VendorError as exc:  # an answer too large to be a token
            raise TokenError(str(exc), refused=False) from None
        try:
            answer = parse_json(raw)
        except ValueError:
            answer = None
        if status >= 500 or not isinstance(answer, dict):
            raise TokenError(f"google token endpoint answered HTTP {status}", refused=False)
        return _grant("google", answer)

    def reset(self) -> None:
        pass  # nothing kept


class CommandTokens:
    """A program prints the token on stdout (e.g. a helper that keeps its own refresh token)."""

    def __init__(
        self, config: CommandOAuth, run: Callable[..., subprocess.CompletedProcess[bytes]]
    ) -> None:
        self._config = config
        self._run = run

    def fetch(self) -> Grant:
        cfg = self._config
        name = cfg.token_command[0]
        try:
            done = self._run(
                list(cfg.token_command),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=cfg.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TokenError(
                f"token_command {name} did not finish within {cfg.command_timeout:g}s",
                refused=False,
            ) from None
        except OSError as exc:
            raise TokenError(
                f"cannot run token_command {name}: {exc.strerror or exc}", refused=True
            ) from None
        token = done.stdout.decode("utf-8", "replace").strip()
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip()[-STDERR_TAIL:]
            if token:
                tail = tail.replace(token, "********")  # a helper may echo what it printed
            status = done.returncode
            raise TokenError(
                f"token_command {name} exited with status {status}: {tail or '(no stderr)'}",
                refused=False,
            )
        if not token or any(c.isspace() for c in token):
            raise TokenError(
                f"token_command {name} printed {'nothing' if not token else 'more than one word'} "
                "on stdout; it must print the access token alone",
                refused=False,
            )
        return Grant(token, cfg.token_lifetime)

    def reset(self) -> None:
        pass  # the command decides


def token_cache(auth: ImapAuth, clock: Callable[[], float] = time.monotonic) -> TokenCache | None:
    """The token cache `auth` needs, or None for password login."""
    source: TokenSource
    if isinstance(auth, MicrosoftOAuth):
        source = MicrosoftTokens(auth, build_session(connect_timeout=10.0, read_timeout=30.0))
    elif isinstance(auth, GoogleOAuth):
        source = GoogleTokens(auth, build_session(connect_timeout=10.0, read_timeout=30.0))
    elif isinstance(auth, CommandOAuth):
        source = CommandTokens(auth, subprocess.run)
    else:
        return None
    return TokenCache(source, clock)


def _grant(provider: str, answer: dict[str, Any]) -> Grant:
    """A token endpoint's JSON answer (RFC 6749 §5.1/§5.2) → Grant, or TokenError."""
    token = answer.get("access_token")
    if isinstance(token, str) and token:
        try:
            lifetime = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return Grant(token, lifetime)
    error = str(answer.get("error") or "no access_token in the answer")
    description = str(answer.get("error_description") or "").splitlines()
    detail = f"{error}: {description[0]}" if description else error
    raise TokenError(
        f"{provider} refused a token: {untrusted(detail)}", refused=error in REFUSED_ERRORS
    )


def _http_error(exc: Exception) -> str:
    # The one error formatter: class, cause, errno, host; never the library's text.
    return describe(exc)
