"""Each landed file to each destination that wants it, exactly once: a ledger row per
(file, destination) written before the first byte is sent, a small pool of uploads, retry
rounds on the destination's schedule, and every unfinished row taken up again at start."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorefetch.config import Config
from scorefetch.core import logs
from scorefetch.core.deliveries import Scheduler, retry_delay
from scorefetch.core.errors import Failure
from scorefetch.core.events import Downloaded, Event, Events, ForwardFailed, ForwardUploaded
from scorefetch.core.forwards import Forward
from scorefetch.core.ledger import Ledger
from scorefetch.core.pool import WorkPool
from scorefetch.forward import Destination, ForwardError
from scorefetch.forward.sftp import SftpTarget

UPLOADS_PER_DESTINATION = 2

Job = tuple[str, str, str]  # destination, vendor, key


class Forwarder:
    """Subscribe `on_event` to the delivery engines' Events; `start()` once the service
    runs; `close()` at shutdown. Publishes Forwarded / ForwardFailed on `self.events`."""

    def __init__(
        self, destinations: Sequence[Destination], ledger: Ledger, events: Events | None = None
    ) -> None:
        self.destinations = {d.name: d for d in destinations}
        self.ledger = ledger
        self.events = events if events is not None else Events()
        workers = max(1, UPLOADS_PER_DESTINATION * len(self.destinations))
        self._work = WorkPool(workers, "forward")
        self._stopping = self._work.stopping
        self._scheduler = Scheduler()
        self._queued: set[Job] = set()
        self._rounds: dict[Job, int] = {}
        self._lock = threading.Lock()  # guards _queued and _rounds
        self._log = logs.get()

    @classmethod
    def from_config(cls, config: Config, ledger: Ledger, events: Events | None = None) -> Forwarder:
        """The destinations under `forward:` (none: a forwarder that does nothing), listening
        to `events` and publishing its outcomes there too (hooks, metrics)."""
        targets = [SftpTarget(name, dest) for name, dest in config.forward.items()]
        forwarder = cls(targets, ledger, events)
        if events is not None and targets:
            events.subscribe(forwarder.on_event)
        return forwarder

    def on_event(self, event: Event) -> None:
        """A listener: claim a row per destination that wants a landed file, then upload."""
        if not isinstance(event, Downloaded):
            return
        for destination in self.destinations.values():
            if destination.wants(event.vendor) and self.ledger.forwards.claim(
                destination.name,
                event.vendor,
                event.key,
                event.path,
                event.size,
                event.product_key,
            ):
                self._submit((destination.name, event.vendor, event.key))

    def start(self) -> int:
        """Claim what landed while no forwarder listened, and queue every unfinished row;
        returns how many were queued."""
        queued = 0
        for destination in self.destinations.values():
            vendors = tuple(v for v in ("collegeboard", "encoura") if destination.wants(v))
            self.ledger.forwards.backfill(destination.name, vendors)
            for row in self.ledger.forwards.unfinished(destination.name):
                self._log.info(
                    "forward.resumed",
                    destination=row.destination,
                    vendor=row.vendor,
                    filename=row.filename,
                    state=row.state,
                )
                self._submit((row.destination, row.vendor, row.key))
                queued += 1
        return queued

    def _submit(self, job: Job) -> None:
        with self._lock:
            if self._stopping.is_set() or job in self._queued:
                return  # stopping: the row stays unfinished and the next start does it
            self._queued.add(job)
        if not self._work.submit(lambda: self._run(job)):
            with self._lock:
                self._queued.discard(job)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no upload is queued or running (retries may still be scheduled)."""
        return self._work.wait_idle(timeout)

    def _run(self, job: Job) -> None:
        with self._lock:
            self._queued.discard(job)
        if self._stopping.is_set():
            return
        try:
            row = self.ledger.forwards.get(*job)
            if row is not None and row.state != "uploaded":
                self.forward(row)
        except Exception:  # noqa: BLE001 - one file must never stop the others
            destination, vendor, key = job
            self._log.exception(
                "forward.failed",
                destination=destination,
                vendor=vendor,
                filename=key,
                attempt=None,
                error="internal error",
                will_retry=False,
            )

    def forward(self, row: Forward) -> bool:
        """One attempt for one row; on failure, schedules the next round."""
        destination = self.destinations[row.destination]
        job = (row.destination, row.vendor, row.key)
        attempt = self.ledger.forwards.attempt(*job)
        started = time.monotonic()
        try:
            placed = destination.upload(Path(row.path), row.filename, row.vendor, row.product)
        except ForwardError as exc:
            self._failed(row, attempt, str(exc), exc.kind)
            return False
        elapsed = time.monotonic() - started
        self.ledger.forwards.uploaded(*job, placed.remote_path)
        with self._lock:
            self._rounds.pop(job, None)
        fields: dict[str, Any] = {"already_there": True} if placed.already else {}
        self._log.info(
            "forward.uploaded",
            destination=row.destination,
            vendor=row.vendor,
            filename=row.filename,
            remote_path=placed.remote_path,
            bytes=placed.size,
            elapsed_s=round(elapsed, 3),
            attempt=attempt,
            **fields,
        )
        landed = self.ledger.get(row.vendor, row.key)
        self.events.publish(
            ForwardUploaded(
                row.destination,
                row.vendor,
                row.filename,
                Path(row.path),
                placed.remote_path,
                placed.size,
                (landed.sha256 if landed else None) or "",
                elapsed,
            )
        )
        return True

    def _failed(self, row: Forward, attempt: int, error: str, kind: Failure) -> None:
        job = (row.destination, row.vendor, row.key)
        with self._lock:
            rounds = self._rounds.get(job, 0)
            self._rounds[job] = rounds + 1
        delay = retry_delay(kind, rounds, self.destinations[row.destination].retry_schedule)
        will_retry = delay is not None
        self.ledger.forwards.failed(*job, error, will_retry=will_retry)
        fields: dict[str, Any] = {"kind": kind}
        if delay is not None and not self._stopping.is_set():
            fields["retry_in_s"] = delay
            self._scheduler.call_later(delay, lambda: self._submit(job))
        fields.update(
            destination=row.destination,
            vendor=row.vendor,
            filename=row.filename,
            attempt=attempt,
            error=error,
            will_retry=will_retry,
        )
        if will_retry:
            self._log.warning("forward.failed", **fields)
        else:  # given up is loud: the file will not reach the CRM unless someone acts
            self._log.error("forward.failed", **fields)
        self.events.publish(
            ForwardFailed(
                row.destination,
                row.vendor,
                row.filename,
                Path(row.path),
                attempt,
                error,
                will_retry,
            )
        )

    def close(self, timeout: float) -> bool:
        """Stop taking work; let running uploads finish for up to `timeout` seconds (an
        upload cut short leaves only a dot-named part, removed by the next attempt)."""
        self._stopping.set()
        self._scheduler.stop()
        return self._work.close(timeout)
