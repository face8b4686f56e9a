"""Watching the IMAP folder: IDLE, then catch up by UID, forever.

After every wake-up, timeout and reconnect the watcher searches for UIDs above
the last one handled (persisted in the ledger with the folder's UIDVALIDITY),
so mail that arrives while the daemon or the connection is down is handled
when it is back. Messages are only read (`BODY.PEEK[]`, folder EXAMINEd), unless
`imap.processed_folder` is set: then each notification acted on is moved there
once the ledger holds its files.

A peer that goes silent without closing (a black hole: no bytes, no RST) is noticed
within the read timeout: after half of it without a byte from the server, IDLE is
ended and DONE's answer, awaited only until the read timeout is up, is the probe.
"""

from __future__ import annotations

import imaplib
import math
import random
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from imapclient import DELETED, IMAPClient
from imapclient.exceptions import LoginError
from imapclient.imapclient import SocketTimeout

from scorefetch.config import ImapConfig
from scorefetch.core import logs
from scorefetch.core.errors import MailboxAuthError, MailboxError, TokenError
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox import imapwire
from scorefetch.mailbox.tokens import token_cache

TICK_S = 1.0  # how often the loop looks at the stop flag and pings the watchdog
PROBE_MIN_S = 0.5  # the shortest wait for DONE's answer, however late the probe began
FETCH_BATCH = 50
MAX_FETCH_BYTES = 5 * 1024 * 1024
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 300.0
EXPIRED_MARK = "AccessTokenExpired"  # in Microsoft's BYE for a session past its token
AUTH_BACKOFF_S = 300.0  # a refused password is retried slowly: never lock the account

# (uid, raw message or None if too big, reason) -> whether it was a notification acted on
Handler = Callable[[int, bytes | None, str], bool]


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [min, min(max, min·2^failures)]."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures, 16))
    return rng.uniform(BACKOFF_MIN_S, max(BACKOFF_MIN_S, ceiling))


def new_uids(found: list[int], last_uid: int) -> list[int]:
    """UIDs above `last_uid`, ascending. `UID SEARCH N:*` always returns the highest UID,
    even when it is below N, so the filter is ours."""
    return sorted(uid for uid in found if uid > last_uid)


class MailboxWatcher:
    """Runs in the main thread until `stop` is set; never returns on a server error."""

    def __init__(
        self,
        config: ImapConfig,
        ledger: Ledger,
        handle: Handler,
        stop: threading.Event,
        on_ready: Callable[[], None],
        tick: Callable[[], None],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self._handle = handle
        self._stop = stop
        self._on_ready = on_ready
        self._tick = tick
        self._ready = False
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._log = logs.get(host=config.host, folder=config.folder)
        self._tokens = token_cache(config.auth)  # None for password login
        self._heard = 0.0  # time.monotonic() when the server last answered or spoke
        self._healthy = False  # whether this session caught up and the server then idled
        self.reconnects = 0

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            delay = 0.0
            self._healthy = False
            try:
                self._session()
                failures = 0
                self.ledger.set_watcher("connected", "no")
                continue  # a planned renewal (or stop): connect again at once
            except MailboxAuthError as exc:
                self._log.error("imap.auth_failed", error=str(exc), retry_in_s=AUTH_BACKOFF_S)
                delay = AUTH_BACKOFF_S
            except (MailboxError, imaplib.IMAP4.error, OSError) as exc:
                if self._tokens is not None and EXPIRED_MARK in str(exc):
                    # Microsoft's "BYE Session invalidated - AccessTokenExpired": a new token,
                    # and after a healthy session a new one at once; not an outage.
                    self._tokens.invalidate()
                    if self._healthy:
                        self._log.info(
                            "imap.token_renewal", provider=self._provider, reason="expired"
                        )
                        self.ledger.set_watcher("connected", "no")
                        continue
                self._log.warning("imap.disconnected", error=_describe(exc))
                if self._healthy:
                    failures = 0  # it worked again since the last failure: a new outage
                delay = backoff_delay(failures, self._rng)
                failures += 1
            self.ledger.set_watcher("connected", "no")
            if self._stop.is_set():
                break
            self.reconnects += 1
            self.ledger.set_watcher("reconnects", str(self.reconnects))
            self._log.info("imap.reconnecting", delay_s=round(delay, 2), attempt=failures)
            self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._tick()
            self._stop.wait(min(TICK_S, max(0.0, deadline - time.monotonic())))

    def _connect(self) -> IMAPClient:
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
            if self._tokens is None:
                assert cfg.password is not None  # config.py requires it for password auth
                client.login(cfg.username, cfg.password.get_secret_value())
            else:
                self._oauth2_login(client)
        except LoginError as exc:
            imapwire.drop(client)
            raise MailboxAuthError(f"login refused for {cfg.username}: {_describe(exc)}") from None
        except BaseException:
            imapwire.drop(client)
            raise
        return client

    def _oauth2_login(self, client: IMAPClient) -> None:
        """XOAUTH2 with the cached token. A cached token the server refuses (expired early,
        revoked) is dropped and a fresh one tried at once; only a fresh one refused is an
        authentication failure."""
        assert self._tokens is not None
        for attempt in (1, 2):
            try:
                token, fetched = self._tokens.get()
            except TokenError as exc:
                raise (MailboxAuthError if exc.refused else MailboxError)(str(exc)) from None
            if fetched:
                expires_at = self._tokens.expires_at() or 0.0
                lifetime = round(expires_at - time.monotonic())
                self._log.info(
                    "imap.token_obtained", provider=self._provider, expires_in_s=lifetime
                )
            try:
                client.oauth2_login(self.config.username, token)
                return
            except LoginError as exc:
                self._tokens.invalidate()
                if fetched or attempt == 2:
                    raise
                self._log.warning("imap.token_refused", error=_describe(exc), retry="new token")

    @property
    def _provider(self) -> str:
        return str(getattr(self.config.auth, "provider", self.config.auth.method))

    def _renewal_left(self) -> float:
        """Seconds until the session's token is due for renewal; inf for password login.
        A session ends (and logs in afresh) by then: servers such as Microsoft 365 close
        a session whose token has expired."""
        renew_at = self._tokens.renew_at() if self._tokens is not None else None
        return math.inf if renew_at is None else renew_at - time.monotonic()

    def _session(self) -> None:
        """One connection, until an error, stop, or `session_lifetime` (then it returns)."""
        client = self._connect()
        self._heard = time.monotonic()
        try:
            self._watch(client)
        except TimeoutError:
            imapwire.drop(client)
            silent = time.monotonic() - self._heard
            raise MailboxError(
                f"no answer from the server for {silent:.1f}s "
                f"(read_timeout {self.config.read_timeout:g}s)"
            ) from None
        except BaseException:
            # No LOGOUT on a broken connection: its answer would be awaited for a read timeout.
            imapwire.drop(client)
            raise
        self._close(client)

    def _watch(self, client: IMAPClient) -> None:
        renew_at = time.monotonic() + self.config.session_lifetime
        moving = self.config.processed_folder is not None
        if moving:
            self._ensure_processed_folder(client)
        selected = client.select_folder(self.config.folder, readonly=not moving)
        validity = int(selected[b"UIDVALIDITY"])
        self._log.info("imap.connected", security=self.config.security)
        self.ledger.set_watcher("connected", "yes")
        if not self._ready:
            self._ready = True
            self._on_ready()
        last_uid = self._starting_uid(client, validity)
        idle = client.has_capability("IDLE")
        while not self._stop.is_set():
            imapwire.take_new_mail_signals(client)
            last_uid = self._catch_up(client, validity, last_uid)
            self._heard = time.monotonic()
            self.ledger.set_watcher("last_round_trip", datetime.now(UTC).isoformat())
            if self._renewal_left() <= 0:
                self._log.info("imap.token_renewal", provider=self._provider, reason="due")
                return
            if time.monotonic() >= renew_at:
                self._log.info("imap.session_renewed", age_s=self.config.session_lifetime)
                return
            wake_by = min(renew_at, time.monotonic() + self._renewal_left())
            if idle:
                self._idle(client, wake_by)
            else:
                self._sleep(min(self.config.poll_interval, wake_by - time.monotonic()))
                client.noop()
                self._healthy = True

    def _close(self, client: IMAPClient) -> None:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            imapwire.drop(client)

    def _starting_uid(self, client: IMAPClient, validity: int) -> int:
        """The last handled UID; on a first start (or a new UIDVALIDITY) handle the
        messages of the last `lookback_days`, then go on from the top."""
        position = self.ledger.mailbox_position(self.config.folder)
        if position is not None and position[0] == validity:
            return position[1]
        if position is not None:
            self._log.warning(
                "imap.uidvalidity_changed",
                old=position[0],
                new=validity,
                lookback_days=self.config.lookback_days,
            )
        # The top first: anything arriving during the scan is above it and caught up after.
        top = max(client.search(["ALL"]), default=0)
        since = date.today() - timedelta(days=self.config.lookback_days)
        recent = sorted(u for u in client.search(["SINCE", since]) if u <= top)
        self._log.info("imap.first_scan", messages=len(recent), since=since.isoformat())
        self._process(client, validity, recent)
        if self._stop.is_set():
            return top
        self.ledger.save_mailbox_position(self.config.folder, validity, top)
        return top

    def _catch_up(self, client: IMAPClient, validity: int, last_uid: int) -> int:
        uids = new_uids(client.search(["UID", f"{last_uid + 1}:*"]), last_uid)
        return max(self._process(client, validity, uids), last_uid)

    def _process(self, client: IMAPClient, validity: int, uids: list[int]) -> int:
        """Fetch and hand over each message in UID order; the position advances per message."""
        last = 0
        for start in range(0, len(uids), FETCH_BATCH):
            batch = uids[start : start + FETCH_BATCH]
            sizes = client.fetch(batch, ["RFC822.SIZE"])
            small = [
                u for u in batch if int(sizes.get(u, {}).get(b"RFC822.SIZE", 0)) <= MAX_FETCH_BYTES
            ]
            bodies = client.fetch(small, ["BODY.PEEK[]"]) if small else {}
            for uid in batch:
                if self._stop.is_set():
                    return last
                raw = bodies.get(uid, {}).get(b"BODY[]")
                reason = "" if raw is not None else ("too_large" if uid not in small else "gone")
                acted = self._handle(uid, raw, reason)
                self.ledger.save_mailbox_position(self.config.folder, validity, uid)
                last = uid
                if acted and self.config.processed_folder is not None:
                    self._move(client, uid, self.config.processed_folder)
        return last

    def _ensure_processed_folder(self, client: IMAPClient) -> None:
        folder = self.config.processed_folder
        assert folder is not None
        if not client.folder_exists(folder):
            client.create_folder(folder)
            self._log.info("imap.folder_created", processed_folder=folder)

    def _move(self, client: IMAPClient, uid: int, folder: str) -> None:
        """MOVE, or COPY + \\Deleted + UID EXPUNGE. The ledger already holds the files, so
        a failure here only leaves the message where it was."""
        try:
            if client.has_capability("MOVE"):
                client.move([uid], folder)
            else:
                client.copy([uid], folder)
                client.add_flags([uid], [DELETED])
                # UID EXPUNGE removes only this message; plain EXPUNGE (no UIDPLUS) would
                # also remove whatever else is marked \\Deleted in the folder.
                client.expunge([uid] if client.has_capability("UIDPLUS") else None)
            self._log.debug("imap.moved", uid=uid, processed_folder=folder)
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            self._log.warning(
                "imap.move_failed", uid=uid, processed_folder=folder, error=_describe(exc)
            )

    def _idle(self, client: IMAPClient, renew_at: float) -> None:
        """IDLE until the server says something, the idle timeout passes, the session is due
        for renewal, the server has been silent for half the read timeout, or stop is set.
        On a dead connection the exception skips DONE; the session then drops the socket."""
        client.idle()
        self._heard = time.monotonic()
        # A healthy cycle: selected, caught up, and the server took IDLE. A server that drops
        # every session before this point meets a growing backoff, not a 1-second loop.
        self._healthy = True
        until = min(self._heard + self.config.idle_timeout, renew_at)
        # Mail that arrived during the catch-up was announced in the answers to SEARCH or
        # FETCH (or before IDLE's "+"); the server will not say it again while idling.
        if imapwire.take_new_mail_signals(client):
            until = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min(TICK_S, until - now, self._heard + self.config.read_timeout / 2 - now)
            if wait <= 0:
                break
            self._tick()
            responses = imapwire.idle_check(client, wait)
            if responses:
                self._heard = time.monotonic()
            for response in responses:
                if imapwire.is_bye(response):
                    raise MailboxError(f"server said BYE: {imapwire.words(response[1:])}")
            if any(imapwire.wakes(r) for r in responses):
                break
        self._idle_done(client)

    def _idle_done(self, client: IMAPClient) -> None:
        """DONE, whose answer is also the liveness probe: it is awaited only until the
        read timeout has passed since the server last said anything."""
        sock = client.socket()
        left = self._heard + self.config.read_timeout - time.monotonic()
        sock.settimeout(max(PROBE_MIN_S, left))
        client.idle_done()
        self._heard = time.monotonic()
        sock.settimeout(self.config.read_timeout)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
