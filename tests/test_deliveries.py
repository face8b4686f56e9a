"""The delivery pipeline in-process against the simulator: retries, pool, logs."""

from __future__ import annotations

import io
import json
import random
import threading
from pathlib import Path

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.deliveries import retry_delay
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox.watcher import backoff_delay, new_uids
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from tests.support import assert_no_secrets, wait_until


def pipeline(
    sim: CollegeBoardSimulator, tmp_path: Path, **overrides: object
) -> CollegeBoardDeliveries:
    config = CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "download_hosts": [sim.download_host],
            "retry_schedule": [0.2, 0.2],
            **overrides,
        }
    )
    return CollegeBoardDeliveries(
        CollegeBoard(config, build_session()),
        Ledger(tmp_path / "ledger.sqlite3"),
        tmp_path / "files",
    )


@pytest.mark.parametrize(
    ("kind", "done", "delay"),
    [
        ("transient", 0, 1.0),
        ("transient", 1, 5.0),
        ("transient", 2, 30.0),
        ("transient", 6, None),
        ("not_found", 0, 30.0),
        ("not_found", 3, 3600.0),
        ("not_found", 4, None),
        ("auth", 0, 30.0),
        ("expired", 0, 1.0),
        ("fatal", 0, None),
        ("refused", 0, None),
    ],
)
def test_retry_delay(kind: str, done: int, delay: float | None) -> None:
    """Transient errors back off fast then follow the schedule; 404s follow it; refusals stop."""
    assert retry_delay(kind, done, (30.0, 120.0, 600.0, 3600.0)) == delay


def test_new_uids_filters_search_star() -> None:
    """`UID SEARCH N:*` returns the top UID even below N: only UIDs above the last count."""
    assert new_uids([105], 105) == []
    assert new_uids([109, 106, 107], 105) == [106, 107, 109]


def test_backoff_has_full_jitter_and_a_ceiling() -> None:
    """Delays grow from 1 s, are jittered, and never pass 5 minutes."""
    rng = random.Random(1)
    assert all(1.0 <= backoff_delay(0, rng) <= 1.0 for _ in range(10))
    samples = [backoff_delay(20, rng) for _ in range(200)]
    assert max(samples) <= 300.0 and min(samples) < 150.0


def test_burst_of_pairs_drains_with_no_expired_url(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: io.StringIO
) -> None:
    """200 announcements (100 csv/txt pairs): every csv lands, no URL is used after 15 s."""
    names = [f"4300_20261121_{i:06d}" for i in range(100)]
    for stem in names:
        cb_sim.publish(f"{stem}.csv", stem.encode() * 50)
        cb_sim.publish(f"{stem}.txt", b"x")
    deliveries = pipeline(cb_sim, tmp_path, max_parallel=4)
    deliveries.announce([f"{s}.{ext}" for s in names for ext in ("csv", "txt")], "notification")
    assert deliveries.wait_idle(60)
    assert deliveries.close(5)
    landed = sorted(p.name for p in (tmp_path / "files" / "collegeboard").iterdir())
    assert landed == sorted(f"{s}.csv" for s in names)
    wait_until(lambda: cb_sim.stats.downloads_completed >= 100)
    assert cb_sim.stats.downloads_completed == 100, cb_sim.stats
    stats = cb_sim.stats
    assert stats.expired_rejections == 0
    assert stats.max_url_age() < 15
    assert_no_secrets(log_lines.getvalue().splitlines(), [cb_sim.password])


def test_not_found_gives_up_loudly(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: io.StringIO
) -> None:
    """A file that never appears is retried on the schedule, then failed with will_retry=false."""
    deliveries = pipeline(cb_sim, tmp_path)
    deliveries.announce(["4300_20261121_999999.csv"], "notification")
    row = None
    for _ in range(100):
        deliveries.wait_idle(5)
        row = deliveries.ledger.get("collegeboard", "4300_20261121_999999.csv")
        if row is not None and row.state == "failed":
            break
        threading.Event().wait(0.1)
    deliveries.close(5)
    assert row is not None and row.state == "failed" and row.attempts == 3
    events = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    failed = [e for e in events if e["event"] == "delivery.failed"]
    assert [e["will_retry"] for e in failed] == [True, True, False]
    assert failed[-1]["level"] == "error"
    assert cb_sim.stats.file_url_names == ["4300_20261121_999999.csv"] * 3
