"""Encoura exports: poll, remember, download.

The trap: listing an export marks it Delivered at the vendor, so a listed uid is
written to the ledger in one transaction the moment the listing returns, before
any download. A row listed but not landed is retried with a fresh one-time URL
after any failure or restart; `sync` can also list `status=Delivered` to
recover exports delivered elsewhere but never landed here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from scorefetch.core import logs
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import Landed, fetch_to_file
from scorefetch.core.errors import Failure, RefusedError, ScorefetchError, VendorError
from scorefetch.core.events import CredentialsAccepted, CredentialsRefused
from scorefetch.core.filenames import name_from_url
from scorefetch.core.ledger import Ledger
from scorefetch.core.loops import Periodic
from scorefetch.encoura.client import KNOWN_PRODUCT_KEYS as KNOWN_PRODUCT_KEYS  # service.py's
from scorefetch.encoura.client import UNLISTED, Encoura, Export
from scorefetch.encoura.settings import EncouraConfig

# Positions encoura.pass.<key>.started / .completed (ISO, UTC); `status` reads them.
from scorefetch.encoura.source import LISTING_PASS as LISTING_PASS  # tests read it here

HISTORY = "encoura.history"  # positions: encoura.history.<key>: uids Delivered before we kept it
RECOVERY_MARGIN = timedelta(days=1)  # exports may be created well before they are listable


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


class ListingFailed(VendorError):
    """Some product keys could not be listed in a pass (the others were); `kind` is the
    first failure's."""

    def __init__(self, failures: list[tuple[str, ScorefetchError]]) -> None:
        first = failures[0][1]
        kind = first.kind if isinstance(first, VendorError) else Failure.TRANSIENT
        super().__init__("; ".join(f"{key}: {exc}" for key, exc in failures), kind=kind)
        self.failures = failures


class EncouraDeliveries(Deliveries[Encoura]):
    """Listed export uids → files in <download_dir>/encoura/<productKey>/<name>."""

    vendor = "encoura"

    @property
    def config(self) -> EncouraConfig:
        return self.client.config

    def _ids(self, key: str) -> dict[str, object]:
        return {"uid": key}

    def _product_key(self, key: str) -> str | None:
        row = self.ledger.get(self.vendor, key)
        return (row.product if row else None) or "unknown"

    def remember(self, exports: Iterable[Export], source: str) -> list[str]:
        """Write every listed uid to the ledger (one transaction), and the vendor's count of
        records where it gives one; returns the new ones."""
        exports = list(exports)
        new = self.ledger.claim_all(self.vendor, [(e.uid, e.product_key) for e in exports], source)
        for export in exports:
            if export.quantity is not None:
                self.ledger.expect(self.vendor, export.uid, None, export.quantity)
        return new

    def poll(self, stop: threading.Event | None = None) -> list[str]:
        """One pass: every product key is listed whatever the others answer, and each key's
        new exports are queued as soon as the ledger holds them. ListingFailed names the
        keys that failed (after all were tried)."""
        new: list[str] = []
        failures: list[tuple[str, ScorefetchError]] = []
        listed = 0
        for product_key in self.config.product_keys:
            if stop is not None and stop.is_set():
                break
            try:
                new += self.poll_key(product_key)
                listed += 1
            except ScorefetchError as exc:
                failures.append((product_key, exc))
                if isinstance(exc, VendorError) and exc.kind == Failure.AUTH:
                    # The account was refused: every other key would be too. Once per run,
                    # a person hears of it (the alarm); not once per pass.
                    self.events.publish(CredentialsRefused(self.vendor, str(exc)))
                    break
        if listed:
            self.events.publish(CredentialsAccepted(self.vendor))
        if failures:
            raise ListingFailed(failures)
        return new

    def poll_key(self, product_key: str) -> list[str]:
        """Recover what a cut-off pass consumed, list NotDelivered, remember, queue."""
        fresh = self._recover(product_key)
        files, listed_new = consume(self, product_key, "listing")
        self._log.info(
            "listing.completed", product_key=product_key, files=files, new=len(listed_new)
        )
        for uid in (*fresh, *listed_new, *self._look_again(product_key)):
            self.queue(uid)
        return [*fresh, *listed_new]

    def _look_again(self, product_key: str) -> list[str]:
        """Exports of this product deferred (listed, not generated yet): the Delivered
        listing tells their state now (an `isExpired` one then fails once, for good), and
        each is tried again on this pass, not only on its retry schedule."""
        waiting = []
        for (uid,) in self.rows.deferred():
            row = self.ledger.get(self.vendor, uid)
            if row is not None and row.product == product_key:
                waiting.append(uid)
        if waiting:
            for _page in self.client.pages(product_key, "Delivered"):
                pass  # the client notes what each page says of expiry
        return waiting

    def _recover(self, product_key: str) -> list[str]:
        """After a NotDelivered listing that was cut off (SIGKILL, power, an answer lost
        after the vendor committed) between the vendor's answer and the ledger's commit —
        this daemon's pass, or a `fetch`/`sync` in another process — the exports it listed
        are Delivered at the vendor and unknown here, however old: every Delivered export
        not in the ledger and not in the key's history (what was Delivered before our first
        listing of it) is remembered. A key listed before the history was kept (an older
        release) falls back to the creation date: since the last completed pass, less a
        margin."""
        started = self.ledger.position(f"{LISTING_PASS}.{product_key}.started")
        completed = self.ledger.position(f"{LISTING_PASS}.{product_key}.completed")
        if started is None or (completed is not None and completed >= started):
            return []
        history = self._history(product_key)
        delivered = self.client.list_exports(product_key, "Delivered")
        if history is not None:
            wanted = [e for e in delivered if e.uid not in history]
            since = None
        else:
            since = datetime.fromisoformat(completed or started) - RECOVERY_MARGIN
            wanted = [e for e in delivered if created_since(e, since)]
        fresh = self.remember(wanted, "recovery")
        self._log.info(
            "listing.recovered",
            product_key=product_key,
            since=since.isoformat() if since else "history",
            files=len(delivered),
            new=len(fresh),
        )
        return fresh

    def _history(self, product_key: str) -> set[str] | None:
        value = self.ledger.position(f"{HISTORY}.{product_key}")
        return set(json.loads(value)) if value is not None else None

    def _attempt(self, uid: str) -> Landed:
        row = self.ledger.get(self.vendor, uid)
        product_key = (row.product if row else None) or UNLISTED
        if product_key not in {*self.config.product_keys, *KNOWN_PRODUCT_KEYS, UNLISTED}:
            raise RefusedError(f"product key {product_key!r} is not a configured one")
        try:
            url = self.client.download_url(uid)  # one-time: used at once, never twice
            name = name_from_url(url)
            return fetch_to_file(
                self.client.session,
                url,
                self.folder / product_key,  # a configured key: checked at config load
                name,
                hosts=self.config.download_hosts,
                deadline_s=self.config.download_timeout,
                progress=self.progress_for(uid, name),
                max_size=self.config.max_file_size,
                root=self.folder,
            )
        except VendorError as exc:
            if exc.kind != Failure.NOT_FOUND:
                raise
            # Listed (and so Delivered at the vendor) but not there yet: deferred, not
            # burnt. Looked at again on every poll until it is generated or expires.
            raise VendorError(
                f"export {uid} ({product_key}) is not generated yet ({exc}); looked at again "
                "on every poll",
                kind=Failure.DEFERRED,
                status=exc.status,
                reason="not_generated",
            ) from None


def consume(deliveries: EncouraDeliveries, product_key: str, source: str) -> tuple[int, list[str]]:
    """List a product's NotDelivered exports — which marks them Delivered at the vendor —
    remembering each page before asking for the next, between `started` and `completed`
    marks so a listing cut off in any process (the daemon, `fetch`, `sync`) is recovered
    by the daemon's next pass. A key's first listing ever first keeps its history (the
    uids Delivered before it), so recovery can tell ours from the archive whatever their
    age (a ledger of an older release keeps it at its first listing with nothing to
    recover). Returns (exports listed, the new ones)."""
    ledger, client = deliveries.ledger, deliveries.client
    started_key = f"{LISTING_PASS}.{product_key}.started"
    started = ledger.position(started_key)
    completed = ledger.position(f"{LISTING_PASS}.{product_key}.completed")
    settled = started is None or (completed is not None and completed >= started)
    if settled and ledger.position(f"{HISTORY}.{product_key}") is None:
        before = sorted({e.uid for page in client.pages(product_key, "Delivered") for e in page})
        ledger.set_position(f"{HISTORY}.{product_key}", json.dumps(before))
    started = datetime.now(UTC).isoformat()
    ledger.set_position(started_key, started)
    files, new = 0, []
    for page in client.pages(product_key, "NotDelivered"):
        files += len(page)
        new += deliveries.remember(page, source)  # each page before the next
    ledger.set_position(f"{LISTING_PASS}.{product_key}.completed", started)
    return files, new


def recover(deliveries: EncouraDeliveries, since: datetime) -> list[str]:
    """Exports created since `since`, Delivered or not, that have not landed here: listed,
    remembered (each page before the next is asked for), and returned with every other
    unfinished row (for `sync`)."""
    client = deliveries.client
    for product_key in deliveries.config.product_keys:
        for page in client.pages(product_key, "Delivered"):
            deliveries.remember([e for e in page if created_since(e, since)], "sync")
        consume(deliveries, product_key, "listing")
    return [row.key for row in deliveries.ledger.unfinished(deliveries.vendor)]


def locate(deliveries: EncouraDeliveries, uids: list[str]) -> list[str]:
    """Claim export `uids` for a one-off fetch and return those not downloaded yet. Their
    product key comes from the Delivered listing of every product first (listing those
    consumes nothing); only then from NotDelivered listings of the configured product keys,
    whose every export is remembered (the poller would take them anyway). Exports of other
    products are never listed NotDelivered: that would take them from whoever else uses
    them."""
    ledger, client = deliveries.ledger, deliveries.client
    unknown = {uid for uid in uids if ledger.get(deliveries.vendor, uid) is None}
    if unknown:
        for page in client.pages(None, "Delivered"):
            found = [e for e in page if e.uid in unknown]
            deliveries.remember(found, "fetch")
            unknown -= {e.uid for e in found}
            if not unknown:
                break
    for product_key in deliveries.config.product_keys:
        if not unknown:
            break
        _, new = consume(deliveries, product_key, "fetch")
        unknown -= set(new) | {uid for uid in unknown if ledger.get(deliveries.vendor, uid)}
    if unknown:
        raise ScorefetchError(
            f"encoura: no export with uid {', '.join(sorted(unknown))} among the Delivered "
            "exports of every product and the NotDelivered ones of encoura.product_keys "
            "(an export of another product is fetched once it is Delivered, or after its "
            "key is added to encoura.product_keys)"
        )
    for uid in uids:
        row = ledger.get(deliveries.vendor, uid)
        if row is not None and row.state == "failed":
            ledger.claim(deliveries.vendor, uid, row.filename, "fetch", row.product)
    return [uid for uid in uids if _state(ledger, uid) != "downloaded"]


def _state(ledger: Ledger, uid: str) -> str | None:
    row = ledger.get(EncouraDeliveries.vendor, uid)
    return row.state if row else None


def start_poller(
    deliveries: EncouraDeliveries, stop: threading.Event, after: threading.Event | None = None
) -> Periodic:
    """Poll every poll_interval on a supervised thread until `stop` is set."""
    interval = deliveries.config.poll_interval
    log = logs.get(vendor=deliveries.vendor)

    def failed(exc: ScorefetchError, failures: int) -> float:
        errors = exc.failures if isinstance(exc, ListingFailed) else [(None, exc)]
        # A refused API key or password is not cured by hammering the vendor.
        slow = all(
            isinstance(e, VendorError) and e.kind in (Failure.AUTH, Failure.FATAL)
            for _, e in errors
        )
        wait = interval if slow else min(interval, 30.0 * 2 ** min(failures, 6))
        for product_key, error in errors:
            (log.error if slow else log.warning)(
                "listing.failed", product_key=product_key, error=str(error), retry_in_s=wait
            )
        return wait

    return Periodic(
        "encoura-poller",
        lambda: deliveries.poll(stop),
        stop,
        interval=interval,
        failed=failed,
        after=after,
    ).start()
