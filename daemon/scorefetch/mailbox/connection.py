"""One IMAP connection: opening it (TLS or STARTTLS, password or XOAUTH2 login, the
OAuth2 token's deadlines) and the few commands the watcher uses.

`Connection` is what the catch-up, the moves and IDLE need of a connection; the
unit tests hand them a fake one, the daemon an `ImapConnection`.
"""

from __future__ import annotations

import imaplib
import math
import ssl
import time
from collections.abc import Sequence
from typing import Any, Protocol

from imapclient import DELETED, IMAPClient
from imapclient.exceptions import LoginError
from imapclient.imapclient import SocketTimeout

from scorefetch.config import ImapConfig
from scorefetch.core import logs
from scorefetch.core.errors import MailboxAuthError, MailboxError, TokenError
from scorefetch.core.errors import describe as describe_error
from scorefetch.core.logs import untrusted
from scorefetch.mailbox import imapwire
from scorefetch.mailbox.tokens import token_cache

Answer = dict[int, dict[bytes, Any]]  # a FETCH answer: uid -> item -> value
# imaplib's words when a response line is over its limit (`_MAXLINE`, 1,000,000 bytes): the
# rest of the line is still unread, so the connection cannot go on.
LINE_LIMIT = "got more than"


class FetchFailed(Exception):
    """A FETCH the server refused, or answered in a way that cannot be read: perhaps the
    doing of one of the messages asked for. `in_sync`: the connection can still be used."""

    def __init__(self, detail: str, *, in_sync: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.in_sync = in_sync


class Connection(Protocol):
    """A logged-in connection. `heard` is time.monotonic() when the server last spoke."""

    heard: float

    def select(self, folder: str, readonly: bool) -> int: ...  # -> UIDVALIDITY
    def has_capability(self, name: str) -> bool: ...
    def folder_exists(self, folder: str) -> bool: ...
    def create_folder(self, folder: str) -> None: ...
    def search(self, criteria: list[Any]) -> list[int]: ...
    def fetch(self, uids: Sequence[int], items: Sequence[str]) -> Answer: ...
    def move(self, uid: int, folder: str) -> None: ...
    def copy(self, uid: int, folder: str) -> None: ...
    def mark_deleted(self, uid: int) -> None: ...
    def uid_expunge(self, uid: int) -> None: ...
    def noop(self) -> None: ...
    def take_new_mail_signals(self) -> bool: ...
    def idle(self) -> None: ...
    def idle_check(self, wait: float, wakeup: int | None = None) -> list[Any]: ...
    def idle_done(self, timeout: float) -> None: ...
    def logout(self) -> None: ...
    def drop(self) -> None: ...


def login_notes(config: ImapConfig) -> list[str]:
    """What `check-config` should say about how the daemon will log in."""
    if config.password is None or _ascii(config.password.get_secret_value() + config.username):
        return []
    return [
        "imap: the username or password has non-ASCII characters, which IMAP LOGIN cannot "
        "carry; the daemon logs in with AUTHENTICATE PLAIN (UTF-8) instead, which the server "
        "must offer (AUTH=PLAIN: Dovecot, Exchange and Gmail do). Otherwise it logs "
        "imap.auth_failed and retries slowly."
    ]


def _ascii(text: str) -> bool:
    return text.isascii()


class ImapConnection:
    """An `IMAPClient` behind the `Connection` commands; every answer updates `heard`.
    At `logging.level: debug` each command is said with its time (`imap.command`)."""

    def __init__(self, client: IMAPClient, read_timeout: float, log: Any = None) -> None:
        self.client = client
        self.read_timeout = read_timeout
        self.heard = time.monotonic()
        self._log = log
        self._began: float | None = None  # when the command being timed was sent

    def _start(self) -> None:
        """A command begins: timed from here when tracing."""
        self._began = time.monotonic() if self._log is not None and logs.tracing() else None

    def _heard(self, command: str = "", messages: int | None = None) -> None:
        self.heard = time.monotonic()
        if command and self._began is not None:
            self._log.debug(
                "imap.command",
                command=command,
                messages=messages,
                elapsed_ms=round((self.heard - self._began) * 1000, 1),
            )
            self._began = None

    def select(self, folder: str, readonly: bool) -> int:
        self._start()
        selected = self.client.select_folder(folder, readonly=readonly)
        self._heard("SELECT")
        return int(selected[b"UIDVALIDITY"])

    def has_capability(self, name: str) -> bool:
        return bool(self.client.has_capability(name))

    def folder_exists(self, folder: str) -> bool:
        return bool(self.client.folder_exists(folder))

    def create_folder(self, folder: str) -> None:
        self.client.create_folder(folder)

    def search(self, criteria: list[Any]) -> list[int]:
        self._start()
        found = [int(uid) for uid in self.client.search(criteria)]
        self._heard("UID SEARCH", len(found))
        return found

    def fetch(self, uids: Sequence[int], items: Sequence[str]) -> Answer:
        """The answer, or FetchFailed when it cannot be had; a lost connection (abort,
        OSError) is raised as it is: that is not the messages' doing."""
        self._start()
        try:
            answer: Answer = self.client.fetch(list(uids), list(items))
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:  # NO, BAD, a parse error, a line over the limit
            raise FetchFailed(describe(exc), in_sync=LINE_LIMIT not in str(exc)) from None
        except (ValueError, LookupError, TypeError, RecursionError) as exc:
            # imapclient's parser on an answer it read whole: the connection is in step.
            raise FetchFailed(f"unreadable answer ({type(exc).__name__})", in_sync=True) from None
        self._heard("UID FETCH " + " ".join(item.split("[")[0] for item in items), len(uids))
        return answer

    def move(self, uid: int, folder: str) -> None:
        self.client.move([uid], folder)

    def copy(self, uid: int, folder: str) -> None:
        self.client.copy([uid], folder)

    def mark_deleted(self, uid: int) -> None:
        self.client.add_flags([uid], [DELETED])

    def uid_expunge(self, uid: int) -> None:
        self.client.uid_expunge([uid])

    def noop(self) -> None:
        self.client.noop()
        self._heard()

    def take_new_mail_signals(self) -> bool:
        return imapwire.take_new_mail_signals(self.client)

    def idle(self) -> None:
        self.client.idle()
        self._heard()

    def idle_check(self, wait: float, wakeup: int | None = None) -> list[Any]:
        """What the server said within `wait` seconds, or [] at once when `wakeup` (a file
        descriptor) becomes readable."""
        responses = imapwire.idle_check(self.client, wait, wakeup)
        if responses:
            self._heard()
        return responses

    def idle_done(self, timeout: float) -> None:
        """DONE, its answer awaited at most `timeout` seconds (the liveness probe)."""
        sock = self.client.socket()
        sock.settimeout(timeout)
        self._start()
        self.client.idle_done()
        self._heard("DONE")
        sock.settimeout(self.read_timeout)

    def logout(self) -> None:
        try:
            self.client.logout()
        except (imaplib.IMAP4.error, OSError):
            self.drop()

    def drop(self) -> None:
        imapwire.drop(self.client)


class Connector:
    """Opens connections for one `imap:` config, and keeps its OAuth2 token between them."""

    def __init__(self, config: ImapConfig, log: Any) -> None:
        self.config = config
        self._log = log
        self.tokens = token_cache(config.auth)  # None for password login

    @property
    def provider(self) -> str:
        return str(getattr(self.config.auth, "provider", self.config.auth.method))

    def renewal_left(self) -> float:
        """Seconds until the session's token is due for renewal; inf for password login.
        A session ends (and logs in afresh) by then: servers such as Microsoft 365 close
        a session whose token has expired."""
        renew_at = self.tokens.renew_at() if self.tokens is not None else None
        return math.inf if renew_at is None else renew_at - time.monotonic()

    def open(self) -> ImapConnection:
        cfg = self.config
        context = ssl.create_default_context()
        timeout = SocketTimeout(connect=cfg.connect_timeout, read=cfg.read_timeout)
        client = IMAPClient(
            cfg.host, port=cfg.port, ssl=cfg.security == "tls", ssl_context=context, timeout=timeout
        )
        try:
            imapwire.tune(client.socket())
            if cfg.security == "starttls":
                client.starttls(context)
            if self.tokens is None:
                self._password_login(client)
            else:
                self._oauth2_login(client)
        except LoginError as exc:
            imapwire.drop(client)
            raise MailboxAuthError(f"login refused for {cfg.username}: {describe(exc)}") from None
        except BaseException:
            imapwire.drop(client)
            raise
        return ImapConnection(client, cfg.read_timeout, self._log)

    def _password_login(self, client: IMAPClient) -> None:
        """LOGIN carries ASCII only (RFC 3501 quoted strings); a non-ASCII username or
        password goes as SASL PLAIN, which is UTF-8 (RFC 4616), where the server offers it."""
        cfg = self.config
        assert cfg.password is not None  # config.py requires it for password auth
        password = cfg.password.get_secret_value()
        if _ascii(password + cfg.username):
            client.login(cfg.username, password)
        elif client.has_capability("AUTH=PLAIN"):
            client.plain_login(cfg.username, password)
        else:
            raise MailboxAuthError(
                f"the username or password for {cfg.username} has non-ASCII characters, which "
                "IMAP LOGIN cannot carry, and the server offers no AUTHENTICATE PLAIN"
            )

    def _oauth2_login(self, client: IMAPClient) -> None:
        """XOAUTH2 with the cached token. A cached token the server refuses (expired early,
        revoked) is dropped and a fresh one tried at once; only a fresh one refused is an
        authentication failure."""
        assert self.tokens is not None
        for attempt in (1, 2):
            try:
                token, fetched = self.tokens.get()
            except TokenError as exc:
                raise (MailboxAuthError if exc.refused else MailboxError)(str(exc)) from None
            if fetched:
                expires_at = self.tokens.expires_at() or 0.0
                lifetime = round(expires_at - time.monotonic())
                self._log.info("imap.token_obtained", provider=self.provider, expires_in_s=lifetime)
            try:
                client.oauth2_login(self.config.username, token)
                return
            except LoginError as exc:
                self.tokens.invalidate()
                if fetched or attempt == 2:
                    raise
                self._log.warning("imap.token_refused", error=describe(exc), retry="new token")


def describe(exc: BaseException) -> str:
    """An IMAP server's own answer (its words, scrubbed and short: operators need
    `AUTHENTICATIONFAILED`), else the one error formatter of core/errors.py."""
    if isinstance(exc, imaplib.IMAP4.error):
        return untrusted(f"{type(exc).__name__}: {exc}")
    return describe_error(exc)
