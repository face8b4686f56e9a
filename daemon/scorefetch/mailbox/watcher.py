"""Watching the IMAP folder: catch up by UID, IDLE, again, forever; reconnect on failure.

After every wake-up, timeout and reconnect the watcher catches up on the UIDs above
the last one handled (catchup.py), so mail that arrives while the daemon or the
connection is down is handled when it is back. Messages are only read (`BODY.PEEK`,
folder EXAMINEd), unless `imap.processed_folder` is set: then each notification acted
on is moved there once the ledger holds its files. Connections come from
connection.py (or, in the unit tests, from a fake); IDLE and its probe are idle.py.
"""

from __future__ import annotations

import imaplib
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from scorefetch.config import ImapConfig
from scorefetch.core import logs
from scorefetch.core.errors import MailboxAuthError, MailboxError
from scorefetch.core.events import CredentialsAccepted, CredentialsRefused, Events
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox.catchup import CatchUp, Handler, Refusal, Screen, new_uids
from scorefetch.mailbox.connection import Connection, Connector, describe
from scorefetch.mailbox.idle import TICK_S, StopPipe, wait_in_idle

BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 300.0
EXPIRED_MARK = "AccessTokenExpired"  # in Microsoft's BYE for a session past its token
AUTH_BACKOFF_S = 300.0  # a refused password is retried slowly: never lock the account

__all__ = ["Handler", "MailboxWatcher", "Refusal", "Screen", "backoff_delay", "new_uids"]


def backoff_delay(failures: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [min, min(max, min·2^failures)]."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures, 16))
    return rng.uniform(BACKOFF_MIN_S, max(BACKOFF_MIN_S, ceiling))


class MailboxWatcher:
    """Runs on a supervised thread (core.loops.Supervised, started by the College Board
    source) until `stop` is set; never returns on a server error.

    `screen` (header lines -> may it be a notification?) decides whose HTML is fetched;
    without one every message's HTML parts are. `connect` opens a `Connection` (tests).
    """

    def __init__(
        self,
        config: ImapConfig,
        ledger: Ledger,
        handle: Handler,
        stop: threading.Event,
        on_ready: Callable[[], None],
        tick: Callable[[], None],
        *,
        screen: Screen | None = None,
        connect: Callable[[], Connection] | None = None,
        rng: random.Random | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self._handle = handle
        self._screen = screen
        self._stop = stop
        self._on_ready = on_ready
        self._tick = tick
        self._events = events or Events()
        self._ready = False
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._log = logs.get(host=config.host, folder=config.folder)
        self._connector = Connector(config, self._log)
        self._connect = connect or self._connector.open
        self._healthy = False  # whether this session caught up and the server then idled
        self.reconnects = 0
        self._suspects: dict[int, int] = {}  # read one by one after a lost connection
        self._stop_pipe: StopPipe | None = None  # made by run(): IDLE then waits in one poll

    def run(self) -> None:
        if self._stop_pipe is None and self._connect == self._connector.open:
            self._stop_pipe = StopPipe(self._stop)
        failures = 0
        while not self._stop.is_set():
            self._healthy = False
            try:
                self._session()
                failures = 0
                self.ledger.set_watcher("connected", "no")
                continue  # a planned renewal (or stop): connect again at once
            except MailboxAuthError as exc:
                self._log.error("imap.auth_failed", error=str(exc), retry_in_s=AUTH_BACKOFF_S)
                self._events.publish(CredentialsRefused("imap", str(exc)))
                delay = AUTH_BACKOFF_S
            except (MailboxError, imaplib.IMAP4.error, OSError) as exc:
                if self._token_expired(exc):
                    continue
                self._log.warning("imap.disconnected", error=describe(exc))
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

    def _token_expired(self, exc: BaseException) -> bool:
        """Microsoft's "BYE Session invalidated - AccessTokenExpired": a new token, and
        after a healthy session a new one at once (True); not an outage."""
        tokens = self._connector.tokens
        if tokens is None or EXPIRED_MARK not in str(exc):
            return False
        tokens.invalidate()
        if not self._healthy:
            return False
        self._log.info("imap.token_renewal", provider=self._connector.provider, reason="expired")
        self.ledger.set_watcher("connected", "no")
        return True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._tick()
            self._stop.wait(min(TICK_S, max(0.0, deadline - time.monotonic())))

    def _session(self) -> None:
        """One connection, until an error, stop, or `session_lifetime` (then it returns)."""
        conn = self._connect()
        try:
            self._watch(conn)
        except TimeoutError:
            conn.drop()
            silent = time.monotonic() - conn.heard
            raise MailboxError(
                f"no answer from the server for {silent:.1f}s "
                f"(read_timeout {self.config.read_timeout:g}s)"
            ) from None
        except BaseException:
            # No LOGOUT on a broken connection: its answer would be awaited for a read timeout.
            conn.drop()
            raise
        conn.logout()

    def _watch(self, conn: Connection) -> None:
        cfg = self.config
        renew_at = time.monotonic() + cfg.session_lifetime
        if cfg.processed_folder is not None and not conn.folder_exists(cfg.processed_folder):
            conn.create_folder(cfg.processed_folder)
            self._log.info("imap.folder_created", processed_folder=cfg.processed_folder)
        validity = conn.select(cfg.folder, readonly=cfg.processed_folder is None)
        self._log.info("imap.connected", security=cfg.security)
        self.ledger.set_watcher("connected", "yes")
        self._events.publish(CredentialsAccepted("imap"))
        if not self._ready:
            self._ready = True
            self._on_ready()
        catch_up = CatchUp(
            conn,
            cfg,
            self.ledger,
            self._handle,
            screen=self._screen,
            stop=self._stop,
            tick=self._tick,
            log=self._log,
            suspects=self._suspects,
        )
        last_uid = catch_up.starting_uid(validity)
        idle = conn.has_capability("IDLE")
        while not self._stop.is_set():
            conn.take_new_mail_signals()
            last_uid = catch_up.catch_up(validity, last_uid)
            self.ledger.set_watcher("last_round_trip", datetime.now(UTC).isoformat())
            if self._renewal_due(renew_at):
                return
            wake_by = min(renew_at, time.monotonic() + self._connector.renewal_left())
            if idle:
                conn.idle()
                # A healthy cycle: selected, caught up, and the server took IDLE. A server
                # that drops every session before this meets a growing backoff.
                self._healthy = True
                until = min(conn.heard + cfg.idle_timeout, wake_by)
                wait_in_idle(
                    conn,
                    until=until,
                    read_timeout=cfg.read_timeout,
                    stop=self._stop,
                    tick=self._tick,
                    stop_pipe=self._stop_pipe,
                )
            else:
                self._sleep(min(cfg.poll_interval, wake_by - time.monotonic()))
                conn.noop()
                self._healthy = True

    def _renewal_due(self, renew_at: float) -> bool:
        if self._connector.renewal_left() <= 0:
            self._log.info("imap.token_renewal", provider=self._connector.provider, reason="due")
            return True
        if time.monotonic() >= renew_at:
            self._log.info("imap.session_renewed", age_s=self.config.session_lifetime)
            return True
        return False
