"""Prometheus metrics: counters from the delivery events, gauges read from the ledger at
scrape time, served over HTTP (`metrics.listen`) and/or written for node_exporter's
textfile collector (`metrics.textfile`), in the text format of `exposition.py`.

Imported only when `metrics:` is configured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from scorefetch.config import MetricsConfig
from scorefetch.core import files, logs
from scorefetch.core.errors import ScorefetchError
from scorefetch.core.events import (
    DeliveryFailed,
    Downloaded,
    Event,
    ForwardFailed,
    ForwardUploaded,
    Skipped,
    Suspect,
)
from scorefetch.core.ledger import Ledger
from scorefetch.observers.alarms import FAILING, watcher_key
from scorefetch.observers.exposition import Counter, Family, GaugeFamily, Histogram, Registry
from scorefetch.observers.listener import MetricsListener

# Notification → file: seconds on loopback, minutes on a retry, hours after an outage.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
TEXTFILE_MIN_GAP_S = 1.0  # events rewrite the textfile at most this often
Backlog = Callable[[], Mapping[str, int]]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class _LedgerCollector:
    """Gauges that are state, not events: read from the ledger at each scrape, so they are
    right after a restart too."""

    def __init__(
        self, ledger: Ledger, vendors: Iterable[str], imap: bool, backlog: Backlog | None
    ) -> None:
        self._ledger = ledger
        self._vendors = tuple(vendors)
        self._imap = imap
        self._backlog = backlog
        self._started = time.time()

    def __call__(self) -> Iterable[Family]:
        pending = GaugeFamily(
            "scorefetch_pending_deliveries",
            "Files announced but not landed yet (pending or retrying)",
            labels=["vendor"],
        )
        counts = self._ledger.pending_counts()
        for vendor in sorted({*self._vendors, *counts}):
            pending.add_metric([vendor], counts.get(vendor, 0))
        yield pending
        last = GaugeFamily(
            "scorefetch_last_delivery_timestamp_seconds",
            "When the vendor's latest file landed (Unix time)",
            labels=["vendor"],
        )
        for vendor, at in sorted(self._ledger.last_downloaded().items()):
            last.add_metric([vendor], _epoch(at))
        yield last
        watcher = self._ledger.watcher()
        auth = GaugeFamily(
            "scorefetch_auth_failing",
            "1 while a vendor (or `imap`) refuses the credentials, from the first refusal to "
            "the next success",
            labels=["vendor"],
        )
        for vendor in [*self._vendors, *(["imap"] if self._imap else [])]:
            value, _ = watcher.get(watcher_key(vendor), ("ok", ""))
            auth.add_metric([vendor], 1 if value.startswith(FAILING) else 0)
        yield auth
        if self._imap:
            value, at = watcher.get("connected", ("no", ""))
            # A "yes" left by an earlier run (killed while connected) is not this run's.
            current = bool(at) and _epoch(at) >= self._started - 1
            yield GaugeFamily(
                "scorefetch_imap_connected",
                "1 while the IMAP folder is selected and watched",
                value=1 if value == "yes" and current else 0,
            )
        if self._backlog is not None:
            backlog = GaugeFamily(
                "scorefetch_forward_backlog",
                "Landed files not yet uploaded to the destination",
                labels=["destination"],
            )
            for destination, n in sorted(self._backlog().items()):
                backlog.add_metric([destination], n)
            yield backlog


class Metrics:
    """An events listener that counts, plus the HTTP endpoint and the textfile writer."""

    def __init__(
        self,
        config: MetricsConfig,
        ledger: Ledger,
        vendors: Iterable[str],
        *,
        imap: bool,
        destinations: Iterable[str] = (),
        backlog: Backlog | None = None,
    ) -> None:
        self.config = config
        self.registry = Registry()
        vendors = tuple(vendors)
        self._ledger = ledger
        self.deliveries = Counter(
            "scorefetch_deliveries",
            "Delivery outcomes: downloaded, failed (one per failed round), skipped",
            ["vendor", "outcome"],
        )
        self.bytes = Counter("scorefetch_delivery_bytes", "Bytes of files landed", ["vendor"])
        self.latency = Histogram(
            "scorefetch_notification_to_file_seconds",
            "From the announcement (mail, listing) to the file under its final name",
            buckets=LATENCY_BUCKETS,
        )
        self.forwards = Counter(
            "scorefetch_forward",
            "Forward outcomes per destination: uploaded, failed",
            ["destination", "outcome"],
        )
        self.suspect = Counter(
            "scorefetch_suspect_files",
            "Files landed that disagree with the vendor's own size or record count",
            ["vendor"],
        )
        for metric in (self.deliveries, self.bytes, self.latency, self.forwards, self.suspect):
            self.registry.register(metric.collect)
        for vendor in vendors:  # every series exists from the start, at 0: rate() works
            self.bytes.labels(vendor)
            self.suspect.labels(vendor)
            for outcome in ("downloaded", "failed", "skipped"):
                self.deliveries.labels(vendor, outcome)
        for destination in destinations:
            for outcome in ("uploaded", "failed"):
                self.forwards.labels(destination, outcome)
        self.registry.register(_LedgerCollector(ledger, vendors, imap, backlog))
        self._server: MetricsListener | None = None
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._writer: threading.Thread | None = None
        self._last_error: str | None = None
        self._log = logs.get()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Downloaded):
            self.deliveries.labels(event.vendor, "downloaded").inc()
            self.bytes.labels(event.vendor).inc(event.size)
            row = self._ledger.get(event.vendor, event.key)
            announced = _epoch(row.created_at) if row and row.created_at else None
            if announced is not None:
                self.latency.observe(max(0.0, time.time() - announced))
        elif isinstance(event, DeliveryFailed):
            self.deliveries.labels(event.vendor, "failed").inc()
        elif isinstance(event, Skipped):
            self.deliveries.labels(event.vendor, "skipped").inc()
        elif isinstance(event, ForwardUploaded):
            self.forwards.labels(event.destination, "uploaded").inc()
        elif isinstance(event, ForwardFailed):
            self.forwards.labels(event.destination, "failed").inc()
        elif isinstance(event, Suspect):
            self.suspect.labels(event.vendor).inc()
        self._dirty.set()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return self.registry.exposition()

    def start(self) -> None:
        """Listen and/or start writing the textfile; ScorefetchError when the port is taken."""
        address = self.config.address
        if address is not None:
            host, port = address
            try:
                self._server = MetricsListener(host, port, self.exposition).start()
            except OSError as exc:
                raise ScorefetchError(
                    f"metrics.listen {self.config.listen}: {exc.strerror or exc}"
                ) from None
            self._log.info("metrics.listening", address=f"{host}:{port}")
        if self.config.textfile is not None:
            self.write_textfile()
            self._writer = threading.Thread(
                target=self._write_loop, name="metrics-textfile", daemon=True
            )
            self._writer.start()

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(self.config.interval)
            if self._stop.is_set():
                return
            self._dirty.clear()
            self.write_textfile()
            self._stop.wait(TEXTFILE_MIN_GAP_S)

    def write_textfile(self) -> None:
        """Replace the textfile atomically (node_exporter must never read half of one) with
        a file of our own (files.replace_file: never through a planted symlink); 0644, since
        node_exporter runs as another user. A failure is logged once."""
        path = self.config.textfile
        assert path is not None
        try:
            files.replace_file(path, self.exposition(), 0o644)
        except (OSError, ScorefetchError) as exc:  # a full disk, a folder not ours; the ledger
            error = str(exc)
            if error != self._last_error:
                self._log.warning("metrics.write_failed", path=str(path), error=error)
            self._last_error = error
            return
        self._last_error = None

    def close(self) -> None:
        """Stop serving; write the textfile a last time."""
        self._stop.set()
        self._dirty.set()
        if self._writer is not None:
            self._writer.join(timeout=5)
            self.write_textfile()
        if self._server is not None:
            self._server.close()
