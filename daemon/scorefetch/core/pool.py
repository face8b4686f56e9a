"""A bounded worker pool that knows what it runs: the delivery engine and the forwarder
share it (wait until idle; on stop, take no more and let the running finish a while)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures


class WorkPool:
    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.stopping = threading.Event()

    def submit(self, work: Callable[[], None]) -> bool:
        """Run `work` on a worker; False (nothing queued) once stopping."""
        with self._lock:
            if self.stopping.is_set():
                return False
            future = self._pool.submit(work)
            self._futures.add(future)
        future.add_done_callback(self._done)
        return True

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._futures:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float) -> bool:
        """Take no more work; let what runs finish for up to `timeout` seconds; True when
        everything finished."""
        self.stopping.set()
        with self._lock:
            running = set(self._futures)
        _, not_done = wait_futures(running, timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return not not_done
