"""`scorefetch status` for a person (plain words, local time) and for monitoring (--json),
read from a real ledger file written through the ledger's own API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorefetch.cli import main
from scorefetch.core.ledger import Ledger


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is America/New_York (EST in November)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose ledger has a listing pass, a mailbox, an alarm and a failed file."""
    path = tmp_path / "config.yaml"
    path.write_text(f"download_dir: {tmp_path / 'files'}\nstate_dir: {tmp_path / 'state'}\n")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.set_position("encoura.pass.score-reporter.started", "2026-11-21T15:42:00+00:00")
    ledger.set_position("encoura.pass.score-reporter.completed", "2026-11-21T15:42:00+00:00")
    ledger.set_position("collegeboard.last_listing", "2026-11-21T15:40:00+00:00")
    ledger.set_watcher("connected", "yes")
    ledger.set_watcher("last_round_trip", "2026-11-21T15:43:00+00:00")
    ledger.set_watcher("auth.collegeboard", "failing: HTTP 401")
    ledger.claim("collegeboard", "4300_1.csv", "4300_1.csv", "notification")
    ledger.failed("collegeboard", "4300_1.csv", "the vendor has no such file", will_retry=False)
    ledger.close()
    return path


def test_human_view_has_plain_words_and_local_time(
    config: Path, new_york: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ledger keys in the human view: each part in words, times local with the zone."""
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Encoura score-reporter: last listed 2026-11-21 10:42 EST" in out
    assert "College Board: last listed 2026-11-21 10:40 EST" in out
    assert "College Board login: failing: HTTP 401" in out
    assert "Mailbox  connected" in out
    assert "is the daemon running?" in out  # a "connected" from long ago: a dead daemon
    for internal in ("encoura.pass", "auth.collegeboard", "last_listing", "uidvalidity", "=yes"):
        assert internal not in out


def test_human_view_names_the_last_error_per_part(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each vendor's newest error is one sentence with the file it belongs to."""
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "College Board last error: the vendor has no such file (4300_1.csv," in out


def test_json_keeps_every_fact(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json keeps the ledger's own keys (monitoring reads them) and adds last_errors."""
    assert main(["status", "-c", str(config), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["positions"]["encoura.pass.score-reporter.started"]["value"].startswith("2026")
    assert facts["watcher"]["auth.collegeboard"]["value"] == "failing: HTTP 401"
    assert facts["last_errors"]["collegeboard"]["filename"] == "4300_1.csv"
    for key in ("ledger", "ledger_exists", "counts", "mailbox", "unfinished", "recent", "forward"):
        assert key in facts


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_closed_pipe_is_a_quiet_exit(config: Path, flag: list[str]) -> None:
    """`scorefetch status | head -1` after head has gone: exit 0, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "scorefetch", "status", "-c", str(config), *flag],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, b"")


def test_next_listing_is_the_last_plus_its_interval(
    config: Path, new_york: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Encoura enabled every 15m, a pass started 10:42 is next due about 10:57."""
    config.write_text(
        config.read_text()
        + "encoura: {enabled: true, api_key: k, username: u, password: p, poll_interval: 15m}\n"
    )
    assert main(["status", "-c", str(config)]) == 0
    assert (
        "Encoura score-reporter: last listed 2026-11-21 10:42 EST, next about 2026-11-21 10:57 EST"
        in (capsys.readouterr().out)
    )
    assert main(["status", "-c", str(config), "--json"]) == 0
    due = json.loads(capsys.readouterr().out)["next_listing"]
    assert due == {"encoura.score-reporter": "2026-11-21T15:57:00+00:00"}


def test_a_download_under_way_shows_its_bytes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hidden `.NAME.part` in the download folder is a download under way, with its size."""
    folder = config.parent / "files" / "collegeboard"
    folder.mkdir(parents=True)
    with (folder / ".4300_2.csv.part").open("wb") as part:
        part.truncate(2 * 1048576)
    assert main(["status", "-c", str(config)]) == 0
    assert "Downloading now  College Board 4300_2.csv: 2.0 MiB so far" in capsys.readouterr().out
    assert main(["status", "-c", str(config), "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["in_flight"]
    assert (item["vendor"], item["filename"], item["bytes"]) == (
        "collegeboard",
        "4300_2.csv",
        2 * 1048576,
    )


def test_a_dead_daemon_is_said_dead_and_its_connected_mailbox_is_not_believed(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After kill -9 the ledger still says `connected=yes`; the heartbeat is old, so status
    says the daemon is not running and the mailbox is not connected."""
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.set_watcher("daemon.heartbeat", json.dumps({"pid": 4242, "inflight": []}))
    ledger.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "ledger.sqlite3") as db:
        db.execute(
            "UPDATE watcher SET updated_at = '2026-11-21T15:00:00.000+00:00'"
            " WHERE name = 'daemon.heartbeat'"
        )
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Daemon   NOT RUNNING" in out
    assert "Mailbox  not connected (the daemon is not running)" in out
    assert main(["status", "-c", str(config), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["daemon"]["alive"] is False and facts["daemon"]["pid"] == 4242


def test_a_live_daemon_shows_what_it_moves_and_each_files_way(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh heartbeat with a download in flight: running, bytes and rate; a landed file
    shows announced → landed → each destination."""
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    inflight = [
        {
            "lane": "collegeboard",
            "job": ["big.csv"],
            "elapsed_s": 4.0,
            "bytes": 8 * 1048576,
            "total": 40 * 1048576,
        }
    ]
    ledger.set_watcher("daemon.heartbeat", json.dumps({"pid": 77, "inflight": inflight}))
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 3, "ab" * 32, ("slate",))
    ledger.close()
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Daemon   running, pid 77" in out
    assert "collegeboard: big.csv, 4s, 8.0 of 40.0 MiB at 2.0 MiB/s" in out
    assert "a.csv: announced" in out and "→ slate pending" in out


def test_a_download_the_daemon_reports_is_shown_once(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's own download is one line (from its heartbeat, with its rate), not a
    second one from its `.part` file; a `.part` the daemon does not report (a `fetch` in
    another process) still shows."""
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    job = {"lane": "encoura", "job": ["uid-7"], "elapsed_s": 2.0, "bytes": 1048576}
    inflight = [job | {"total": 4 * 1048576, "filename": "export.csv"}]
    ledger.set_watcher("daemon.heartbeat", json.dumps({"pid": 77, "inflight": inflight}))
    ledger.close()
    folder = config.parent / "files" / "encoura" / "score-reporter"
    folder.mkdir(parents=True)
    for name in ("export.csv", "by-hand.csv"):
        with (folder / f".{name}.part").open("wb") as part:
            part.truncate(1048576)
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "encoura: uid-7, 2s, 1.0 of 4.0 MiB" in out
    assert "export.csv: 1.0 MiB so far" not in out
    assert "Downloading now  Encoura by-hand.csv: 1.0 MiB so far" in out


def test_a_ledger_of_the_previous_release_is_shown_before_the_daemon_upgrades_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `make install`, before the daemon's restart, the ledger is still the previous
    release's (the fixture, written by its own code): `status` and `status --json` read it
    (through an upgraded copy in memory), say the upgrade is pending, and leave the file
    exactly as it was (no upgrade, no backup: the daemon does both at its start)."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "ledger.sqlite3"
    shutil.copy(Path(__file__).parent / "fixtures" / "ledger-release2.sqlite3", path)
    before = path.read_bytes()
    config = tmp_path / "config.yaml"
    config.write_text(f"download_dir: {tmp_path / 'files'}\nstate_dir: {state}\n")
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "from an older release (version 1)" in out and "4300_20261101_090000.csv" in out
    assert main(["status", "-c", str(config), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["ledger_upgrade_pending_from"] == 1
    assert facts["counts"]["downloaded"] >= 1
    assert path.read_bytes() == before
    assert not list(state.glob("*.bak*"))
