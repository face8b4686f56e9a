"""The listing is the truth: every `poll_interval` (and at start-up) ask College Board
what it posted since the last good listing, and download what the ledger lacks.

An email may be lost, arrive before its file exists, or arrive while the daemon
is down for a week; reconciliation catches all three.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from scorefetch.collegeboard.client import ListedFile
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.core import logs
from scorefetch.core.errors import Failure, RefusedError, ScorefetchError, VendorError
from scorefetch.core.events import CredentialsAccepted, CredentialsRefused
from scorefetch.core.filenames import check_name
from scorefetch.core.loops import Periodic

CURSOR = "collegeboard.last_listing"  # start time of the last listing that succeeded


def listing_since(
    last_good: datetime | None, now: datetime, lookback: timedelta, overlap: timedelta, tz: str
) -> datetime:
    """`fromDate` for the next listing: the last good one minus an overlap (clocks and the
    vendor's posting lag differ), or `lookback` ago the first time; in the vendor's zone."""
    base = last_good - overlap if last_good is not None else now - lookback
    return base.astimezone(ZoneInfo(tz))


def missing(deliveries: CollegeBoardDeliveries, listed: list[ListedFile]) -> list[str]:
    """Names in a listing that are plain, of a wanted format, and not landed: new ones,
    ones waiting on a retry (listed: posted now — tried at once), and ones given up for a
    reason the listing may cure (not found, expired …); not ones refused for good (a URL
    to a host not allowed, too large, the vendor's final no): those would be refused, and
    a person told, again at every listing."""
    log = logs.get(vendor=deliveries.vendor)
    names: list[str] = []
    for entry in listed:
        try:
            name = check_name(entry.name)
        except RefusedError as exc:
            log.warning("listing.refused", filename=entry.name, error=str(exc))
            continue
        if not deliveries.wants(name) or name in names:
            continue
        row = deliveries.ledger.get(deliveries.vendor, name)
        if (
            row is None
            or row.state == "retrying"
            or (row.state == "failed" and row.kind not in (Failure.REFUSED, Failure.FATAL))
        ):
            names.append(name)
    return names


def expect(deliveries: CollegeBoardDeliveries, listed: list[ListedFile]) -> None:
    """Remember what the listing says each known file holds (`fileSize`, `recordCount`),
    and check the ones already landed against it."""
    for entry in listed:
        if entry.size is None and entry.records is None:
            continue
        deliveries.ledger.expect(deliveries.vendor, entry.name, entry.size, entry.records)
        deliveries.verify(entry.name)


class Reconciler:
    """Listing passes: `run_once`, or `start` them on a supervised periodic thread."""

    def __init__(
        self,
        deliveries: CollegeBoardDeliveries,
        lookback_days: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.deliveries = deliveries
        self.config = deliveries.config
        self._lookback = timedelta(days=lookback_days)
        self._clock = clock
        self._log = logs.get(vendor=deliveries.vendor)

    def run_once(self) -> list[str]:
        """One listing pass; announces what is missing and returns those names."""
        ledger = self.deliveries.ledger
        cursor = ledger.position(CURSOR)
        last_good = datetime.fromisoformat(cursor) if cursor else None
        started = self._clock()
        since = listing_since(
            last_good,
            started,
            self._lookback,
            timedelta(seconds=self.config.listing_overlap),
            self.config.timezone,
        )
        events = self.deliveries.events
        try:
            listed = self.deliveries.client.list_files(since)
        except VendorError as exc:
            if exc.kind == Failure.AUTH:  # no mail needed for a person to hear of it
                events.publish(CredentialsRefused(self.deliveries.vendor, str(exc)))
            raise
        events.publish(CredentialsAccepted(self.deliveries.vendor))
        new = missing(self.deliveries, listed)
        self.deliveries.announce(new, source="listing")
        expect(self.deliveries, listed)
        ledger.set_position(CURSOR, started.isoformat())
        self._log.info(
            "listing.completed", since=since.isoformat(), files=len(listed), new=len(new)
        )
        return new

    def start(self, stop: threading.Event, after: threading.Event | None = None) -> Periodic:
        """A pass now (or once `after` is set), then one every poll_interval, on a
        supervised thread; a failed pass is retried sooner."""
        return Periodic(
            "reconciliation",
            self.run_once,
            stop,
            interval=self.config.poll_interval,
            failed=self._failed,
            after=after,
        ).start()

    def _failed(self, exc: ScorefetchError, failures: int) -> float:
        wait = float(min(self.config.poll_interval, 60.0 * 2.0 ** min(failures, 6)))
        self._log.warning("listing.failed", error=str(exc), retry_in_s=wait)
        return wait
