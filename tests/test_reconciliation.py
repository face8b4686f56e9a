"""Reconciliation through the listing, token auth, and Authentication-Results trust."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from scorefetch.collegeboard.client import CollegeBoard, format_from_date
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.notifications import Notification, Rejection, read_notification
from scorefetch.collegeboard.reconciliation import Reconciler, listing_since
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess
from tests.support import LogLines

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_from_date_format_has_no_colon_in_offset() -> None:
    """fromDate is yyyy-MM-ddTHH:mm:ss±hhmm; the Z form is never produced."""
    since = listing_since(None, NOW, timedelta(days=14), timedelta(hours=1), "America/New_York")
    assert format_from_date(since) == "2026-11-08T07:00:00-0500"
    utc = listing_since(None, NOW, timedelta(days=1), timedelta(0), "UTC")
    assert format_from_date(utc) == "2026-11-21T12:00:00+0000"


def test_since_is_last_good_listing_minus_overlap() -> None:
    """After a good listing the next one starts an overlap before it, not lookback_days ago."""
    since = listing_since(
        NOW - timedelta(hours=2), NOW, timedelta(days=14), timedelta(hours=1), "UTC"
    )
    assert since == NOW - timedelta(hours=3)


def pipeline(
    sim: CollegeBoardSimulator, tmp_path: Path, **overrides: Any
) -> CollegeBoardDeliveries:
    config = CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "download_hosts": [sim.download_host],
            "retry_schedule": [0.2],
            **overrides,
        }
    )
    return CollegeBoardDeliveries(
        CollegeBoard(config, build_session()),
        Ledger(tmp_path / "ledger.sqlite3"),
        tmp_path / "files",
    )


def test_pass_downloads_only_wanted_missing_files(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """A pass lands the csv files posted in the window the ledger lacks; twins and old
    files are left; a second pass finds nothing new and makes no file request."""
    old = datetime.now(UTC) - timedelta(days=30)
    cb_sim.publish("4300_20261001_000000.csv", b"old", posted_at=old)
    for stem in ("4300_20261121_000001", "4300_20261121_000002"):
        cb_sim.publish(f"{stem}.csv", stem.encode())
        cb_sim.publish(f"{stem}.txt", b"fixed")
    cb_sim.publish("../evil.csv", b"x")
    deliveries = pipeline(cb_sim, tmp_path, auth="token")
    reconciler = Reconciler(deliveries, lookback_days=14)
    assert reconciler.run_once() == ["4300_20261121_000001.csv", "4300_20261121_000002.csv"]
    assert deliveries.wait_idle(30)
    assert reconciler.run_once() == []
    deliveries.close(5)
    landed = sorted(p.name for p in (tmp_path / "files" / "collegeboard").iterdir())
    assert landed == ["4300_20261121_000001.csv", "4300_20261121_000002.csv"]
    stats = cb_sim.stats
    assert sorted(stats.file_url_names) == landed and stats.list_calls == 2  # 4 workers: any order
    assert stats.login_calls == 1  # token mode: one login for every call


def test_token_mode_logs_in_again_after_expiry(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """`auth: token` reuses its token and logs in again once the vendor answers 401."""
    cb_sim.token_lifetime = 0.2
    for name in ("a.csv", "b.csv"):
        cb_sim.publish(name, name.encode())
    deliveries = pipeline(cb_sim, tmp_path, auth="token")
    assert deliveries.deliver("a.csv") is not None
    threading.Event().wait(0.3)
    assert deliveries.deliver("b.csv") is not None
    deliveries.close(5)
    assert cb_sim.stats.login_calls == 2


def test_wrong_password_is_auth_failure_without_download(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """A refused password fails the file as `auth` and never reaches the bucket."""
    cb_sim.publish("a.csv", b"x")
    deliveries = pipeline(cb_sim, tmp_path, password="wrong-password")
    deliveries.ledger.claim("collegeboard", "a.csv", "a.csv", "fetch")
    assert deliveries.deliver("a.csv") is None
    deliveries.close(5)
    row = deliveries.ledger.get("collegeboard", "a.csv")
    assert row is not None and row.state == "retrying" and "401" in (row.error or "")
    assert cb_sim.stats.downloads_started == 0


AR = "Authentication-Results"


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({AR: "mx.example.edu; dkim=pass header.d=collegeboard.org header.s=s1"}, True),
        (
            {AR: "mx.example.edu 1; spf=pass; dmarc=pass (p=reject) header.from=collegeboard.org"},
            True,
        ),
        ({AR: "MX.EXAMPLE.EDU; dkim=pass header.i=@e.collegeboard.org"}, True),
        ({AR: "mx.example.edu; dkim=fail header.d=collegeboard.org"}, False),
        ({AR: "mx.example.edu; dkim=pass header.d=evil.example"}, False),
        ({AR: "mx.example.edu; dkim=pass header.d=evilcollegeboard.org"}, False),
        ({AR: "mx.example.edu; dmarc=pass header.from=collegeboard.org.evil.example"}, False),
        ({AR: "attacker.example; dkim=pass header.d=collegeboard.org"}, False),
        ({AR: "mx.example.edu.evil; dkim=pass header.d=collegeboard.org"}, False),
        ({}, False),
    ],
)
def test_authentication_results(headers: dict[str, str], accepted: bool) -> None:
    """Only our own server's dkim=pass or dmarc=pass for an allowlisted domain is trusted."""
    raw = mail.notification("4300_20261121_101544.csv", headers=headers)
    found = read_notification(raw, ["@collegeboard.org"], authserv_id="mx.example.edu")
    assert isinstance(found, Notification) is accepted
    if not accepted:
        assert isinstance(found, Rejection) and found.reason == "unauthenticated"


@pytest.mark.e2e
def test_lost_email_and_late_file_are_caught_by_the_listing(
    start_daemon: Callable[..., DaemonProcess],
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """A file whose email never came lands by reconciliation; a file that 404ed until the
    retries gave up lands when the listing shows it."""
    cb_sim.publish("4300_20261121_050000.csv", b"no email for me\r\n")
    daemon = start_daemon(poll_interval="2s", retry_schedule=("0.2s",))
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_050000.csv")
    with imap_server.client() as client:
        client.append(imap_folder, mail.notification("4300_20261121_060000.csv"))
    daemon.wait_for(lambda e: e.get("event") == "delivery.failed" and e.get("will_retry") is False)
    cb_sim.publish("4300_20261121_060000.csv", b"posted late\r\n")
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_060000.csv", timeout=30)
    assert daemon.stop() == 0
    folder = tmp_path / "files" / "collegeboard"
    assert (folder / "4300_20261121_050000.csv").read_bytes() == b"no email for me\r\n"
    assert (folder / "4300_20261121_060000.csv").read_bytes() == b"posted late\r\n"
    assert daemon.named("listing.completed")


def test_a_file_that_disagrees_with_the_listing_is_suspect_kept_and_not_retried(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: Any
) -> None:
    """recordCount off by one: the file lands and stays, delivery.suspect names both
    counts, the ledger remembers why, nothing is downloaded again; a file that agrees
    (csv less its header, fixed-width txt every line) is not suspect."""
    cb_sim.with_dialect(records_off=1)
    cb_sim.publish("odd.csv", b"h1,h2\r\n1,2\r\n3,4\r\n")
    deliveries = pipeline(cb_sim, tmp_path)
    Reconciler(deliveries, lookback_days=1).run_once()
    assert deliveries.wait_idle(30)
    cb_sim.with_dialect(records_off=0)
    cb_sim.publish("fine.csv", b"h\r\n1\r\n2")  # the last line without its newline counts
    Reconciler(deliveries, lookback_days=1).run_once()
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    (suspect,) = log_lines.events("delivery.suspect")
    assert suspect["filename"] == "odd.csv" and suspect["rows"] == 2
    assert suspect["expected_rows"] == 3 and suspect["bytes"] == suspect["expected_bytes"]
    row = deliveries.ledger.get("collegeboard", "odd.csv")
    assert row is not None and row.state == "downloaded" and "3" in (row.suspect or "")
    assert (tmp_path / "files" / "collegeboard" / "odd.csv").exists()
    fine = deliveries.ledger.get("collegeboard", "fine.csv")
    assert fine is not None and fine.suspect == ""
    from scorefetch.core.completeness import data_rows

    txt = tmp_path / "fine.txt"  # fixed width: no header, every line a record
    txt.write_bytes(b"0001JANE\r\n0002JOHN\r\n")
    assert data_rows(txt) == 2


def test_the_listing_overlaps_a_day_unless_told() -> None:
    """The listing looks back 24 h past its last good pass by default (a file College Board
    posts with an older timestamp, or a clock that differs, is still listed; the ledger
    drops what it has): one cheap call that loses nothing."""
    config = CollegeBoardConfig(base_url="http://127.0.0.1:1", username="u", password="p")
    assert config.listing_overlap == 24 * 3600
    last = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    overlap = timedelta(seconds=config.listing_overlap)
    since = listing_since(last, last, timedelta(days=14), overlap, "America/New_York")
    assert since == last - timedelta(hours=24)


def test_a_file_waiting_on_its_retry_is_tried_at_once_when_announced(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """`fetch` asked before College Board posted the file: it waits on its retry schedule
    (an hour here). Posted, its notification — or a listing that shows it — tries it at
    once: it was skipped as a duplicate and landed only at the next retry."""
    deliveries = pipeline(cb_sim, tmp_path, retry_schedule=["1h"])
    name = "4300_20261203_080000.csv"
    deliveries.ledger.claim("collegeboard", name, name, "fetch")
    assert deliveries.deliver(name) is None  # not posted yet: 404, retrying in an hour
    row = deliveries.ledger.get("collegeboard", name)
    assert row is not None and row.state == "retrying"
    cb_sim.publish(name, b"posted now\r\n")
    deliveries.announce([name], source="notification")
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    row = deliveries.ledger.get("collegeboard", name)
    assert row is not None and row.state == "downloaded"


def test_a_file_refused_for_good_is_not_refused_again_at_every_listing(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """A file whose URL pointed at a host not in download_hosts is refused, failed for
    good, a person told once; the next listings leave it (they re-claimed it, asked for a
    URL again, and told a person again, every hour)."""
    deliveries = pipeline(cb_sim, tmp_path)
    reconciler = Reconciler(deliveries, lookback_days=14)
    name = "4300_20261203_090000.csv"
    cb_sim.publish(name, b"x\r\n")
    cb_sim.hostile.rewrite_url = lambda url: url.replace(
        urlsplit(url).netloc, "bucket.evil.example", 1
    )
    reconciler.run_once()
    assert deliveries.wait_idle(30)
    row = deliveries.ledger.get("collegeboard", name)
    assert row is not None and row.state == "failed" and row.kind == "refused"
    asked = cb_sim.stats.file_url_names.count(name)
    assert reconciler.run_once() == []
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    assert cb_sim.stats.file_url_names.count(name) == asked


def test_a_format_taken_off_formats_is_not_downloaded_at_the_restart(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: LogLines
) -> None:
    """With `formats: [csv, txt]` a txt twin waits on its retry; the office keeps csv only
    and restarts: the txt is not downloaded (and so not sent to Slate), its row closed
    and said; the csv still lands."""
    before = pipeline(cb_sim, tmp_path, formats=["csv", "txt"], retry_schedule=["1h"])
    for name in ("4300_20261203_100000.txt", "4300_20261203_100000.csv"):
        before.ledger.claim("collegeboard", name, name, "notification")
        assert before.deliver(name) is None  # not posted yet: retrying in an hour
    before.close(5)
    before.ledger.close()
    cb_sim.publish("4300_20261203_100000.csv", b"c\r\n")
    cb_sim.publish("4300_20261203_100000.txt", b"t\r\n")
    after = pipeline(cb_sim, tmp_path, formats=["csv"])
    assert after.resume() == 1
    assert after.wait_idle(30)
    after.close(5)
    landed = sorted(p.name for p in (tmp_path / "files" / "collegeboard").iterdir())
    assert landed == ["4300_20261203_100000.csv"]
    row = after.ledger.get("collegeboard", "4300_20261203_100000.txt")
    assert row is not None and row.state == "failed" and "formats" in (row.error or "")
    assert log_lines.events("delivery.skipped", reason="format")
