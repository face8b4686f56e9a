"""From "this file is announced" to "this file landed": formats, duplicates, the worker
pool, and what to do after each kind of failure.

A presigned URL is requested by the worker that downloads it, immediately before
the download, so a 15-second URL never waits in a queue.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from scorefetch.core import logs
from scorefetch.core.downloads import Landed, Progress
from scorefetch.core.errors import (
    Failure,
    LocalError,
    RefusedError,
    ScorefetchError,
    VendorError,
)
from scorefetch.core.events import DeliveryFailed, Downloaded, Events
from scorefetch.core.ledger import Ledger
from scorefetch.core.loops import internal_error
from scorefetch.core.pool import WorkPool

URL_TRIES = 3  # fresh URLs asked for in a row after 403/expiry before backing off
URL_MARGIN_S = 3.0  # a URL older than its lifetime minus this is not used
TRANSIENT_DELAYS = (1.0, 5.0)  # then the configured retry_schedule


LOCAL_FIRST_S = 5.0  # a full disk is often freed within minutes: look again soon


def retry_delay(kind: Failure, retries_done: int, schedule: Sequence[float]) -> float | None:
    """Seconds until the next round for a failure of `kind`, or None to give up.

    A local failure (disk full, quota, a refusing folder) is never given up: the file is
    ours to land once someone frees the disk, so after the schedule its last step repeats."""
    if kind in (Failure.FATAL, Failure.REFUSED):
        return None
    if kind == Failure.LOCAL:
        delays = (min(LOCAL_FIRST_S, *schedule[:1]), *schedule)
        return delays[min(retries_done, len(delays) - 1)]
    quick = kind in (Failure.TRANSIENT, Failure.EXPIRED)
    delays = (*TRANSIENT_DELAYS, *schedule) if quick else tuple(schedule)
    return delays[retries_done] if retries_done < len(delays) else None


class Scheduler:
    """Runs callables after a delay on one thread; what is pending at stop() is dropped
    (the ledger still has those rows as `retrying`, so the next start redoes them)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - one bad callable never stops the rest
                internal_error("scheduler", exc)


class DeliverySettings(Protocol):
    """What the engine reads from a vendor's config section."""

    @property
    def max_parallel(self) -> int: ...
    @property
    def retry_schedule(self) -> Sequence[float]: ...


class VendorClient(Protocol):
    @property
    def config(self) -> DeliverySettings: ...


ClientT = TypeVar("ClientT", bound=VendorClient)


class Deliveries(Generic[ClientT]):
    """Announced keys → files on disk, each at most once: the pool, the retry rounds and
    their log lines. A vendor says how one attempt goes (`_attempt`)."""

    vendor = ""

    def __init__(
        self,
        client: ClientT,
        ledger: Ledger,
        download_dir: Path,
        progress: Callable[[str], Progress | None] | None = None,
        events: Events | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.events = events if events is not None else Events()
        self.folder = download_dir / self.vendor
        self._retry_schedule = tuple(client.config.retry_schedule)
        self._progress = progress
        self._work = WorkPool(client.config.max_parallel, f"{self.vendor}-download")
        self._stopping = self._work.stopping
        self._scheduler = Scheduler()
        self._rounds: dict[str, int] = {}
        self._lock = threading.Lock()  # guards _rounds
        self._log = logs.get(vendor=self.vendor)

    def resume(self) -> int:
        """Queue every row a previous run left unfinished; returns how many."""
        rows = self.ledger.unfinished(self.vendor)
        for row in rows:
            self._log.info("delivery.resumed", **self._ids(row.key), state=row.state)
            self.queue(row.key)
        return len(rows)

    def queue(self, name: str) -> None:
        """Queue a key the ledger has just claimed (new, re-announced after a final failure,
        or resumed): it starts with a fresh retry budget."""
        with self._lock:
            self._rounds.pop(name, None)
        self._submit(name)

    def _submit(self, name: str) -> None:
        # Once stopping, nothing is queued: the row stays pending and the next start does it.
        self._work.submit(lambda: self._run(name))

    def wait_idle(self, timeout: float) -> bool:
        """Block until no download is queued or running (the scheduler may hold retries)."""
        return self._work.wait_idle(timeout)

    def _run(self, name: str) -> None:
        if self._stopping.is_set():
            return
        try:
            self.deliver(name)
        except Exception as exc:  # noqa: BLE001 - one failed file must never stop the others
            # A bug (or a ledger that cannot write): recorded and retried like any failure,
            # never left `pending` until a restart. The text is the type only: safe to show.
            error = f"internal error ({type(exc).__name__})"
            attempt = self._attempts(name)
            self._after_failure(name, error, Failure.INTERNAL, attempt, schedule=True, exc=exc)

    def _attempts(self, name: str) -> int:
        try:
            row = self.ledger.get(self.vendor, name)
        except ScorefetchError:
            return 0
        return row.attempts if row else 0

    def deliver(self, name: str, *, schedule: bool = True) -> Landed | None:
        """One round of attempts for `name`; on failure, schedules the next round
        (`schedule`) or leaves the row `retrying` for the daemon's next start."""
        log = self._log.bind(**self._ids(name))
        error: ScorefetchError | None = None
        for _ in range(URL_TRIES):
            attempt = self.ledger.attempt(self.vendor, name)
            try:
                landed = self._attempt(name)
            except RefusedError as exc:
                error, kind = exc, Failure.REFUSED
            except (VendorError, LocalError) as exc:
                error, kind = exc, exc.kind
            else:
                self.ledger.downloaded(self.vendor, name, landed.path, landed.size, landed.sha256)
                log.info(
                    "delivery.downloaded",
                    filename=landed.path.name,
                    path=str(landed.path),
                    bytes=landed.size,
                    sha256=landed.sha256,
                    elapsed_s=round(landed.elapsed_s, 3),
                    attempt=attempt,
                )
                with self._lock:
                    self._rounds.pop(name, None)
                self.events.publish(
                    Downloaded(
                        self.vendor,
                        name,
                        landed.path,
                        landed.size,
                        landed.sha256,
                        landed.elapsed_s,
                        product_key=self._product_key(name),
                    )
                )
                return landed
            if kind != Failure.EXPIRED:
                break
            log.warning("delivery.failed", attempt=attempt, error=str(error), will_retry=True)
        self._after_failure(name, str(error), kind, attempt, schedule=schedule)
        return None

    def _attempt(self, key: str) -> Landed:
        raise NotImplementedError

    def _ids(self, key: str) -> dict[str, Any]:
        """What names `key` in log lines."""
        return {"filename": key}

    def _product_key(self, key: str) -> str | None:
        """The sub-folder a vendor files `key` under, if any."""
        return None

    def _after_failure(
        self,
        name: str,
        error: str,
        kind: Failure,
        attempt: int,
        *,
        schedule: bool,
        exc: Exception | None = None,
    ) -> None:
        with self._lock:
            rounds = self._rounds.get(name, 0)
            self._rounds[name] = rounds + 1
        delay = retry_delay(kind, rounds, self._retry_schedule)
        will_retry = delay is not None
        fields: dict[str, Any] = {
            "attempt": attempt,
            "error": error,
            "will_retry": will_retry,
            "kind": kind,
        }
        if kind == Failure.INTERNAL:
            fields["reason"] = "internal_error"
            fields["exc_info"] = exc  # the traceback, in this one line
        if delay is not None and schedule and not self._stopping.is_set():
            # Scheduled before the ledger write: a ledger that fails now must not strand it.
            fields["retry_in_s"] = delay
            self._scheduler.call_later(delay, lambda: self._submit(name))
        # A final failure is loud: nothing will fetch this file unless someone acts.
        level = self._log.warning if will_retry else self._log.error
        level("delivery.failed", **self._ids(name), **fields)
        try:
            self.ledger.failed(self.vendor, name, error, will_retry=will_retry)
            row = self.ledger.get(self.vendor, name)
        except ScorefetchError as exc:
            self._log.error("ledger.write_failed", **self._ids(name), error=str(exc))
            row = None
        filename = (row.filename if row else None) or name
        self.events.publish(
            DeliveryFailed(self.vendor, name, filename, attempt, error, kind, will_retry)
        )

    def close(self, timeout: float) -> bool:
        """Stop taking work, let running downloads finish for up to `timeout` seconds."""
        self._stopping.set()
        self._scheduler.stop()
        return self._work.close(timeout)
