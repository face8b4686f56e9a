"""`scorefetch fetch`, `sync` and `status`, in-process against the simulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scorefetch.cli import main
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import write_config
from scorefetch.sandbox.imapserver import PymapServer
from tests.support import assert_no_secrets


@pytest.fixture
def config_path(tmp_path: Path, cb_sim: CollegeBoardSimulator, pymap_server: PymapServer) -> Path:
    return write_config(tmp_path, cb_sim, pymap_server)


def test_fetch_downloads_by_name_once(
    config_path: Path,
    cb_sim: CollegeBoardSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`fetch collegeboard NAME` lands the file; a second fetch says it is already there."""
    cb_sim.publish("4300_20261121_101544.csv", b"a,b\r\n1,2\r\n")
    assert main(["fetch", "-c", str(config_path), "collegeboard", "4300_20261121_101544.csv"]) == 0
    target = tmp_path / "files" / "collegeboard" / "4300_20261121_101544.csv"
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"
    assert main(["fetch", "-c", str(config_path), "collegeboard", "4300_20261121_101544.csv"]) == 0
    out = capsys.readouterr().out
    assert "already downloaded" in out
    assert cb_sim.stats.file_url_calls == 1
    assert_no_secrets(out.splitlines(), [cb_sim.password])


def test_fetch_refuses_hostile_name_without_request(
    config_path: Path, cb_sim: CollegeBoardSimulator
) -> None:
    """A traversal name is a usage error; no request is made."""
    assert main(["fetch", "-c", str(config_path), "collegeboard", "../../etc/passwd"]) == 2
    assert cb_sim.stats.file_url_calls == 0


def test_fetch_missing_file_fails_and_status_shows_it(
    config_path: Path, cb_sim: CollegeBoardSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name the vendor does not have exits 1 and shows up in `status` with its error."""
    assert main(["fetch", "-c", str(config_path), "collegeboard", "4300_20261121_000000.csv"]) == 1
    capsys.readouterr()
    assert main(["status", "-c", str(config_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"retrying": 1}
    assert report["unfinished"][0]["filename"] == "4300_20261121_000000.csv"
    assert "404" in report["unfinished"][0]["error"]


def test_sync_downloads_listed_files_the_ledger_lacks(
    config_path: Path,
    cb_sim: CollegeBoardSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sync --since` lists, skips twins and old files, and downloads only what is missing."""
    now = datetime.now(UTC)
    cb_sim.publish("4300_20261101_000000.csv", b"old\n", posted_at=now - timedelta(days=20))
    for stem in ("4300_20261120_000001", "4300_20261120_000002"):
        cb_sim.publish(f"{stem}.csv", stem.encode())
        cb_sim.publish(f"{stem}.txt", b"fixed width")
    assert main(["fetch", "-c", str(config_path), "collegeboard", "4300_20261120_000001.csv"]) == 0
    since = (now - timedelta(days=3)).date().isoformat()
    assert main(["sync", "-c", str(config_path), "--since", since]) == 0
    folder = tmp_path / "files" / "collegeboard"
    assert sorted(p.name for p in folder.iterdir()) == [
        "4300_20261120_000001.csv",
        "4300_20261120_000002.csv",
    ]
    assert cb_sim.stats.file_url_names == ["4300_20261120_000001.csv", "4300_20261120_000002.csv"]
    assert "4 files listed" in capsys.readouterr().out


def test_status_without_ledger(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the daemon ever ran, `status` says so in words and `status --json` still prints
    JSON of the usual shape (monitoring parses it); neither creates the ledger."""
    assert main(["status", "-c", str(config_path)]) == 0
    assert "has never run" in capsys.readouterr().out
    assert main(["status", "-c", str(config_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ledger_exists"] is False
    assert report["counts"] == {} and report["unfinished"] == [] and report["recent"] == []
    assert not (config_path.parent / "state").exists()


@pytest.mark.usefixtures("log_lines")  # the alarm logs; not into a closed capture
def test_status_shows_credential_alarm(
    config_path: Path, cb_sim: CollegeBoardSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """After College Board refused the password, `status` says so (the alarm's ledger line)."""
    from scorefetch.core.errors import Failure
    from scorefetch.core.events import DeliveryFailed, Events
    from scorefetch.core.ledger import Ledger
    from scorefetch.observers.alarms import AuthAlarm
    from scorefetch.sources import load

    ledger = Ledger(load(config_path).ledger_path)
    events = Events()
    events.subscribe(AuthAlarm(events, ledger))
    events.publish(DeliveryFailed("collegeboard", "a", "a", 1, "HTTP 401", Failure.AUTH, True))
    ledger.close()
    assert main(["status", "-c", str(config_path)]) == 0
    assert "College Board login: failing: HTTP 401" in capsys.readouterr().out


def test_fetch_again_when_gone_from_disk_or_forced(
    config_path: Path,
    cb_sim: CollegeBoardSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file the ledger has but that is gone from disk is downloaded again, saying so;
    one still there is left alone unless --force."""
    name = "4300_20261121_111111.csv"
    cb_sim.publish(name, b"x,y\r\n")
    argv = ["fetch", "-c", str(config_path), "collegeboard", name]
    assert main(argv) == 0
    target = tmp_path / "files" / "collegeboard" / name
    target.unlink()  # the CRM import moved it away
    capsys.readouterr()
    assert main(argv) == 0
    assert f"no longer at {target}; downloading again" in capsys.readouterr().out
    assert target.read_bytes() == b"x,y\r\n"
    assert main(argv) == 0
    assert "--force downloads it again" in capsys.readouterr().out
    assert cb_sim.stats.file_url_calls == 2
    assert main([*argv, "--force"]) == 0
    assert "forced; downloading again" in capsys.readouterr().out
    assert cb_sim.stats.file_url_calls == 3
    assert target.read_bytes() == b"x,y\r\n"  # the same bytes: still one file
    assert sorted(p.name for p in target.parent.iterdir()) == [name]


def test_status_reads_the_ledger_without_changing_it(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` opens the ledger read-only: an operator who may only read it can run it,
    and its mode, size and contents stay as the daemon left them."""
    assert main(["fetch", "-c", str(config_path), "collegeboard", "4300_20261121_000000.csv"]) == 1
    ledger = tmp_path / "state" / "ledger.sqlite3"
    ledger.chmod(0o440)
    before = (ledger.stat().st_mode, ledger.read_bytes())
    capsys.readouterr()
    assert main(["status", "-c", str(config_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"retrying": 1}
    assert (ledger.stat().st_mode, ledger.read_bytes()) == before


def test_backup_is_a_consistent_copy_while_another_process_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`scorefetch backup FILE` while a writer keeps committing: the copy opens, passes
    SQLite's integrity check, holds the rows written before it, is 0600, and an existing
    FILE is refused."""
    import sqlite3
    import threading

    from scorefetch.core.ledger import Ledger

    config = tmp_path / "config.yaml"
    config.write_text(f"download_dir: {tmp_path / 'files'}\nstate_dir: {tmp_path / 'state'}\n")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.claim("collegeboard", "first.csv", "first.csv", "notification")
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            ledger.claim("collegeboard", f"w{n}.csv", f"w{n}.csv", "listing")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert main(["backup", "-c", str(config), str(tmp_path / "copy.sqlite3")]) == 0
    finally:
        stop.set()
        writer.join()
        ledger.close()
    assert "schema version" in capsys.readouterr().out
    copy = tmp_path / "copy.sqlite3"
    assert copy.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM deliveries WHERE key = 'first.csv'").fetchone()
    assert main(["backup", "-c", str(config), str(copy)]) == 1


def test_demo_without_its_extra_says_so_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed scorefetch without the 'demo' extra: `demo` exits 1 at once naming
    what is missing, instead of waiting for an IMAP server that cannot start."""
    from scorefetch import cli

    monkeypatch.setattr(cli, "DEMO_NEEDS", ("scorefetch_no_such_module",))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "demo" in err and "scorefetch_no_such_module is missing" in err
