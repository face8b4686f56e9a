"""The real `scorefetch run` forwarding to a real sshd, and retention, end to end: mail in,
file landed, file on the SFTP server under its final name; SIGKILL mid-upload; restarts."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from scorefetch.cli import main
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import ImapServer
from scorefetch.sandbox.sshd import forward_config
from tests.standins.proxy import FaultProxy
from tests.support import wait_until

pytestmark = pytest.mark.e2e
Start = Callable[..., DaemonProcess]
_folders = itertools.count(1)


@pytest.fixture
def imap_server(pymap_server: ImapServer) -> ImapServer:
    """Forwarding does not depend on the IMAP server: pymap only."""
    return pymap_server


@pytest.fixture
def log_secrets(sshd_server: Any) -> Iterable[str]:
    """The SFTP client key must never reach a log line either."""
    return [line for line in sshd_server.client_key.splitlines() if len(line) > 20]


@pytest.fixture
def remote_dir(sshd_server: Any) -> str:
    return f"e2e{os.getpid()}x{next(_folders)}/{{vendor}}"


def configure(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    extra: str = "",
    **forward: Any,
) -> Path:
    path = write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder)
    with path.open("a") as out:
        out.write(forward_config(sshd_server, tmp_path, remote_dir=remote_dir, **forward) + extra)
    return path


def remote(sshd_server: Any, remote_dir: str) -> Path:
    folder: Path = sshd_server.root / remote_dir.format(vendor="collegeboard")
    return folder


def deliver(server: Any, folder: str, raw: bytes) -> None:
    with server.client() as client:
        client.append(folder, raw)


def test_a_landed_file_reaches_the_sftp_server_and_status_shows_it(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Notification → delivery.downloaded → forward.uploaded with the spec's fields; the
    server holds the same bytes under the final name only; status shows the destination."""
    path = configure(tmp_path, cb_sim, imap_server, imap_folder, sshd_server, remote_dir)
    data = b"Last,First,Total\r\nDoe,Jane,1400\r\n" * 3000
    cb_sim.publish("4300_20261121_101544.csv", data)
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_101544.csv"))
    event = daemon.wait_event("forward.uploaded", filename="4300_20261121_101544.csv")
    folder = remote(sshd_server, remote_dir)
    assert event["destination"] == "slate" and event["vendor"] == "collegeboard"
    assert event["remote_path"] == str(folder / "4300_20261121_101544.csv")
    assert event["bytes"] == len(data) and event["elapsed_s"] >= 0
    assert [p.name for p in folder.iterdir()] == ["4300_20261121_101544.csv"]
    assert (folder / "4300_20261121_101544.csv").read_bytes() == data
    assert daemon.stop() == 0
    capsys.readouterr()
    assert main(["status", "-c", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["forward"]["slate"]["backlog"] == 0
    assert report["forward"]["slate"]["counts"] == {"uploaded": 1}
    assert main(["status", "-c", str(path)]) == 0
    assert "Forward to slate: 0 waiting; 1 uploaded" in capsys.readouterr().out


def test_sigkill_mid_upload_never_shows_a_partial_file_and_resumes(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """The daemon dies mid-upload (the link frozen so it is surely mid-way): the server shows
    only a dot-named part; the next start resumes the row, lands the whole file, and clears
    the part."""
    data = os.urandom(48 * 1024 * 1024)
    cb_sim.publish("4300_20261121_113020.csv", data)
    folder = remote(sshd_server, remote_dir)
    with FaultProxy(sshd_server.host, sshd_server.port) as proxy:
        configure(
            tmp_path, cb_sim, imap_server, imap_folder, sshd_server, remote_dir, port=proxy.port
        )
        daemon = start_daemon()
        deliver(imap_server, imap_folder, mail.notification("4300_20261121_113020.csv"))
        wait_until(
            lambda: any(p.stat().st_size > 0 for p in folder.glob(".4300_20261121_113020.csv.*")),
            timeout=60,
        )
        proxy.blackhole()
        daemon.kill()
        proxy.restore()
        assert not (folder / "4300_20261121_113020.csv").exists()
        assert [p.name.startswith(".") for p in folder.iterdir()] == [True]
        again = start_daemon()
        again.wait_event("forward.resumed", filename="4300_20261121_113020.csv")
        again.wait_event("forward.uploaded", filename="4300_20261121_113020.csv", timeout=60)
    assert [p.name for p in folder.iterdir()] == ["4300_20261121_113020.csv"]
    assert (folder / "4300_20261121_113020.csv").read_bytes() == data
    assert again.stop() == 0


def test_host_key_mismatch_is_logged_with_the_fingerprint_seen(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """A server whose key is not the pinned one: forward.failed naming the fingerprint it
    saw, no file there, the row kept for a retry; the local file stays."""
    from scorefetch.sandbox.sshd import new_ed25519_key

    _, other = new_ed25519_key()
    configure(tmp_path, cb_sim, imap_server, imap_folder, sshd_server, remote_dir, host_key=other)
    cb_sim.publish("4300_20261121_120000.csv", b"a,b\r\n")
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_120000.csv"))
    failed = daemon.wait_event("forward.failed", filename="4300_20261121_120000.csv")
    assert sshd_server.host_key_fingerprint in failed["error"]
    assert failed["will_retry"] is True and failed["destination"] == "slate"
    assert not remote(sshd_server, remote_dir).exists()
    assert (tmp_path / "files" / "collegeboard" / "4300_20261121_120000.csv").exists()


def test_retention_removes_forwarded_old_files_and_they_stay_duplicates(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """A forwarded file older than keep_days is deleted at start (retention.removed); the
    same notification again is a duplicate, not a second download. `scorefetch fetch`
    brings it back and clears the removal: never sent twice (the server has our upload of
    those bytes), and removed again once old."""
    config = configure(
        tmp_path,
        cb_sim,
        imap_server,
        imap_folder,
        sshd_server,
        remote_dir,
        extra="retention:\n  keep_days: 30\n",
    )
    cb_sim.publish("4300_20261121_130000.csv", b"x,y\r\n")
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_130000.csv"))
    daemon.wait_event("forward.uploaded", filename="4300_20261121_130000.csv")
    assert daemon.stop() == 0
    local = tmp_path / "files" / "collegeboard" / "4300_20261121_130000.csv"
    past = time.time() - 40 * 86400
    os.utime(local, (past, past))
    again = start_daemon()
    removed = again.wait_event("retention.removed", filename="4300_20261121_130000.csv")
    assert removed["vendor"] == "collegeboard" and removed["path"] == str(local)
    assert removed["age_days"] >= 40
    assert not local.exists()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_130000.csv"))
    again.wait_event("delivery.skipped", filename="4300_20261121_130000.csv", reason="duplicate")
    assert not local.exists()
    assert again.named("delivery.downloaded") == []
    assert again.stop() == 0
    fetch = ["fetch", "-c", str(config), "collegeboard", "4300_20261121_130000.csv"]
    assert main(fetch) == 0
    assert local.read_bytes() == b"x,y\r\n"
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")) as db:
        (removed_at,) = db.execute("SELECT removed_at FROM deliveries").fetchone()
        states = db.execute("SELECT state FROM forwards").fetchall()
    assert removed_at is None  # so retention may take it again, once it is old
    assert states == [("uploaded",)]  # ours already, those very bytes: not sent twice
    os.utime(local, (past, past))
    fourth = start_daemon()
    fourth.wait_event("retention.removed", filename="4300_20261121_130000.csv")
    assert not local.exists()


def test_doctor_checks_each_destination_with_a_probe(
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`scorefetch doctor` has a forward.slate line: host key verified, login, probe file
    written and removed (nothing left on the server)."""
    path = configure(tmp_path, cb_sim, imap_server, imap_folder, sshd_server, remote_dir)
    main(["doctor", "-c", str(path), "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["forward.slate"]["ok"] is True
    assert sshd_server.host_key_fingerprint in json.dumps(checks["forward.slate"])
    folder = remote(sshd_server, remote_dir)
    assert [p for p in folder.rglob("*") if p.is_file()] == []


def test_a_moved_download_dir_keeps_its_backlog_going(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """Files landed and queued for Slate (by `fetch`, the daemon down); the admin moves the
    download folder (a new server mounts the share elsewhere) and edits download_dir. The
    next start finds them there (`ledger.relocated`) and sends them: not a missing local
    copy given up for good."""
    config = configure(tmp_path, cb_sim, imap_server, imap_folder, sshd_server, remote_dir)
    name = "4300_20261124_090000.csv"
    cb_sim.publish(name, b"moved,along\r\n")
    assert main(["fetch", "-c", str(config), "collegeboard", name]) == 0
    old, new = tmp_path / "files", tmp_path / "crm-share"
    old.rename(new)
    config.write_text(
        config.read_text().replace(f"download_dir: {old}\n", f"download_dir: {new}\n")
    )
    daemon = start_daemon()
    relocated = daemon.wait_event("ledger.relocated")
    daemon.wait_event("forward.uploaded", filename=name)
    assert daemon.stop() == 0
    assert relocated["files"] == 1 and relocated["example_to"] == str(new / "collegeboard" / name)
    assert (remote(sshd_server, remote_dir) / name).read_bytes() == b"moved,along\r\n"
    assert daemon.named("forward.failed") == []


def test_a_file_posted_again_with_new_bytes_and_fetched_reaches_slate_too(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file landed and reached Slate; College Board posts it again with other bytes and
    the admin runs `fetch --force`: the new bytes land beside the first (NAME-1, never
    replacing it) and reach Slate as NAME-1 — `fetch` said "queued for slate" and they
    never went. Fetching the same bytes again says they are already there."""
    config = configure(tmp_path, cb_sim, imap_server, imap_folder, sshd_server, remote_dir)
    name = "4300_20261125_080000.csv"
    cb_sim.publish(name, b"first\r\n")
    daemon = start_daemon()
    assert main(["fetch", "-c", str(config), "collegeboard", name]) == 0
    daemon.wait_event("forward.uploaded", filename=name)
    cb_sim.publish(name, b"second, corrected\r\n")
    assert main(["fetch", "--force", "-c", str(config), "collegeboard", name]) == 0
    assert "queued for slate" in capsys.readouterr().out
    again = "4300_20261125_080000-1.csv"
    daemon.wait_event("forward.uploaded", filename=again)
    assert main(["fetch", "--force", "-c", str(config), "collegeboard", name]) == 0
    assert "already at slate" in capsys.readouterr().out
    assert daemon.stop() == 0
    there = remote(sshd_server, remote_dir)
    assert (there / name).read_bytes() == b"first\r\n"
    assert (there / again).read_bytes() == b"second, corrected\r\n"
    assert daemon.named("forward.failed") == []
