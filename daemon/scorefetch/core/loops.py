"""Background work that survives its own bugs: a supervised thread, and the periodic loop
(College Board reconciliation, the Encoura poller) built on it.

An unexpected exception is logged once (`loop.failed`, `reason=internal_error`, with the
traceback the first time in a row), then the loop backs off and goes on. If a thread dies
anyway (a BaseException), `alive` turns False; if a loop that promises a heartbeat
(`stale_after`) stops ticking — stuck in a call that never returns — `stuck` turns True.
Either way the service stops feeding the systemd watchdog, so systemd restarts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from scorefetch.core import logs
from scorefetch.core.errors import LedgerError, ScorefetchError

INTERNAL_BACKOFF_S = (1.0, 5.0, 30.0, 60.0)  # after a loop's unexpected exception, in a row
# Set when a supervised thread ends before its stop flag: the service's main loop waits on
# it (and on its stop flag) instead of looking at the loops every second.
ENDED = threading.Event()


def internal_error(loop: str, exc: BaseException, *, repeats: int = 1) -> None:
    """The one line for an unexpected exception in `loop`: traceback only the first time.
    The ledger failing is no bug: said in its words (ledger.failing tells a person)."""
    log = logs.get()
    if isinstance(exc, LedgerError):
        log.warning("loop.failed", loop=loop, reason="ledger", error=str(exc), repeats=repeats)
        return
    fields = {"loop": loop, "reason": "internal_error", "error": type(exc).__name__}
    if repeats <= 1:
        log.error("loop.failed", **fields, exc_info=exc)
    else:
        log.error("loop.failed", **fields, repeats=repeats)


class Supervised:
    """`body()` on a daemon thread, called again whenever it returns or raises, until
    `stop` is set. A body is a long-running loop (the mailbox watcher) or one step."""

    def __init__(
        self,
        name: str,
        body: Callable[[], None],
        stop: threading.Event,
        *,
        stale_after: float | None = None,
    ) -> None:
        self.name = name
        self._body = body
        self._stop = stop
        self._stale_after = stale_after  # seconds without tick() that mean "stuck"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.beat = time.monotonic()  # when the body last said it was alive

    def start(self) -> Supervised:
        self.beat = time.monotonic()
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    @property
    def stuck(self) -> bool:
        """The body promised to tick at least every `stale_after` seconds and has not."""
        if self._stale_after is None or self._stop.is_set() or self._thread.ident is None:
            return False
        return time.monotonic() - self.beat > self._stale_after

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (after `stop` is set); whether it did."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def tick(self) -> None:
        """Called by the body now and then: it is not stuck."""
        self.beat = time.monotonic()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if not self._stop.is_set():
                ENDED.set()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._body()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the loop goes on; that is its point
                failures += 1
                internal_error(self.name, exc, repeats=failures)
                delay = INTERNAL_BACKOFF_S[min(failures, len(INTERNAL_BACKOFF_S)) - 1]
                self._stop.wait(delay)


class Periodic:
    """`work()` at once and then every `interval` seconds on a supervised thread.

    A ScorefetchError (the vendor or the network said no) goes to `failed(exc, failures)`,
    which logs it and returns the seconds until the next try; any other exception is an
    internal error: logged once, retried after a back-off. `after` (optional) is waited
    for before the first pass (the service sets it once every source is watching)."""

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        stop: threading.Event,
        *,
        interval: float,
        failed: Callable[[ScorefetchError, int], float],
        after: threading.Event | None = None,
    ) -> None:
        self._work = work
        self._stop = stop
        self._interval = interval
        self._failed = failed
        self._after = after
        self._failures = 0
        self.passes = 0  # completed passes, for tests and status
        self.thread = Supervised(name, self._step, stop)

    def start(self) -> Periodic:
        self.thread.start()
        return self

    def _step(self) -> None:
        while self._after is not None and not self._after.is_set():
            if self._stop.wait(0.1):
                return
        if self._stop.is_set():
            return
        self.thread.tick()
        try:
            self._work()
        except ScorefetchError as exc:
            self._failures += 1
            wait = self._failed(exc, self._failures)
        else:
            self._failures = 0
            self.passes += 1
            wait = self._interval
        self._stop.wait(wait)
