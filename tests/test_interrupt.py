"""Ctrl-C: an interactive command exits 130 (128 + SIGINT) and leaves nothing partial;
`run` treats SIGINT as a clean stop (0)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import write_config
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
