"""The daemon: the ledger and every enabled source (scorefetch/sources.py); speaks
sd_notify; stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType

from scorefetch import sources
from scorefetch.config import Config
from scorefetch.core import logs, memory
from scorefetch.core.downloads import remove_partials
from scorefetch.core.engine import (
    HEARTBEAT,
    HEARTBEAT_REST_S,
    HEARTBEAT_S,
    Engine,
    heartbeat_value,
)
from scorefetch.core.errors import ScorefetchError, describe
from scorefetch.core.events import Events, LedgerFailing, LedgerRecovered
from scorefetch.core.ledger import Ledger
from scorefetch.core.limits import raise_open_files_limit
from scorefetch.core.loops import ENDED
from scorefetch.forward.forwarder import Forwarder
from scorefetch.observers import attach
from scorefetch.observers.alerts import ALERTS_S, Alerts
from scorefetch.retention import Retention
from scorefetch.source import Source

SHUTDOWN_GRACE_S = 30.0  # in-flight downloads get this long after SIGTERM
# The main loop wakes for the stop flag, a loop's end (core.loops.ENDED), the watchdog's
# next ping; else it looks at the loops' health this often (a stuck one: daemon.unhealthy),
# and each STARTING_S while the mailbox is not connected yet (STATUS= says when it is).
HEALTH_S = 60.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
STARTING_S = 1.0
ALERTS_REST_S = 60.0  # the alerts' check while the engine rests (nothing due, nothing ran)


class _Stop(threading.Event):
    """The stop flag; setting it also wakes the main loop, which waits on `attention`."""

    def __init__(self, attention: threading.Event) -> None:
        super().__init__()
        self._attention = attention

    def set(self) -> None:
        super().set()
        self._attention.set()


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

    def next_ping(self) -> float | None:
        """Seconds until WATCHDOG=1 is due (None without a watchdog)."""
        if self.watchdog_interval is None:
            return None
        return max(0.0, self._last_ping + self.watchdog_interval - time.monotonic())


class Service:
    """Runs every enabled source until SIGTERM/SIGINT; the main thread only watches that
    their loops are alive and feeds the systemd watchdog while they are."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.attention = ENDED  # a loop ended, or (through _Stop) the stop flag was set
        self.stop: threading.Event = _Stop(self.attention)
        self.running = threading.Event()  # set once every source is watching (READY=1)
        self.notifier = Notifier()
        self.ledger = Ledger(config.ledger_path)
        self.events = Events()
        self.engine = Engine()
        self.sources: list[Source] = sources.enabled(
            config, self.ledger, events=self.events, engine=self.engine
        )
        self.observers = attach(config, self.events, self.ledger, self.names)
        self.forwarder = Forwarder.from_config(config, self.ledger, self.events, self.engine)
        self.retention = Retention.from_config(config, self.ledger)
        self.alerts = Alerts(config, self.ledger, self.events, self.names)
        self._signal: str | None = None
        self._ledger_down: float | None = None  # since when writes fail (epoch), once told
        self._ledger_watch = threading.Lock()
        self.ledger.on_trouble = self._watch_ledger  # told at once; recovery on the engine's
        self._log = logs.get()

    @property
    def names(self) -> list[str]:
        return [source.vendor for source in self.sources]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Nothing that takes a lock: the handler runs between any two bytecodes of the main
        # thread, possibly while it holds the log writer's lock or the very Event's lock
        # that stop.set() would take (inside attention.wait or .clear): a stop that never
        # comes. The signal's number also reaches the wakeup pipe, read by _signals.
        self._signal = signal.Signals(signum).name

    def _catch_signals(self) -> None:
        """SIGTERM/SIGINT set the stop flag from a thread of their own: Python writes each
        signal's number to the wakeup pipe (set_wakeup_fd) before the handler runs."""
        read, write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write, False)  # what set_wakeup_fd requires
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        threading.Thread(target=self._signals, args=(read,), name="signals", daemon=True).start()

    def _signals(self, pipe: int) -> None:
        while True:
            try:
                numbers = os.read(pipe, 64)
            except InterruptedError:
                continue
            if not numbers:
                return
            for number in numbers:
                if number in STOP_SIGNALS:
                    self._signal = signal.Signals(number).name
                    self.stop.set()

    def _relocate(self) -> None:
        """Landed files recorded outside download_dir (it moved) found under it again."""
        try:
            moved = self.ledger.relocate(self.config.download_dir)
        except ScorefetchError as exc:
            self._log.warning("ledger.write_failed", error=str(exc))
            return
        if moved:
            old, new = moved[0]
            self._log.warning(
                "ledger.relocated", files=len(moved), example_from=str(old), example_to=str(new)
            )

    def _remove_partials(self) -> None:
        try:
            for part in remove_partials(self.config.download_dir):
                self._log.warning("delivery.partial_removed", path=str(part))
        except OSError as exc:  # an unreadable folder: the downloads will say so, and retry
            self._log.warning("delivery.partial_cleanup_failed", error=describe(exc))

    def run(self) -> int:
        self._catch_signals()
        raise_open_files_limit()  # a flood of idle sockets must not starve the vendor calls
        self.observers.start()
        self._relocate()  # before the uploads and retention read the recorded paths
        self.forwarder.start()
        self.retention.start()
        self._remove_partials()
        self.engine.every(HEARTBEAT_S, self._heartbeat, "heartbeat", rest_s=HEARTBEAT_REST_S)
        self.engine.every(ALERTS_S, self.alerts.check, "alerts", rest_s=ALERTS_REST_S)
        self.engine.every(ALERTS_S, self._watch_ledger, "ledger", rest_s=ALERTS_REST_S)
        self.engine.at_rest(memory.trim)  # what start-up or a burst freed goes back
        try:
            watching = [source.start(self.stop, self.running) for source in self.sources]
            for source in self.sources:
                source.resume()
            self.engine.listen()  # `fetch` and `sync` ring; at rest the ledger is polled slowly
            self.engine.start()
            self._main_loop(watching)
        finally:
            self._log.info("daemon.stopping", sources=self.names, signal=self._signal)
            self.notifier.send("STOPPING=1")
            self.retention.close()
            closing = [source.stop(SHUTDOWN_GRACE_S) for source in self.sources]
            if not all([*closing, self.engine.close(SHUTDOWN_GRACE_S)]):
                # Downloads still running: leave now. Their rows stay unfinished in the
                # ledger and their .part files are removed and redone on the next start.
                self._log.warning("daemon.shutdown_timeout", grace_s=SHUTDOWN_GRACE_S)
                self.observers.close()
                sys.stdout.flush()
                os._exit(0)
            self.observers.close()  # after the downloads: their last events still count
            self._say_stopped()
            self.ledger.close()
        return 0

    def _watch_ledger(self) -> None:
        """`ledger.failing` once when writes fail (its disk full: nothing is recorded, so
        nothing moves on, and no alarm could be kept in it), `ledger.recovered` after."""
        with self._ledger_watch:
            self._ledger_changed(self.ledger.trouble)

    def _ledger_changed(self, trouble: tuple[float, str] | None) -> None:
        if trouble is not None and self._ledger_down is None:
            self._ledger_down = trouble[0]
            since = datetime.fromtimestamp(trouble[0], UTC).isoformat(timespec="seconds")
            self._log.error("ledger.failing", error=trouble[1], since=since)
            self.events.publish(LedgerFailing(trouble[1], since))
        elif trouble is None and self._ledger_down is not None:
            down_s = time.time() - self._ledger_down
            self._ledger_down = None
            self._log.info("ledger.recovered", down_s=round(down_s))
            self.events.publish(LedgerRecovered(down_s))

    def _heartbeat(self) -> None:
        self.ledger.set_watcher(HEARTBEAT, heartbeat_value(self.engine))

    def _say_stopped(self) -> None:
        with contextlib.suppress(ScorefetchError):
            self.ledger.set_watcher(HEARTBEAT, json.dumps({"pid": os.getpid(), "stopped": True}))

    def _main_loop(self, watching: list[threading.Event]) -> None:
        """READY=1 once local start-up worked (config, folders, ledger, the sources'
        threads): the mailbox is one trigger of three, and the listing and the poller run
        whatever it does. The mailbox's state goes to STATUS=. WATCHDOG=1 only while every
        loop is alive and none is stuck."""
        self._log.info("daemon.ready", sources=self.names, pid=os.getpid())
        self.running.set()
        self._heartbeat()
        shown = self._status_line(watching)
        self.notifier.send(f"READY=1\nSTATUS={shown}")
        unhealthy: tuple[list[str], list[str]] = ([], [])
        while True:
            self.attention.wait(self._next_wake(watching, pinging=not any(unhealthy)))
            self.attention.clear()  # then the flag: a stop set meanwhile is seen now
            if self._signal is not None:  # the signals thread sets it; this is the fallback
                self.stop.set()  # (a wakeup pipe lost to another library: within HEALTH_S)
            if self.stop.is_set():
                break
            line = self._status_line(watching)
            if line != shown:
                shown = line
                self.notifier.send(f"STATUS={line}")
            loops = [loop for source in self.sources for loop in source.loops()]
            now = ([x.name for x in loops if not x.alive], [x.name for x in loops if x.stuck])
            if any(now) and now != unhealthy:
                # systemd (WatchdogSec) restarts the service; without it, this line says why.
                self._log.error("daemon.unhealthy", dead_loops=now[0], stuck_loops=now[1])
            unhealthy = now
            if not any(unhealthy):
                self.notifier.tick()

    def _next_wake(self, watching: list[threading.Event], pinging: bool) -> float:
        """Seconds until the main loop has something to do, at the latest: the next
        WATCHDOG=1 while it pings, else a look at the loops each watchdog interval."""
        wait = HEALTH_S if all(event.is_set() for event in watching) else STARTING_S
        interval = self.notifier.watchdog_interval
        if interval is None:
            return wait
        ping = self.notifier.next_ping() if pinging else None
        return min(wait, interval if ping is None else ping)

    def _status_line(self, watching: list[threading.Event]) -> str:
        """What systemctl status shows: the sources, and whether the mailbox is watched."""
        line = "running " + ", ".join(self.names)
        if self.config.imap is not None and not all(event.is_set() for event in watching):
            line += "; mailbox not connected (retrying; see scorefetch status)"
        return line
