"""Each landed file to each destination that wants it, exactly once: a ledger row per
(file, destination), written in the same transaction as the landing (whichever process
landed it), and one lane of the work engine per destination (core/engine.py) that uploads
what is due, retries on the destination's schedule, and takes up every unfinished row."""

from __future__ import annotations

import contextlib
import posixpath
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scorefetch.config import Config
from scorefetch.core import logs
from scorefetch.core.engine import Engine, Outcome
from scorefetch.core.errors import Failure
from scorefetch.core.events import Events, ForwardFailed, ForwardUploaded
from scorefetch.core.forwards import Forward
from scorefetch.core.ledger import Ledger
from scorefetch.core.work import Job
from scorefetch.forward import Destination, ForwardError, Placed

UPLOADS_PER_DESTINATION = 2
LEASE_S = 6 * 3600.0  # an upload is held at most this long (a dead holder frees it at once)
UNWANTED = "not sent: this destination's vendors: no longer lists the vendor"


class Uploads:
    """One destination's lane: job (vendor, key) → the file at the destination."""

    def __init__(self, destination: Destination, ledger: Ledger, events: Events) -> None:
        self.destination = destination
        self.ledger = ledger
        self.events = events
        self.name = f"forward.{destination.name}"
        self.rows = ledger.forwards.work(destination.name)
        self.capacity = UPLOADS_PER_DESTINATION
        self.lease_s = LEASE_S
        self.schedule = tuple(destination.retry_schedule)
        self._log = logs.get(destination=destination.name)
        self._lock = threading.Lock()
        self._finals: dict[str, tuple[threading.Lock, int]] = {}  # final name: lock, users

    def run(self, job: Job) -> bool:
        vendor, key = job
        name = self.destination.name
        row = self.ledger.forwards.get(name, vendor, key)
        if row is None or row.state == "uploaded":
            return False
        if not self.destination.wants(vendor):  # its vendors: changed since it was owed
            self.rows.failed(job, UNWANTED, None, Failure.REFUSED)  # kept, reported at start
            return False
        self.rows.attempt(job)
        started = time.monotonic()
        placed = self._upload(row, vendor, key)
        elapsed = time.monotonic() - started
        self.ledger.forwards.uploaded(name, vendor, key, placed.remote_path)
        fields: dict[str, Any] = {"already_there": True} if placed.already else {}
        self._log.info(
            "forward.uploaded",
            vendor=vendor,
            filename=row.filename,
            remote_path=placed.remote_path,
            bytes=placed.size,
            elapsed_s=round(elapsed, 3),
            attempt=row.attempts + 1,
            **fields,
        )
        self.events.publish(
            ForwardUploaded(
                name,
                vendor,
                row.filename,
                Path(row.path),
                placed.remote_path,
                placed.size,
                row.sha256 or "",
                elapsed,
            )
        )
        return True

    def _upload(self, row: Forward, vendor: str, key: str) -> Placed:
        """The upload; a file at the final name is ours when this row's rename was sent,
        or another row's of the same bytes (two exports of one name that landed as one
        file) — then its bytes there are checked, and it is not sent twice."""
        name = self.destination.name
        final = posixpath.join(self.destination.remote_dir(vendor, row.product), row.filename)

        def shared() -> bool:
            return bool(row.sha256) and self.ledger.forwards.sent_as(name, final, row.sha256 or "")

        def upload(ours: str | None) -> Placed:
            return self.destination.upload(
                Path(row.path),
                row.filename,
                vendor,
                row.product,
                sha256=row.sha256,
                ours=ours,
                renaming=lambda at: self.ledger.forwards.renaming(name, vendor, key, at),
            )

        with self._one_at_a_time(final):  # else each removes the other's part as stale
            ours = final if shared() else row.renaming
            try:
                return upload(ours)
            except ForwardError as exc:  # the other row's rename came first, meanwhile
                if exc.reason != "conflict" or ours == final or not shared():
                    raise
                return upload(final)

    @contextlib.contextmanager
    def _one_at_a_time(self, final: str) -> Iterator[None]:
        """One upload at a time to one final name (two rows of one name: regenerated)."""
        with self._lock:
            lock, users = self._finals.get(final, (threading.Lock(), 0))
            self._finals[final] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._finals[final]
                if users == 1:
                    del self._finals[final]
                else:
                    self._finals[final] = (lock, users - 1)

    def failed(self, job: Job, outcome: Outcome) -> None:
        vendor, key = job
        row = self.ledger.forwards.get(self.destination.name, vendor, key)
        filename = row.filename if row else key
        fields: dict[str, Any] = {"kind": outcome.kind}
        if outcome.retry_in_s is not None:
            fields["retry_in_s"] = outcome.retry_in_s
        if outcome.reason is not None:
            fields["reason"] = outcome.reason
        if outcome.kind == Failure.INTERNAL:
            fields["exc_info"] = outcome.exc
        fields.update(
            vendor=vendor,
            filename=filename,
            attempt=outcome.attempt,
            error=outcome.error,
            will_retry=outcome.will_retry,
        )
        if outcome.will_retry:
            self._log.warning("forward.failed", **fields)
        else:  # given up is loud: the file will not reach the CRM unless someone acts
            self._log.error("forward.failed", **fields)
        self.events.publish(
            ForwardFailed(
                self.destination.name,
                vendor,
                filename,
                Path(row.path) if row else Path(),
                outcome.attempt,
                outcome.error,
                outcome.will_retry,
                outcome.kind,
            )
        )


class Forwarder:
    """The destinations' lanes on `engine` (its own when none is given); `start()` once the
    service runs; `close()` at shutdown. Publishes ForwardUploaded / ForwardFailed."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        ledger: Ledger,
        events: Events | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.destinations = {d.name: d for d in destinations}
        self.ledger = ledger
        self.events = events if events is not None else Events()
        self._own_engine = engine is None
        self.engine = engine if engine is not None else Engine()
        self.lanes = {d.name: Uploads(d, ledger, self.events) for d in self.destinations.values()}
        for lane in self.lanes.values():
            self.engine.add(lane)
        self._log = logs.get()

    @classmethod
    def from_config(
        cls,
        config: Config,
        ledger: Ledger,
        events: Events | None = None,
        engine: Engine | None = None,
    ) -> Forwarder:
        """The destinations under `forward:` (none: a forwarder that does nothing)."""
        if not config.forward:  # sftp.py imports paramiko (15 MB): only with a forward
            return cls([], ledger, events, engine)
        from scorefetch.forward.sftp import SftpTarget

        targets = [SftpTarget(name, dest) for name, dest in config.forward.items()]
        return cls(targets, ledger, events, engine)

    def start(self) -> int:
        """Claim what landed while this destination was configured but no row was written
        (a ledger of an older release), make every unfinished row due now, and report rows
        of destinations no longer configured or of vendors they no longer want; returns
        how many are due."""
        queued = 0
        for name, destination in self.destinations.items():
            self.ledger.forwards.backfill(name, destination.wants)
            for row in self.ledger.forwards.unfinished(name):
                if not destination.wants(row.vendor):
                    continue  # its vendors: changed: kept, not sent, reported below
                facts = ("destination", "vendor", "filename", "state")
                self._log.info("forward.resumed", **{k: getattr(row, k) for k in facts})
                if row.state == "failed":
                    self.ledger.forwards.retry(name, row.vendor, row.key)
                self.lanes[name].rows.again((row.vendor, row.key))
                queued += 1
        wants = {name: d.wants for name, d in self.destinations.items()}
        orphans = self.ledger.forwards.orphans(wants)
        if orphans:
            self._log.warning(
                "forward.orphaned",
                destinations=orphans,
                advice="files owed from before a configuration change (a destination removed "
                "or renamed, or its vendors: changed) were not sent and are kept; add it back, "
                "or send them by hand",
            )
        if self._own_engine:
            self.engine.start()
        self.engine.wake()
        return queued

    def wait_idle(self, timeout: float) -> bool:
        """Block until no upload runs and none is due now (retries may be scheduled)."""
        return self.engine.wait_idle(timeout)

    def close(self, timeout: float) -> bool:
        """Stop taking work; let running uploads finish for up to `timeout` seconds (an
        upload cut short leaves only a dot-named part, removed by the next attempt)."""
        return self.engine.close(timeout) if self._own_engine else True
