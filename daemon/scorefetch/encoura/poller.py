"""Encoura exports: poll, remember, download.

The trap: listing an export marks it Delivered at the vendor, so a listed uid is
written to the ledger in one transaction the moment the listing returns, before
any download. A row listed but not landed is retried with a fresh one-time URL
after any failure or restart; `sync` can also list `status=Delivered` to
recover exports delivered elsewhere but never landed here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from scorefetch.core import logs
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import Landed, Progress, fetch_to_file
from scorefetch.core.errors import Failure, RefusedError, ScorefetchError, VendorError
from scorefetch.core.events import Events
from scorefetch.core.filenames import name_from_url
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.client import KNOWN_PRODUCT_KEYS as KNOWN_PRODUCT_KEYS  # service.py's
from scorefetch.encoura.client import UNLISTED, Encoura, Export


def created_since(export: Export, since: datetime) -> bool:
    """Whether the export was created at or after `since` (epoch ms or ISO; unknown: yes)."""
    value = export.created
    try:
        created = (
            datetime.fromtimestamp(int(value) / 1000, UTC)
            if value.isdigit()
            else datetime.fromisoformat(value.replace("Z", "+00:00"))
        )
    except (ValueError, OverflowError):
        return True
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created >= since


class EncouraDeliveries(Deliveries):
    """Listed export uids → files in <download_dir>/encoura/<productKey>/<name>."""

    vendor = "encoura"

    def __init__(
        self,
        client: Encoura,
        ledger: Ledger,
        download_dir: Path,
        progress: Callable[[str], Progress | None] | None = None,
        events: Events | None = None,
    ) -> None:
        self.client = client
        self.config = client.config
        super().__init__(
            ledger,
            download_dir,
            max_parallel=self.config.max_parallel,
            retry_schedule=self.config.retry_schedule,
            progress=progress,
            events=events,
        )

    def _ids(self, key: str) -> dict[str, object]:
        return {"uid": key}

    def _product_key(self, key: str) -> str | None:
        row = self.ledger.get(self.vendor, key)
        return (row.product if row else None) or "unknown"

    def remember(self, exports: Iterable[Export], source: str) -> list[str]:
        """Write every listed uid to the ledger (one transaction); returns the new ones."""
        return self.ledger.claim_all(self.vendor, [(e.uid, e.product_key) for e in exports], source)

    def poll(self) -> list[str]:
        """List NotDelivered exports per product key, remember them, queue the new ones."""
        new: list[str] = []
        for product_key in self.config.product_keys:
            listed = self.client.list_exports(product_key, "NotDelivered")
            fresh = self.remember(listed, "listing")  # before anything else can fail
            self._log.info(
                "listing.completed", product_key=product_key, files=len(listed), new=len(fresh)
            )
            new += fresh
        for uid in new:
            self._submit(uid)
        return new

    def _attempt(self, uid: str) -> Landed:
        row = self.ledger.get(self.vendor, uid)
        product_key = (row.product if row else None) or UNLISTED
        if product_key not in {*self.config.product_keys, *KNOWN_PRODUCT_KEYS, UNLISTED}:
            raise RefusedError(f"product key {product_key!r} is not a configured one")
        url = self.client.download_url(uid)  # one-time: used at once, never twice
        name = name_from_url(url)
        progress = self._progress(name) if self._progress else None
        return fetch_to_file(
            self.client.session,
            url,
            self.folder / product_key,  # a configured key: checked when the config was loaded
            name,
            hosts=self.config.download_hosts,
            deadline_s=self.config.download_timeout,
            progress=progress,
            max_size=self.config.max_file_size,
            root=self.folder,
        )


def recover(deliveries: EncouraDeliveries, since: datetime) -> list[str]:
    """Exports created since `since`, Delivered or not, that have not landed here: listed,
    remembered, and returned with every other unfinished row (for `sync`)."""
    for product_key in deliveries.config.product_keys:
        delivered = deliveries.client.list_exports(product_key, "Delivered")
        deliveries.remember([e for e in delivered if created_since(e, since)], "sync")
        deliveries.remember(deliveries.client.list_exports(product_key, "NotDelivered"), "listing")
    return [row.key for row in deliveries.ledger.unfinished(deliveries.vendor)]


def locate(deliveries: EncouraDeliveries, uids: list[str]) -> list[str]:
    """Claim export `uids` for a one-off fetch and return those not downloaded yet; their
    product key comes from a listing (Delivered first: it changes nothing; NotDelivered
    ones are all remembered)."""
    ledger = deliveries.ledger
    unknown = {uid for uid in uids if ledger.get(deliveries.vendor, uid) is None}
    for status in ("Delivered", "NotDelivered"):
        if not unknown:
            break
        listed = deliveries.client.list_exports(None, status)
        found = [e for e in listed if e.uid in unknown]
        deliveries.remember(listed if status == "NotDelivered" else found, "fetch")
        unknown -= {e.uid for e in found}
    if unknown:
        raise ScorefetchError(f"encoura: no export with uid {', '.join(sorted(unknown))}")
    for uid in uids:
        row = ledger.get(deliveries.vendor, uid)
        if row is not None and row.state == "failed":
            ledger.claim(deliveries.vendor, uid, row.filename, "fetch", row.product)
    return [uid for uid in uids if _state(ledger, uid) != "downloaded"]


def _state(ledger: Ledger, uid: str) -> str | None:
    row = ledger.get(EncouraDeliveries.vendor, uid)
    return row.state if row else None


class EncouraPoller:
    """Polls on its own thread every poll_interval until `stop` is set."""

    def __init__(self, deliveries: EncouraDeliveries, stop: threading.Event) -> None:
        self.deliveries = deliveries
        self._stop = stop
        self._log = logs.get(vendor="encoura")

    def run(self) -> None:
        failures = 0
        interval = self.deliveries.config.poll_interval
        while not self._stop.is_set():
            try:
                self.deliveries.poll()
                failures = 0
                wait = interval
            except ScorefetchError as exc:
                failures += 1
                # A refused API key or password is not cured by hammering the vendor.
                slow = isinstance(exc, VendorError) and exc.kind in (Failure.AUTH, Failure.FATAL)
                wait = interval if slow else min(interval, 30.0 * 2 ** min(failures, 6))
                (self._log.error if slow else self._log.warning)(
                    "listing.failed", error=str(exc), retry_in_s=wait
                )
            self._stop.wait(wait)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="encoura-poller", daemon=True)
        thread.start()
        return thread
