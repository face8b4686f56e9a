"""Prometheus metrics: scraped over real HTTP from the real daemon and read from the
textfile, both parsed with prometheus_client's own parser."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scorefetch.config import MetricsConfig
from scorefetch.core.errors import Failure
from scorefetch.core.events import DeliveryFailed, Events, ForwardUploaded, Skipped
from scorefetch.core.ledger import Ledger
from scorefetch.observers.metrics import Metrics
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.ports import free_port
from tests.support import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample as {(name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    yield ledger
    ledger.close()


def test_series_exist_from_the_start_and_count_events(tmp_path: Path, ledger: Ledger) -> None:
    """Every vendor's counters exist at 0 before anything happens (rate() and alerts work on
    a quiet day); events count; pending rows are read from the ledger at scrape time."""
    metrics = Metrics(
        MetricsConfig(textfile=tmp_path / "m.prom"),
        ledger,
        ["collegeboard", "encoura"],
        imap=True,
        destinations=["slate"],
        backlog=lambda: {"slate": 3},
    )
    before = parse(metrics.exposition().decode())
    for vendor in ("collegeboard", "encoura"):
        for outcome in ("downloaded", "failed", "skipped"):
            assert value(before, "scorefetch_deliveries_total", vendor=vendor, outcome=outcome) == 0
        assert value(before, "scorefetch_pending_deliveries", vendor=vendor) == 0
        assert value(before, "scorefetch_auth_failing", vendor=vendor) == 0
    assert value(before, "scorefetch_imap_connected") == 0
    assert value(before, "scorefetch_forward_backlog", destination="slate") == 3
    assert value(before, "scorefetch_forward_total", destination="slate", outcome="uploaded") == 0

    events = Events()
    events.subscribe(metrics)
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    events.publish(
        DeliveryFailed("collegeboard", "a.csv", "a.csv", 1, "404", Failure.NOT_FOUND, True)
    )
    events.publish(Skipped("collegeboard", "a.txt", "format"))
    events.publish(ForwardUploaded("slate", "encoura", "b", tmp_path / "b", "/in/b", 1, "x", 0.1))
    after = parse(metrics.exposition().decode())
    assert value(after, "scorefetch_deliveries_total", vendor="collegeboard", outcome="failed") == 1
    assert (
        value(after, "scorefetch_deliveries_total", vendor="collegeboard", outcome="skipped") == 1
    )
    assert value(after, "scorefetch_pending_deliveries", vendor="collegeboard") == 1
    assert value(after, "scorefetch_forward_total", destination="slate", outcome="uploaded") == 1


def test_textfile_is_replaced_whole_and_readable_by_node_exporter(
    tmp_path: Path, ledger: Ledger
) -> None:
    """The textfile is written 0644 (node_exporter runs as another user) through a temporary
    name, so a reader never sees half a file; an unwritable folder is logged, not fatal."""
    target = tmp_path / "node-exporter" / "scorefetch.prom"
    target.parent.mkdir()
    metrics = Metrics(MetricsConfig(textfile=target), ledger, ["collegeboard"], imap=False)
    metrics.write_textfile()
    assert target.stat().st_mode & 0o777 == 0o644
    assert (
        value(parse(target.read_text()), "scorefetch_pending_deliveries", vendor="collegeboard")
        == 0
    )
    assert [p.name for p in target.parent.iterdir()] == ["scorefetch.prom"]
    target.parent.chmod(0o500)
    try:
        metrics.write_textfile()  # root ignores the mode; either way it must not raise
    finally:
        target.parent.chmod(0o700)


def test_config_listen_forms() -> None:
    """`listen` takes HOST:PORT, [V6]:PORT or a bare port (loopback); textfile must end .prom."""
    assert MetricsConfig(listen="9464").address == ("127.0.0.1", 9464)
    assert MetricsConfig(listen="192.0.2.7:9100").address == ("192.0.2.7", 9100)
    assert MetricsConfig(listen="[::1]:9464").address == ("::1", 9464)
    with pytest.raises(ValueError, match="HOST:PORT"):
        MetricsConfig(listen="localhost:http")
    with pytest.raises(ValueError, match=r"\.prom"):
        MetricsConfig(textfile=Path("/var/lib/node/scorefetch.txt"))
    with pytest.raises(ValueError, match="listen"):
        MetricsConfig()


# --- end to end: the real daemon, scraped over HTTP ---


@pytest.fixture
def imap_server(pymap_server: PymapServer) -> PymapServer:
    """Metrics do not depend on the IMAP server: pymap only."""
    return pymap_server


@pytest.mark.e2e
def test_daemon_serves_metrics_over_http_and_textfile(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: PymapServer,
    imap_folder: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """A real scrape after a landed file shows it counted, its bytes, its notification → file
    time in the histogram, the time of the last delivery, IMAP connected and nothing
    pending; the textfile says the same."""
    port = free_port()
    textfile = tmp_path / "scorefetch.prom"
    path = write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder)
    with path.open("a") as out:
        out.write(f"metrics:\n  listen: 127.0.0.1:{port}\n  textfile: {textfile}\n  interval: 1s\n")
    daemon = start_daemon()
    daemon.wait_event("metrics.listening", address=f"127.0.0.1:{port}")
    data = b"id,score\n" * 1000
    cb_sim.publish("scores_1.csv", data)
    cb_sim.publish("scores_1.txt", data)
    before = time.time()
    imap_server.deliver(mail.notification("scores_1.csv"), imap_folder)
    imap_server.deliver(mail.notification("scores_1.txt"), imap_folder)
    daemon.wait_event("delivery.downloaded", filename="scores_1.csv")
    daemon.wait_event("delivery.skipped", filename="scores_1.txt")

    cb = {"vendor": "collegeboard"}

    def scrape() -> Samples:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        return parse(response.text)

    # The log line comes just before the event is published: the counter may be a moment late.
    wait_until(lambda: value(scrape(), "scorefetch_deliveries_total", **cb, outcome="skipped") == 1)
    scraped = scrape()
    assert value(scraped, "scorefetch_deliveries_total", **cb, outcome="downloaded") == 1
    assert value(scraped, "scorefetch_deliveries_total", **cb, outcome="skipped") == 1
    assert value(scraped, "scorefetch_delivery_bytes_total", **cb) == len(data)
    assert value(scraped, "scorefetch_notification_to_file_seconds_count") == 1
    latency = value(scraped, "scorefetch_notification_to_file_seconds_sum") or -1
    assert 0 <= latency < 10
    last = value(scraped, "scorefetch_last_delivery_timestamp_seconds", **cb) or 0
    assert before - 1 <= last <= time.time() + 1
    assert value(scraped, "scorefetch_imap_connected") == 1
    assert value(scraped, "scorefetch_pending_deliveries", **cb) == 0

    def textfile_counted() -> bool:
        text = textfile.read_text() if textfile.exists() else ""
        got = parse(text) if text else {}
        return value(got, "scorefetch_deliveries_total", **cb, outcome="downloaded") == 1

    wait_until(textfile_counted, timeout=10)
    assert daemon.stop() == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
