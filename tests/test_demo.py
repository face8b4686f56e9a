"""`scorefetch demo` is product: it must pass on a fresh machine with no root and no network."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scorefetch.sandbox.sshd import sshd_binary


@pytest.mark.e2e
def test_demo_lands_every_expected_file_and_says_so() -> None:
    """The demo lands every file, forwards them to a local sshd when there is one (and says
    it skipped that step when not), and shows no password."""
    done = subprocess.run(
        [sys.executable, "-m", "scorefetch", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "demo OK" in out
    landed, _, forwarded = out[out.index("files that landed") :].partition(
        "files forwarded over SFTP"
    )
    assert landed.count("  ok  ") == 5  # four College Board files and one Encoura export
    if sshd_binary() is not None:
        assert forwarded.count("  ok  ") == 5 and "reached the SFTP server" in out
        assert "forward.uploaded" in out
    else:
        assert "forwarding: skipped" in out
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
