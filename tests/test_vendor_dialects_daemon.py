"""The real daemon against Encoura simulators switched to the readings its document leaves
open (issue 17): every export lands, whatever the paging, the token refusal, the URL key
or a 429; nothing secret reaches the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from tests.support import assert_no_secrets, files_under

READINGS: dict[str, dict[str, Any]] = {
    "pages-capped-below-our-limit": {"default_limit": 2, "max_limit": 2},
    "limit-skip-ignored": {"ignore_paging": True},
    "delivered-when-url-asked": {"delivered_on": "url", "max_limit": 2},
    "403-expiry-and-downloadURL": {"expired_token_status": 403, "download_url_key": "downloadURL"},
}


@pytest.mark.parametrize("reading", sorted(READINGS))
def test_daemon_lands_every_export_in_every_reading(
    reading: str, tmp_path: Path, cb_sim: CollegeBoardSimulator, pymap_server: Any
) -> None:
    """`scorefetch run` lands each export once with its bytes through pages, a 429 with
    Retry-After and session tokens that expire within the pass."""
    with EncouraSimulator(token_lifetime=1.0) as sim:
        sim.with_dialect(**READINGS[reading])
        uids = {
            sim.add_export("score-reporter", f"s-{n}.csv", f"id\n{n}\n".encode()): n
            for n in range(5)
        }
        sim.throttle.add("list", "1")  # the first listing is throttled, the token expires
        path = write_config(
            tmp_path,
            cb_sim,
            pymap_server,
            encoura=sim,
            encoura_poll_interval="1h",
            retry_schedule=("0.5s", "1s"),
        )
        daemon = DaemonProcess(path)
        try:
            daemon.wait_event("daemon.ready", timeout=30)
            for uid in uids:
                daemon.wait_event("delivery.downloaded", uid=uid, timeout=30)
        finally:
            daemon.stop()
        assert files_under(tmp_path / "files" / "encoura") == {
            f"score-reporter/s-{n}.csv": f"id\n{n}\n".encode() for n in uids.values()
        }
        assert daemon.named("vendor.throttled", path="/datacenter/exports")
        assert sim.stats.login_calls >= 2  # the token died during the 1 s wait: logged in again
        assert not daemon.named("auth.failing") and not daemon.named("listing.failed")
        assert_no_secrets(daemon.lines, [sim.api_key, sim.password, cb_sim.password])
