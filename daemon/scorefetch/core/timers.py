"""One timer thread for the process: callbacks at given times, each cancellable.

`threading.Timer` starts a thread per timer, and the daemon arms several per file (a
vendor call's deadline, a download's, a round's lease renewal): a burst of files paid
for hundreds of thread starts. Here one thread, started on first use, sleeps until
the earliest time due. A callback runs on that thread, so it must be short (shutting a
socket, renewing a lease, arming the next renewal); one that raises is dropped without
stopping the others.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

_COMPACT_AT = 256  # cancelled entries kept in the heap before it is rebuilt without them


_ARMED, _CANCELLED, _STARTED = 0, 1, 2


class Timer:
    """One armed callback. Once `cancel()` has returned it will not start (one that has
    started already runs to its end, as with threading.Timer)."""

    __slots__ = ("at", "fn", "state")

    def __init__(self, at: float, fn: Callable[[], None]) -> None:
        self.at = at
        self.fn = fn
        self.state = _ARMED

    @property
    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def cancel(self) -> None:
        _TIMERS.cancel(self)


class _Timers:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: threading.Thread | None = None

    def call_later(self, seconds: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(seconds, 0.0), fn)
        with self._cond:
            heapq.heappush(self._heap, (timer.at, next(self._order), timer))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="timers", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is timer:
                self._cond.notify()  # earlier than what the thread sleeps towards
        return timer

    def cancel(self, timer: Timer) -> None:
        with self._cond:
            if timer.state != _ARMED:
                return
            timer.state = _CANCELLED
            self._cancelled += 1
            if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _due(self) -> list[Timer]:
        """Wait for the earliest timer; the ones due now, taken off the heap."""
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                    self._cancelled = max(0, self._cancelled - 1)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                due: list[Timer] = []
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    timer = heapq.heappop(self._heap)[2]
                    if timer.cancelled:
                        self._cancelled = max(0, self._cancelled - 1)
                    else:
                        due.append(timer)
                return due

    def _start(self, timer: Timer) -> bool:
        """Whether `timer` may run now: not cancelled meanwhile (by an earlier callback of
        the same batch, or another thread); from here on a cancel() is a no-op."""
        with self._cond:
            if timer.state != _ARMED:
                return False
            timer.state = _STARTED
            return True

    def _run(self) -> None:
        while True:
            for timer in self._due():
                if not self._start(timer):
                    continue
                try:
                    timer.fn()
                except Exception:  # noqa: BLE001, S112 - one callback never stops the others
                    continue


_TIMERS = _Timers()


def call_later(seconds: float, fn: Callable[[], None]) -> Timer:
    """Run `fn` on the timer thread after `seconds` (unless cancelled first)."""
    return _TIMERS.call_later(seconds, fn)
