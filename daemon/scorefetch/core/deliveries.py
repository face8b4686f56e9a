"""From "this file is announced" to "this file landed": one lane of the work engine per
vendor (core/engine.py). A vendor says how one attempt goes (`_attempt`); the engine
runs rounds, leases and retries.

A presigned URL is requested by the worker that downloads it, immediately before
the download, so a 15-second URL never waits in a queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from scorefetch.core import completeness, interrupt, logs
from scorefetch.core.downloads import Landed, Progress
from scorefetch.core.engine import HELD, Engine, Outcome
from scorefetch.core.engine import retry_delay as retry_delay  # the one failure policy
from scorefetch.core.errors import Failure, ScorefetchError, describe
from scorefetch.core.events import DeliveryFailed, Downloaded, Events, Suspect
from scorefetch.core.ledger import Ledger
from scorefetch.core.work import Job, holder_alive

URL_TRIES = 3  # fresh URLs asked for in a row after 403/expiry before backing off
URL_MARGIN_S = 3.0  # a URL older than its lifetime minus this is not used
LEASE_MARGIN_S = 300.0  # a download is held this much longer than its own deadline
ELSEWHERE_POLL_S = 0.5  # how often `fetch` looks at a row the daemon is downloading


class DeliverySettings(Protocol):
    """What the engine reads from a vendor's config section."""

    @property
    def max_parallel(self) -> int: ...
    @property
    def retry_schedule(self) -> Sequence[float]: ...
    @property
    def download_timeout(self) -> float: ...


class VendorClient(Protocol):
    @property
    def config(self) -> DeliverySettings: ...


ClientT = TypeVar("ClientT", bound=VendorClient)


class Deliveries(Generic[ClientT]):
    """Announced keys → files on disk, each at most once; a lane of `engine` (its own
    engine when none is given: `fetch`, `sync`, tests)."""

    vendor = ""

    def __init__(
        self,
        client: ClientT,
        ledger: Ledger,
        download_dir: Path,
        progress: Callable[[str], Progress | None] | None = None,
        events: Events | None = None,
        *,
        engine: Engine | None = None,
        forward_to: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.events = events if events is not None else Events()
        self.folder = download_dir / self.vendor
        self.forward_to = tuple(forward_to)  # destinations that want this vendor's files
        self._progress = progress
        self._log = logs.get(vendor=self.vendor)
        # The engine's view of this lane:
        self.name = self.vendor
        self.rows = ledger.work(self.vendor)
        self.capacity = client.config.max_parallel
        self.lease_s = client.config.download_timeout + LEASE_MARGIN_S
        self.schedule = tuple(client.config.retry_schedule)
        self._bytes: dict[str, tuple[int, int | None]] = {}
        self._names: dict[str, str] = {}  # key -> the file name it is landing as
        self._own_engine = engine is None
        self.engine = engine if engine is not None else Engine()
        self.engine.add(self)

    def resume(self) -> int:
        """Make every row a previous run left unfinished due now, with a fresh retry
        budget; returns how many."""
        rows = []
        for row in self.ledger.unfinished(self.vendor):
            if not self.still_wanted(row.key):
                continue
            self._log.info("delivery.resumed", **self._ids(row.key), state=row.state)
            self.rows.again((row.key,))
            rows.append(row)
        self._kick()
        return len(rows)

    def still_wanted(self, key: str) -> bool:
        """Whether an unfinished row is still wanted under today's configuration (a
        vendor may narrow what it takes between runs); one that is not is closed here."""
        return True

    def queue(self, name: str) -> None:
        """A key the ledger has just claimed (new, re-announced after a final failure, or
        fetched by hand) is due now with a fresh retry budget."""
        self.rows.again((name,))
        self._kick()

    def _kick(self) -> None:
        if self._own_engine:
            self.engine.start()
        self.engine.wake()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no download runs and none is due now (retries may be scheduled)."""
        return self.engine.wait_idle(timeout)

    def deliver(self, name: str, say: Callable[[str], None] | None = None) -> Landed | None:
        """One round for `name` on this thread; None when it failed (recorded, and due
        again on the schedule for the daemon). When another process (the running daemon)
        is downloading it already, waits for that one's outcome instead (`say` tells)."""
        if self.ledger.get(self.vendor, name) is None:  # every unit of work is a row first
            self.ledger.claim(self.vendor, name, self._filename(name), "fetch")
        done, landed = self.engine.run_now(self, (name,))
        if landed is HELD:
            if say is not None:
                say(f"{name}: the running daemon is downloading it; waiting for it")
            return self._outcome_elsewhere(name)
        if done and isinstance(landed, Landed):
            return landed
        return self._landed_meanwhile(name)

    def _landed_meanwhile(self, name: str) -> Landed | None:
        """The row as it is now: landed by another process between our look and our try
        (the daemon was quicker), or None (this round failed; recorded)."""
        row = self.ledger.get(self.vendor, name)
        if row is not None and row.state == "downloaded" and row.path:
            return Landed(Path(row.path), row.bytes or 0, row.sha256 or "", 0.0)
        return None

    def _outcome_elsewhere(self, name: str) -> Landed | None:
        """The file as the process holding its row left it: landed, or None once that
        process let go without landing it (it failed, or died). As long as it holds the
        row, however long its round (it renews its lease): Ctrl-C ends the wait."""
        while True:
            row = self.ledger.get(self.vendor, name)
            if row is None or row.lease is None or not holder_alive(row.lease):
                return self._landed_meanwhile(name)
            time.sleep(ELSEWHERE_POLL_S)  # another process: only the ledger can tell us
            interrupt.check()

    def bytes_so_far(self, job: Job) -> dict[str, Any]:
        """For the heartbeat: bytes so far, of how many, and the file's name (`status`
        matches it with the `.part` file it sees, to show one download once)."""
        done, total = self._bytes.get(job[0], (0, None))
        found: dict[str, Any] = {"bytes": done, "total": total}
        if job[0] in self._names:
            found["filename"] = self._names[job[0]]
        return found

    def run(self, job: Job) -> Landed:
        """One round: up to URL_TRIES fresh URLs while the vendor's says "expired"."""
        (name,) = job
        log = self._log.bind(**self._ids(name))
        for tries in range(1, URL_TRIES + 1):
            attempt = self.rows.attempt(job)
            try:
                landed = self._attempt(name)
            except ScorefetchError as exc:
                if getattr(exc, "kind", None) != Failure.EXPIRED or tries == URL_TRIES:
                    raise
                log.warning("delivery.failed", attempt=attempt, error=str(exc), will_retry=True)
            else:
                self._landed(name, landed, attempt)
                return landed
            finally:
                self._bytes.pop(name, None)
                self._names.pop(name, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _landed(self, name: str, landed: Landed, attempt: int) -> None:
        self.ledger.downloaded(
            self.vendor, name, landed.path, landed.size, landed.sha256, self.forward_to
        )
        fields = self._ids(name) | {
            "filename": landed.path.name,
            "path": str(landed.path),
            "bytes": landed.size,
            "sha256": landed.sha256,
            "elapsed_s": round(landed.elapsed_s, 3),
            "attempt": attempt,
        }
        self._log.info("delivery.downloaded", **fields)
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
        self.engine.wake()  # its uploads are due now
        try:
            self.verify(name)
        except Exception as exc:  # noqa: BLE001 - the file landed: a check must not undo that
            self._log.warning("delivery.verify_failed", **self._ids(name), error=describe(exc))

    def verify(self, name: str) -> None:
        """Compare a landed file with the vendor's own figures, once, when it gave any (its
        listing may come before or after the file): a mismatch is `delivery.suspect` — the
        file is kept and not retried (the vendor may count differently), a person is told."""
        row = self.ledger.get(self.vendor, name)
        if row is None or row.state != "downloaded" or row.suspect is not None or not row.path:
            return
        expected_bytes, expected_rows = self.ledger.expected(self.vendor, name)
        path = Path(row.path)
        if path.suffix.lower() not in (".csv", ".txt"):
            expected_rows = None  # rows mean nothing in a zip
        if (expected_bytes is None and expected_rows is None) or not path.is_file():
            return
        found = completeness.check(path, row.bytes or 0, expected_bytes, expected_rows)
        self.ledger.suspect(self.vendor, name, found.describe() if found else "")
        if found is None:
            return
        self._log.warning(
            "delivery.suspect",
            **(self._ids(name) | {"filename": path.name}),
            bytes=found.bytes,
            expected_bytes=found.expected_bytes,
            rows=found.rows,
            expected_rows=found.expected_rows,
            detail=found.describe(),
        )
        self.events.publish(
            Suspect(
                self.vendor,
                path.name,
                path,
                found.bytes,
                found.expected_bytes,
                found.rows,
                found.expected_rows,
            )
        )

    def progress_for(self, key: str, label: str | None = None) -> Progress:
        """The progress callback of one download: the terminal's bar (named `label`), and
        the bytes so far that `status` shows."""
        bar = self._progress(label or key) if self._progress else None
        self._names[key] = label or key

        def seen(done: int, total: int | None) -> None:
            self._bytes[key] = (done, total)
            if bar is not None:
                bar(done, total)

        return seen

    def _attempt(self, key: str) -> Landed:
        raise NotImplementedError

    def _ids(self, key: str) -> dict[str, Any]:
        """What names `key` in log lines."""
        return {"filename": key}

    def _filename(self, key: str) -> str:
        """The file name of `key` before it lands, when the key says it."""
        return ""

    def _product_key(self, key: str) -> str | None:
        """The sub-folder a vendor files `key` under, if any."""
        return None

    def failed(self, job: Job, outcome: Outcome) -> None:
        (name,) = job
        fields: dict[str, Any] = {
            "attempt": outcome.attempt,
            "error": outcome.error,
            "will_retry": outcome.will_retry,
            "kind": outcome.kind,
        }
        if outcome.retry_in_s is not None:
            fields["retry_in_s"] = outcome.retry_in_s
        if outcome.reason is not None:
            fields["reason"] = outcome.reason
        if outcome.kind == Failure.INTERNAL:
            fields["exc_info"] = outcome.exc  # the traceback, in this one line
        # A final failure is loud: nothing will fetch this file unless someone acts.
        level = self._log.warning if outcome.will_retry else self._log.error
        level("delivery.failed", **self._ids(name), **fields)
        try:
            row = self.ledger.get(self.vendor, name)
        except ScorefetchError:
            row = None
        filename = (row.filename if row else None) or name
        self.events.publish(
            DeliveryFailed(
                self.vendor,
                name,
                filename,
                outcome.attempt,
                outcome.error,
                outcome.kind,
                outcome.will_retry,
            )
        )

    def close(self, timeout: float) -> bool:
        """Stop taking work, let running downloads finish for up to `timeout` seconds (its
        own engine only: a shared one is the service's to close)."""
        return self.engine.close(timeout) if self._own_engine else True
