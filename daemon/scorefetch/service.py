"""The daemon: wires the ledger, the vendors and the mailbox watcher; speaks sd_notify;
stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from types import FrameType

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.notifications import (
    Notification,
    may_be_notification,
    read_notification,
)
from scorefetch.collegeboard.reconciliation import Reconciler
from scorefetch.config import Config
from scorefetch.core import logs
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import remove_partials
from scorefetch.core.errors import VendorError
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.client import Encoura
from scorefetch.encoura.poller import KNOWN_PRODUCT_KEYS, EncouraDeliveries, EncouraPoller
from scorefetch.mailbox.watcher import MailboxWatcher

SHUTDOWN_GRACE_S = 30.0  # in-flight downloads get this long after SIGTERM


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; does nothing when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if watchdog else None
        self._last_ping = 0.0

    def send(self, state: str) -> None:
        if not self._address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(state.encode(), self._address)
            except OSError as exc:
                logs.get().warning("systemd.notify_failed", error=str(exc))

    def tick(self) -> None:
        """Called from the main loop while it is healthy: WATCHDOG=1 at half the interval."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.notifier = Notifier()
        self.ledger = Ledger(config.ledger_path)
        self.deliveries: CollegeBoardDeliveries | None = None
        cb = config.collegeboard
        if cb is not None and cb.enabled:
            client = CollegeBoard(cb, build_session())
            self.deliveries = CollegeBoardDeliveries(client, self.ledger, config.download_dir)
        self.reconciler: Reconciler | None = None
        if self.deliveries is not None and self.deliveries.config.poll_interval > 0:
            lookback = config.imap.lookback_days if config.imap else 14
            self.reconciler = Reconciler(self.deliveries, self.stop, lookback)
        self.exports: EncouraDeliveries | None = None
        if config.encoura is not None and config.encoura.enabled:
            encoura = Encoura(config.encoura, build_session())
            self.exports = EncouraDeliveries(encoura, self.ledger, config.download_dir)
        self.sources = [d.vendor for d in self._all()]
        self._signal: str | None = None
        self._log = logs.get()

    def handle_message(self, uid: int, raw: bytes | None, reason: str) -> bool:
        """One email: announce its files (True once the ledger holds them), or say in one
        line why not (False). Never raises."""
        log = self._log.bind(uid=uid)
        if raw is None or self.deliveries is None:
            log.warning("notification.rejected", message_id=None, reason=reason or "disabled")
            return False
        try:
            cb = self.deliveries.config
            trust = cb.require_authentication_results
            found = read_notification(raw, cb.senders, trust.authserv_id if trust else None)
            if not isinstance(found, Notification):
                log.info(
                    "notification.rejected",
                    message_id=found.message_id,
                    reason=found.reason,
                    detail=found.detail,
                )
                return False
            log.info(
                "notification.received",
                vendor="collegeboard",
                message_id=found.message_id,
                filenames=list(found.filenames),
            )
            self.deliveries.announce(found.filenames, source="notification")
            return True
        except Exception:
            log.exception("notification.rejected", message_id=None, reason="internal_error")
            return False

    def may_be_notification(self, headers: bytes) -> bool:
        """Whether a message with these header lines is worth fetching the HTML of."""
        if self.deliveries is None:
            return False
        cb = self.deliveries.config
        trust = cb.require_authentication_results
        return may_be_notification(headers, cb.senders, trust.authserv_id if trust else None)

    def _all(self) -> list[Deliveries]:
        return [d for d in (self.deliveries, self.exports) if d is not None]

    def _start_encoura(self) -> None:
        """Log in now so that an ambiguous organization stops the start (exit 78); a vendor
        outage does not: the poller logs in again on its first pass."""
        assert self.exports is not None
        for key in self.exports.config.product_keys:
            if key not in KNOWN_PRODUCT_KEYS:
                self._log.warning(
                    "encoura.unknown_product_key", product_key=key, known=sorted(KNOWN_PRODUCT_KEYS)
                )
        try:
            organization = self.exports.client.login()
            self._log.info("encoura.logged_in", organization=organization)
        except VendorError as exc:
            self._log.error("encoura.login_failed", error=str(exc))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only set flags here: the handler runs between any two bytecodes of the main
        # thread, possibly while it holds the log writer's lock, so logging could deadlock.
        self._signal = signal.Signals(signum).name
        self.stop.set()

    def _ready(self) -> None:
        self._log.info("daemon.ready", sources=self.sources, pid=os.getpid())
        self.notifier.send("READY=1\nSTATUS=watching " + ", ".join(self.sources))
        if self.reconciler is not None:
            self.reconciler.start()
        if self.exports is not None:
            EncouraPoller(self.exports, self.stop).start()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for part in remove_partials(self.config.download_dir):
            self._log.warning("delivery.partial_removed", path=str(part))
        if self.exports is not None:
            self._start_encoura()
        for deliveries in self._all():
            deliveries.resume()
        try:
            if self.config.imap is not None and self.deliveries is not None:
                watcher = MailboxWatcher(
                    self.config.imap,
                    self.ledger,
                    self.handle_message,
                    self.stop,
                    self._ready,
                    self.notifier.tick,
                    screen=self.may_be_notification,
                )
                watcher.run()
            else:
                self._ready()
                while not self.stop.wait(1.0):
                    self.notifier.tick()
        finally:
            self._log.info("daemon.stopping", sources=self.sources, signal=self._signal)
            self.notifier.send("STOPPING=1")
            if not all([d.close(SHUTDOWN_GRACE_S) for d in self._all()]):
                # Downloads still running: leave now. Their rows stay unfinished in the
                # ledger and their .part files are removed and redone on the next start.
                self._log.warning("daemon.shutdown_timeout", grace_s=SHUTDOWN_GRACE_S)
                sys.stdout.flush()
                os._exit(0)
            self.ledger.close()
        return 0
