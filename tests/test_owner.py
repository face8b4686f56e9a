"""Root running a command that writes state into the service user's folders: refused with
the `sudo -u` line to run instead, and nothing root-owned left behind (root only)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from scorefetch.cli import main
from scorefetch.core.ledger import Ledger

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs commands as root")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose state folder (with a ledger) and download folder belong to nobody."""
    path = tmp_path / "config.yaml"
    path.write_text(f"download_dir: {tmp_path / 'files'}\nstate_dir: {tmp_path / 'state'}\n")
    Ledger(tmp_path / "state" / "ledger.sqlite3").close()
    (tmp_path / "files").mkdir()
    for item in [tmp_path / "files", tmp_path / "state", *(tmp_path / "state").iterdir()]:
        os.chown(item, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


def root_owned(folder: Path) -> list[Path]:
    return [p for p in [folder, *folder.rglob("*")] if p.stat().st_uid == 0]


@pytest.mark.parametrize(
    "argv",
    [
        ["sync"],
        ["sync", "--vendor", "collegeboard"],
        ["fetch", "collegeboard", "4300_20261121_101544.csv"],
        ["run"],
    ],
)
def test_root_is_refused_with_the_line_to_run(
    config: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1, the message names the owner and the whole `sudo -u nobody` command."""
    args = [argv[0], "-c", str(config), *argv[1:]]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "belongs to nobody" in err
    assert f"sudo -u nobody scorefetch {argv[0]} -c {config}" in err
    assert root_owned(config.parent / "state") == root_owned(config.parent / "files") == []


def test_the_config_path_is_added_when_it_came_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """sudo drops $SCOREFETCH_CONFIG: the suggested line names the file with -c."""
    monkeypatch.setenv("SCOREFETCH_CONFIG", str(config))
    assert main(["sync", "--vendor", "collegeboard"]) == 1
    assert f"sudo -u nobody scorefetch sync -c {config} --vendor collegeboard" in (
        capsys.readouterr().err
    )


def test_a_missing_state_folder_is_judged_by_its_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """state_dir not made yet inside the service user's folder: still refused, nothing made."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    config = tmp_path / "config.yaml"
    config.write_text(f"download_dir: {home / 'files'}\nstate_dir: {home / 'state'}\n")
    assert main(["sync", "-c", str(config)]) == 1
    assert list(home.iterdir()) == []
    assert "belongs to nobody" in capsys.readouterr().err


def test_status_as_root_leaves_nothing_root_owned(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` reads as root; SQLite's -wal/-shm files it makes keep the ledger's owner."""
    assert main(["status", "-c", str(config)]) == 0
    assert root_owned(config.parent / "state") == []
