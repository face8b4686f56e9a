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
    landed = out[out.index("files that landed") :]
    assert landed.count("  ok  ") == 5  # four College Board files and one Encoura export
    doctor = out[out.index("scorefetch doctor") : out.index("files that landed")]
    for check in ("folders", "ledger", "imap", "collegeboard", "encoura", "clock"):
        assert f"ok    {check}" in doctor  # doctor passes against the sandbox before the start
    assert "encoura/score-reporter/" in out
    for event in (
        "daemon.ready",
        "delivery.downloaded",
        "notification.rejected",
        "reason=duplicate",
    ):
        assert event in out
    assert "sandbox-imap" not in out and "sandbox-collegeboard" not in out  # no password shown
