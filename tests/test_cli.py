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


def test_status_without_ledger(config_path: Path) -> None:
    """`status` before the daemon ever ran says so and exits 1."""
    assert main(["status", "-c", str(config_path)]) == 1
