"""Ctrl-C: an interactive command exits 130 (128 + SIGINT) and leaves nothing partial;
`run` treats SIGINT as a clean stop (0)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from tests.support import wait_until


@pytest.mark.e2e
def test_ctrl_c_in_fetch_exits_130_with_nothing_partial(
    cb_sim: CollegeBoardSimulator, pymap_server: Any, tmp_path: Path
) -> None:
    """SIGINT while `fetch` streams a slow file: exit 130, no file, no `.part`."""
    config = write_config(tmp_path, cb_sim, pymap_server)
    cb_sim.publish_generated("slow.csv", 8 * 1024 * 1024, seed=1)
    cb_sim.throttle_bps = 1024 * 1024
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scorefetch",
            "fetch",
            "-c",
            str(config),
            "collegeboard",
            "slow.csv",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    folder = tmp_path / "files" / "collegeboard"
    wait_until(lambda: proc.poll() is not None or (folder.is_dir() and any(folder.glob(".*.part"))))
    assert proc.poll() is None, "the fetch ended before its download started"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert list(folder.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_stops_cleanly_on_sigint_and_sigterm_mid_download(
    cb_sim: CollegeBoardSimulator, pymap_server: Any, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C or systemd's SIGTERM while `run` streams a slow file: `daemon.stopping` names
    the signal, exit 0 (the download in flight gets its grace, so the file is there whole
    or not at all), no part file; if it was not finished, the next start lands it."""
    name = "4300_20261201_000001.csv"
    config = write_config(tmp_path, cb_sim, pymap_server, poll_interval="1s")
    cb_sim.publish_generated(name, 8 * 1024 * 1024, seed=2)
    cb_sim.throttle_bps = 1024 * 1024
    daemon = DaemonProcess(config)
    folder = tmp_path / "files" / "collegeboard"
    try:
        wait_until(lambda: folder.is_dir() and any(folder.glob(".*.part")), timeout=60)
        daemon.proc.send_signal(signum)
        assert daemon.proc.wait(timeout=60) == 0
    finally:
        daemon.kill()
    assert daemon.named("daemon.stopping")[0]["signal"] == signum.name
    assert not list(folder.glob(".*.part"))
    cb_sim.throttle_bps = None
    if not (folder / name).exists():
        again = DaemonProcess(config)
        try:
            again.wait_event("delivery.downloaded", filename=name, timeout=60)
        finally:
            assert again.stop() == 0
    assert [p.name for p in folder.iterdir()] == [name]
    assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == cb_sim.sha256_of(name)
