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


def test_daemon_in_the_encoura_readings_of_exports_that_are_late_expired_or_odd(
    tmp_path: Path, cb_sim: CollegeBoardSimulator, pymap_server: Any
) -> None:
    """Through `scorefetch run`: a server that takes only `userName` (`login_as`), an
    export listed `isExpired` (failed once, with the advice, never asked again), exports
    not generated yet (deferred, then landed by a later poll without a `sync`) and a
    `quantity` off by one (landed, kept, `delivery.suspect`)."""
    with EncouraSimulator() as sim:
        sim.with_dialect(
            login_fields=frozenset({"userName"}), expire_every=3, generated_after=2, quantity_off=1
        )
        uids = [
            sim.add_export("score-reporter", f"e-{n}.csv", f"id\n{n}\n".encode()) for n in range(3)
        ]
        expired, fine = uids[2], uids[:2]
        path = write_config(
            tmp_path,
            cb_sim,
            pymap_server,
            encoura=sim,
            encoura_poll_interval="1s",
            retry_schedule=("0.5s", "1s"),
        )
        path.write_text(path.read_text().replace("encoura:\n", "encoura:\n  login_as: userName\n"))
        daemon = DaemonProcess(path)
        try:
            for uid in fine:
                daemon.wait_event("delivery.downloaded", uid=uid, timeout=60)
                daemon.wait_event("delivery.suspect", uid=uid, timeout=30)
            failed = daemon.wait_event("delivery.failed", uid=expired, timeout=60)
            polls = len(daemon.named("listing.completed"))
            daemon.wait_for(lambda _: len(daemon.named("listing.completed")) >= polls + 2, 60)
        finally:
            assert daemon.stop() == 0
        assert failed["reason"] == "expired" and failed["will_retry"] is False
        assert len(daemon.named("delivery.failed", uid=expired)) == 1
        assert files_under(tmp_path / "files" / "encoura") == {
            f"score-reporter/e-{n}.csv": f"id\n{n}\n".encode() for n in range(2)
        }
        assert not daemon.named("auth.failing")
        assert_no_secrets(daemon.lines, [sim.api_key, sim.password, cb_sim.password])


def test_daemon_in_the_collegeboard_readings_of_token_expiry_types_and_sizes(
    tmp_path: Path, pymap_server: Any
) -> None:
    """Through `scorefetch run`, with no mail at all: College Board in token mode refusing
    an expired token with 403 (one new login, never `auth.failing`), a listing with an
    Essay File among the Scores Files, and `fileSize` off by two (landed, kept,
    `delivery.suspect`). The listing alone lands every file once."""
    with CollegeBoardSimulator() as sim:
        sim.with_dialect(expired_token_status=403, other_type_every=2, size_off=2)
        sim.token_lifetime = 1.0
        names = [f"4300_20261201_{n:06d}.csv" for n in range(4)]
        for name in names:
            sim.publish(name, f"Last,First\r\n{name},x\r\n".encode())
        path = write_config(
            tmp_path,
            sim,
            pymap_server,
            poll_interval="2s",
            retry_schedule=("0.5s", "1s"),
            extra_collegeboard="  auth: token\n",
        )
        daemon = DaemonProcess(path)
        try:
            for name in names:
                daemon.wait_event("delivery.downloaded", filename=name, timeout=60)
                daemon.wait_event("delivery.suspect", filename=name, timeout=30)
            logins = sim.stats.login_calls
            daemon.wait_for(lambda _: sim.stats.login_calls > logins, timeout=60)  # expired
            passes = len(daemon.named("listing.completed"))
            daemon.wait_for(lambda _: len(daemon.named("listing.completed")) > passes, 60)
        finally:
            assert daemon.stop() == 0
        assert files_under(tmp_path / "files" / "collegeboard") == {
            name: f"Last,First\r\n{name},x\r\n".encode() for name in names
        }
        assert not daemon.named("auth.failing") and not daemon.named("listing.failed")
        assert_no_secrets(daemon.lines, [sim.password])
