"""A vendor is one folder: the test-only drop-folder vendor (tests/dropfolder/), built on
the public seam alone and registered with one line, lands files exactly once and forwards
them over SFTP through the real daemon; config, doctor and status know it by its name."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch import doctor, sources, status
from scorefetch.core.errors import ConfigError
from scorefetch.sandbox.daemon import DaemonProcess
from scorefetch.sandbox.sshd import forward_config
from tests.dropfolder import DropFolderSource
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]
SEAM = ("scorefetch.source", "scorefetch.config")  # all a vendor's folder may import


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry line, in this process."""
    monkeypatch.setattr(sources, "SOURCES", (*sources.SOURCES, DropFolderSource))


def _config(tmp_path: Path, drop: Path, forward: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"download_dir: {tmp_path / 'files'}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "collegeboard:\n  enabled: false\n"
        f"dropfolder:\n  path: {drop}\n  poll_interval: 1s\n" + forward
    )
    return path


def test_the_vendor_folder_imports_only_the_seam() -> None:
    """tests/dropfolder/ uses scorefetch.source and scorefetch.config, nothing deeper."""
    folder = ROOT / "tests" / "dropfolder"
    used = set()
    for path in folder.glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith(("from scorefetch", "import scorefetch")):
                used.add(words[1])
    assert used <= {*SEAM, "scorefetch", "scorefetch.cli"}, used
    assert "scorefetch.cli" not in {
        w.split()[1] for w in (folder / "__init__.py").read_text().splitlines() if "import" in w
    }


def test_registered_its_section_is_config_and_an_unregistered_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its line, `dropfolder:` is a section like College Board's (typed, checked,
    suggested when misspelt, taken by a destination without `vendors:`); without the
    line the same file is refused, naming the key."""
    drop = tmp_path / "drop"
    path = _config(tmp_path, drop)
    with pytest.raises(ConfigError, match="dropfolder"):
        sources.load(path)
    monkeypatch.setattr(sources, "SOURCES", (*sources.SOURCES, DropFolderSource))
    config = sources.load(path)
    assert config.vendors() == ("collegeboard", "encoura", "dropfolder")
    assert list(config.sections()) == ["dropfolder"]
    assert config.dropfolder.path == drop  # type: ignore[attr-defined]
    path.write_text(path.read_text().replace("poll_interval: 1s", "poll_intervall: 1s"))
    with pytest.raises(ConfigError, match="did you mean 'poll_interval'"):
        sources.load(path)


def test_doctor_and_status_know_it(tmp_path: Path, registered: None) -> None:
    """doctor runs the vendor's own check; status names it by its title."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_bytes(b"x\n")
    config = sources.load(_config(tmp_path, drop))
    checks = {c.name: c for c in doctor.run(config, [], sources=sources.SOURCES)}
    assert checks["dropfolder"].ok and "1 files waiting" in checks["dropfolder"].detail
    drop.chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        checks = {c.name: c for c in doctor.run(config, [], sources=sources.SOURCES)}
        assert not checks["dropfolder"].ok
    assert status.vendor_name("dropfolder") == "Drop folder"


@pytest.fixture
def drop_daemon(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_daemon_lands_and_forwards_its_files_exactly_once(
    tmp_path: Path, sshd_server: Any, drop_daemon: list[DaemonProcess]
) -> None:
    """The real daemon, with the one registry line: files dropped before and after the
    start land once each (a restart lands nothing twice), and reach the SFTP server with
    the same bytes under the vendor's folder; `scorefetch status` counts them."""
    drop = tmp_path / "drop"
    drop.mkdir()
    remote = sshd_server.root / f"third{os.getpid()}"
    files = {"early.csv": b"id\n1\n", "big.csv": os.urandom(3 * 1024 * 1024 + 5)}
    (drop / "early.csv").write_bytes(files["early.csv"])
    config = _config(
        tmp_path, drop, forward_config(sshd_server, tmp_path, remote_dir=f"{remote}/{{vendor}}")
    )
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    daemon = DaemonProcess(config, env=env, module="tests.dropfolder")
    drop_daemon.append(daemon)
    daemon.wait_event("daemon.ready", timeout=30)
    (drop / ".big.csv.tmp").write_bytes(files["big.csv"])
    (drop / ".big.csv.tmp").rename(drop / "big.csv")  # a drop box's writer renames into place
    want = {f"dropfolder/{name}": hashlib.sha256(data).hexdigest() for name, data in files.items()}
    wait_until(lambda: _digests(remote) == want, timeout=60)
    assert _digests(tmp_path / "files") == want
    assert len(daemon.named("delivery.downloaded", vendor="dropfolder")) == 2
    assert len(daemon.named("forward.uploaded", destination="slate")) == 2
    assert daemon.stop() == 0

    again = DaemonProcess(config, env=env, module="tests.dropfolder")
    drop_daemon.append(again)
    again.wait_event("daemon.ready", timeout=30)
    out = subprocess.run(
        [sys.executable, "-m", "tests.dropfolder", "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    assert '"dropfolder"' in out.stdout
    assert again.stop() == 0
    assert again.named("delivery.downloaded") == []  # nothing twice
    assert _digests(remote) == want and _digests(tmp_path / "files") == want


def test_a_vendor_named_like_a_config_section_is_refused() -> None:
    """The registry cannot shadow `imap:`, `forward:` …: a vendor's name is its own key."""
    from scorefetch import config

    with pytest.raises(ValueError, match="named like a config section"):
        config.schema({"forward": DropFolderSource.settings})
