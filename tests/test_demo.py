"""`scorefetch demo` is product: it must pass on a fresh machine with no root and no network."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.e2e
def test_demo_lands_every_expected_file_and_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scorefetch", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "demo OK" in out
    assert out.count("  ok  ") == 5  # four College Board files and one Encoura export
    assert "encoura/score-reporter/" in out
    for event in (
        "daemon.ready",
        "delivery.downloaded",
        "notification.rejected",
        "reason=duplicate",
    ):
        assert event in out
    assert "sandbox-imap" not in out and "sandbox-collegeboard" not in out  # no password shown
