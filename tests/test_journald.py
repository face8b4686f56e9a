"""Under journald: the real `scorefetch` process, its stdout and stderr on one file whose
device and inode are in $JOURNAL_STREAM (as systemd sets them), read back as bytes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import write_config
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.ports import free_port

PREFIXED = re.compile(rb"^<([0-7])>(\{.*\})$")


def start(argv: list[str], out: Path, journal: bool = True) -> subprocess.Popen[bytes]:
    """`scorefetch ARGV` with stdout and stderr on `out` (the journal's stream stand-in)."""
    handle = out.open("ab")
    st = os.fstat(handle.fileno())
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "scorefetch", *argv],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            env=env,
        )
    finally:
        handle.close()


def records(out: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every line as (priority, JSON object); fails on a line journald would not parse so."""
    found = []
    for raw in out.read_bytes().splitlines():
        match = PREFIXED.match(raw)
        assert match, f"not a <N>JSON line: {raw!r}"
        found.append((int(match.group(1)), json.loads(match.group(2))))
    return found


def wait_for_event(out: Path, name: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not any(e.get("event") == name for _, e in records(out)):
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-2000:]
        time.sleep(0.1)


@pytest.mark.e2e  # it starts `scorefetch run` (which stops at once, exit 78)
def test_config_error_is_one_prefixed_json_line(tmp_path: Path) -> None:
    """Exit 78's message is a `<3>` JSON line naming the file and key, not plain text."""
    config = tmp_path / "config.yaml"
    config.write_text(f"download_dir: {tmp_path}/files\nstate_dir: {tmp_path}/state\nbogus: 1\n")
    out = tmp_path / "journal"
    proc = start(["run", "-c", str(config)], out)
    assert proc.wait(timeout=60) == 78
    ((prio, event),) = records(out)
    assert prio == 3 and event["level"] == "error" and event["event"] == "config.invalid"
    assert "bogus" in event["error"] and "config.yaml" in event["error"]


def test_usage_error_is_one_prefixed_json_line(tmp_path: Path) -> None:
    """A wrong command line (exit 2) is a `<3>` JSON line too, not argparse's usage text."""
    out = tmp_path / "journal"
    proc = start(["fetch", "nosuchvendor", "x.csv"], out)
    assert proc.wait(timeout=60) == 2
    ((prio, event),) = records(out)
    assert prio == 3 and event["event"] == "command.refused" and "nosuchvendor" in event["error"]


def test_config_error_is_plain_text_off_the_journal(tmp_path: Path) -> None:
    """On a terminal or a plain file the same error stays a readable sentence."""
    config = tmp_path / "config.yaml"
    config.write_text("bogus: 1\n")
    out = tmp_path / "stderr"
    proc = start(["check-config", "-c", str(config)], out, journal=False)
    assert proc.wait(timeout=60) == 78
    assert out.read_text().startswith("scorefetch: configuration error:\n")


def test_daemon_lines_carry_their_priority(
    tmp_path: Path, cb_sim: CollegeBoardSimulator, pymap_server: PymapServer
) -> None:
    """A running daemon whose mailbox is down: info lines are `<6>`, the disconnect warning
    `<4>`, so `journalctl -p warning` shows only the trouble; every line is JSON."""
    config = write_config(tmp_path, cb_sim, pymap_server, imap_address=("127.0.0.1", free_port()))
    config.write_text(config.read_text().replace("format: console", "format: json"))
    out = tmp_path / "journal"
    proc = start(["run", "-c", str(config)], out)
    try:
        wait_for_event(out, "imap.disconnected", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    seen = {(event["level"], prio) for prio, event in records(out)}
    assert ("warning", 4) in seen and ("info", 6) in seen
    assert {prio for level, prio in seen if level == "info"} == {6}


@pytest.mark.e2e  # the College Board simulator answers over loopback
def test_fetch_under_journald_writes_only_prefixed_json(
    tmp_path: Path, cb_sim: CollegeBoardSimulator, pymap_server: PymapServer
) -> None:
    """`fetch` from a systemd timer: its progress lines are `<6>` JSON (command.progress),
    like everything else on that stream, so `jq` and `journalctl -p` read them."""
    config = write_config(tmp_path, cb_sim, pymap_server)
    cb_sim.publish("4300_20261201_160000.csv", b"a,b\r\n")
    out = tmp_path / "journal"
    proc = start(["fetch", "-c", str(config), "collegeboard", "4300_20261201_160000.csv"], out)
    assert proc.wait(timeout=60) == 0
    progress = [e for prio, e in records(out) if e["event"] == "command.progress" and prio == 6]
    assert any("4300_20261201_160000.csv" in e["message"] for e in progress)
