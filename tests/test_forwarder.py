"""The forwarder and retention in-process, over a real ledger, real files and a real sshd:
claim before upload, retries, resume and backfill at start, and what retention deletes."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.config import SftpDestination
from scorefetch.core.errors import Failure
from scorefetch.core.events import Downloaded, Event, ForwardFailed, ForwardUploaded
from scorefetch.core.ledger import Ledger
from scorefetch.forward.forwarder import Forwarder
from scorefetch.forward.sftp import SftpTarget
from scorefetch.retention import Retention
from scorefetch.sandbox.ports import free_port
from tests.standins.proxy import FaultProxy
from tests.support import LogLines, wait_until

_folders = itertools.count(1)
# The forwarder's log lines go to a stream of each test's own (conftest.log_lines).
pytestmark = pytest.mark.usefixtures("log_lines")


@pytest.fixture
def remote(sshd_server: Any) -> Path:
    folder: Path = sshd_server.root / f"f{os.getpid()}x{next(_folders)}"
    folder.mkdir()
    return folder


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "state" / "ledger.sqlite3")
    yield opened
    opened.close()


def destination(server: Any, remote: Path, port: int | None = None, **extra: Any) -> SftpTarget:
    config = SftpDestination.model_validate(
        {
            "type": "sftp",
            "host": server.host,
            "port": port or server.port,
            "username": server.username,
            "private_key": server.client_key,
            "host_key": server.host_key,
            "remote_dir": f"{remote}/{{vendor}}",
            "retry_schedule": ["1s"],
            "timeout": "5s",
            **extra,
        }
    )
    return SftpTarget("slate", config)


def land(
    ledger: Ledger, folder: Path, name: str, data: bytes, forward_to: tuple[str, ...] = ()
) -> Downloaded:
    """A file as any process leaves it (the daemon, `fetch`): on disk, in the ledger, and
    its forward rows written in the same transaction."""
    path = folder / "files" / "collegeboard" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    ledger.claim("collegeboard", name, name, "notification")
    sha = hashlib.sha256(data).hexdigest()
    ledger.downloaded("collegeboard", name, path, len(data), sha, forward_to)
    return Downloaded("collegeboard", name, path, len(data), sha, 0.1)


def until_idle(forwarder: Forwarder) -> None:
    """Start it, let it upload everything due, close it."""
    forwarder.start()
    try:
        assert forwarder.wait_idle(30)
    finally:
        forwarder.close(5)


def collect(forwarder: Forwarder) -> list[Event]:
    seen: list[Event] = []
    forwarder.events.subscribe(seen.append)
    return seen


def test_a_landed_file_is_claimed_then_uploaded_once(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path, log_lines: io.StringIO
) -> None:
    """Landed with a forward row → the file on the server → ForwardUploaded; landing the
    same file again uploads nothing."""
    forwarder = Forwarder([destination(sshd_server, remote)], ledger)
    seen = collect(forwarder)
    land(ledger, tmp_path, "a.csv", b"x" * 1000, ("slate",))
    forwarder.start()
    assert forwarder.wait_idle(30)
    land(ledger, tmp_path, "a.csv", b"x" * 1000, ("slate",))
    assert forwarder.wait_idle(30)
    assert (remote / "collegeboard" / "a.csv").read_bytes() == b"x" * 1000
    row = ledger.forwards.get("slate", "collegeboard", "a.csv")
    assert row is not None and row.state == "uploaded"
    # Once uploaded, whatever a busy sshd refused on the way (a retried attempt is fine).
    assert [type(e) for e in seen].count(ForwardUploaded) == 1
    assert ledger.forwards.report()["slate"]["backlog"] == 0
    assert '"event": "forward.uploaded"' in log_lines.getvalue()
    forwarder.close(5)


def test_vendors_filter(sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path) -> None:
    """A destination for encoura only takes no College Board file."""
    forwarder = Forwarder([destination(sshd_server, remote, vendors=["encoura"])], ledger)
    forwarder.start()
    land(ledger, tmp_path, "a.csv", b"1")  # the College Board lane owes "slate" nothing
    assert forwarder.wait_idle(10)
    assert ledger.forwards.get("slate", "collegeboard", "a.csv") is None
    forwarder.close(5)


def test_a_server_that_comes_back_gets_the_file(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path
) -> None:
    """Down: forward.failed with will_retry and the row retrying; up again: it lands."""
    port = free_port()
    forwarder = Forwarder([destination(sshd_server, remote, port=port)], ledger)
    seen = collect(forwarder)
    land(ledger, tmp_path, "b.csv", b"b" * 10, ("slate",))
    forwarder.start()
    wait_until(lambda: any(isinstance(e, ForwardFailed) for e in seen), timeout=20)
    failed = next(e for e in seen if isinstance(e, ForwardFailed))
    assert failed.will_retry and "cannot connect" in failed.error
    row = ledger.forwards.get("slate", "collegeboard", "b.csv")
    assert row is not None and row.state == "retrying"
    assert ledger.forwards.report()["slate"]["last_error"]["filename"] == "b.csv"
    proxy = FaultProxy(sshd_server.host, sshd_server.port)
    proxy.port = port
    with proxy:
        wait_until(lambda: any(isinstance(e, ForwardUploaded) for e in seen), timeout=30)
    assert (remote / "collegeboard" / "b.csv").read_bytes() == b"b" * 10
    forwarder.close(5)


def test_start_resumes_unfinished_rows_and_claims_what_it_missed(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path
) -> None:
    """After a crash: a pending row is uploaded, and a file that landed after the
    destination was added but was never claimed (killed in between) is claimed and sent;
    files from before the destination existed are not replayed."""
    old = land(ledger, tmp_path, "old.csv", b"old")
    time.sleep(0.01)  # the ledger's clock counts milliseconds: "old" is strictly older
    dest = destination(sshd_server, remote)
    Forwarder([dest], ledger).start()  # the destination's first start: "since" is now
    time.sleep(0.01)  # and what lands next is strictly newer
    land(ledger, tmp_path, "pending.csv", b"p", ("slate",))
    land(ledger, tmp_path, "missed.csv", b"m")
    forwarder = Forwarder([dest], ledger)
    assert forwarder.start() == 2
    assert forwarder.wait_idle(30)
    assert sorted(p.name for p in (remote / "collegeboard").iterdir()) == [
        "missed.csv",
        "pending.csv",
    ]
    assert ledger.forwards.get("slate", "collegeboard", old.key) is None
    forwarder.close(5)


def test_retention_removes_only_old_forwarded_files_and_keeps_history(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path
) -> None:
    """Old and uploaded: deleted, row kept (still a duplicate). Old but not uploaded, or
    young, or landed while the destination was configured but with no row: kept. Old files
    that landed before the destination existed: deleted."""
    forwarder = Forwarder([destination(sshd_server, remote)], ledger)
    forwarder.start()
    sent = land(ledger, tmp_path, "sent.csv", b"s", ("slate",))
    young = land(ledger, tmp_path, "y.csv", b"y", ("slate",))
    assert forwarder.wait_idle(30)
    forwarder.close(5)
    stuck = land(ledger, tmp_path, "stuck.csv", b"z", ("slate",))
    ledger.forwards.work("slate").failed(("collegeboard", "stuck.csv"), "refused", None)
    before = land(ledger, tmp_path, "before.csv", b"b")  # no row: predates the destination
    unsent = land(ledger, tmp_path, "unsent.csv", b"u")  # no row, landed since: owed
    with sqlite3.connect(ledger.path) as db:
        db.execute(
            "UPDATE deliveries SET landed_at = '2000-01-01T00:00:00.000+00:00'"
            " WHERE key = 'before.csv'"
        )
    month_ago = time.time() - 31 * 86400
    for event in (sent, stuck, before, unsent):
        os.utime(event.path, (month_ago, month_ago))
    retention = Retention(ledger, 30, {"slate": ("collegeboard", "encoura")})
    assert sorted(p.name for p in retention.sweep()) == ["before.csv", "sent.csv"]
    assert not sent.path.exists() and young.path.exists() and stuck.path.exists()
    assert unsent.path.exists()
    row = ledger.get("collegeboard", "sent.csv")
    assert row is not None and row.removed_at and row.sha256 == sent.sha256
    assert not ledger.claim("collegeboard", "sent.csv", "sent.csv", "notification")
    assert retention.sweep() == []


def test_retention_off_by_default(ledger: Ledger, tmp_path: Path) -> None:
    """Without keep_days nothing is ever deleted."""
    event = land(ledger, tmp_path, "a.csv", b"a")
    os.utime(event.path, (0, 0))
    assert Retention(ledger, None, {}).sweep() == [] and event.path.exists()


def test_a_ledger_from_before_retention_gains_the_column(tmp_path: Path) -> None:
    """An existing ledger without removed_at opens, and its rows read back."""
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE deliveries (vendor TEXT NOT NULL, key TEXT NOT NULL, filename TEXT"
            " NOT NULL, product TEXT, state TEXT NOT NULL, source TEXT NOT NULL, attempts"
            " INTEGER NOT NULL DEFAULT 0, path TEXT, bytes INTEGER, sha256 TEXT, error TEXT,"
            " created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (vendor, key))"
        )
        db.execute(
            "INSERT INTO deliveries VALUES ('collegeboard', 'a.csv', 'a.csv', NULL,"
            " 'downloaded', 'notification', 1, '/x/a.csv', 1, 'ab', NULL, 't', 't')"
        )
    ledger = Ledger(path)
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and row.removed_at is None
    ledger.close()


def test_a_renamed_destinations_unsent_files_are_reported_and_kept(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path, log_lines: LogLines
) -> None:
    """A file owed to a destination since renamed (`old-slate` → `slate`) is not silently
    abandoned: `forward.orphaned` at start names it with its count, `status` reads the same
    count, and retention keeps the file however old it is (a person decides)."""
    owed = land(ledger, tmp_path, "owed.csv", b"o", ("old-slate",))
    month_ago = time.time() - 31 * 86400
    os.utime(owed.path, (month_ago, month_ago))
    forwarder = Forwarder([destination(sshd_server, remote)], ledger)
    forwarder.start()
    try:
        (orphaned,) = log_lines.events("forward.orphaned")
        assert orphaned["destinations"] == {"old-slate": 1}
        assert ledger.forwards.orphans({"slate": lambda _v: True}) == {"old-slate": 1}
        retention = Retention(ledger, 30, {"slate": ("collegeboard", "encoura")})
        assert retention.sweep() == []
        assert owed.path.exists()
    finally:
        forwarder.close(5)


def test_a_local_copy_changed_since_it_landed_is_never_sent(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path
) -> None:
    """Uploads wait (Slate down for hours): meanwhile one landed file is saved over (a
    spreadsheet), another swapped for a symlink to the credentials. Neither reaches the
    server: `forward.failed reason=changed` (never retried, a person told) and a refusal
    naming the symlink; no part left; an untouched file beside them is sent."""
    secret = tmp_path / "credentials" / "collegeboard_password"
    secret.parent.mkdir()
    secret.write_text("hunter2-the-password\n")
    edited = land(ledger, tmp_path, "edited.csv", b"Last,First\r\nDoe,Jane\r\n", ("slate",))
    swapped = land(ledger, tmp_path, "swapped.csv", b"Last,First\r\nRoe,Rich\r\n", ("slate",))
    fine = land(ledger, tmp_path, "fine.csv", b"Last,First\r\nPoe,Edgar\r\n", ("slate",))
    edited.path.write_bytes(b"Last,First\r\nDoe,J\r\n")  # Excel saved it
    swapped.path.unlink()
    swapped.path.symlink_to(secret)
    forwarder = Forwarder([destination(sshd_server, remote)], ledger)
    seen = collect(forwarder)
    until_idle(forwarder)
    assert files_in(remote) == {"collegeboard/fine.csv": fine.path.read_bytes()}
    failed = {e.filename: e for e in seen if isinstance(e, ForwardFailed)}
    assert set(failed) == {"edited.csv", "swapped.csv"}
    assert all(not e.will_retry and e.kind == Failure.REFUSED for e in failed.values())
    assert "SHA-256 differs" in failed["edited.csv"].error
    assert "symlink" in failed["swapped.csv"].error
    row = ledger.forwards.get("slate", "collegeboard", "edited.csv")
    assert row is not None and row.state == "failed"


def files_in(root: Path) -> dict[str, bytes]:
    """Every file under `root` (dot-named parts included), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_vendor_taken_off_a_destination_stops_its_backlog_and_keeps_the_files(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path, log_lines: LogLines
) -> None:
    """A College Board file is owed to `slate`; the admin then sets slate's `vendors:
    [encoura]` and restarts. The backlog stops: nothing sent, the file kept (retention too),
    `forward.orphaned` counts it. Set back, the next start sends it."""
    owed = land(ledger, tmp_path, "owed.csv", b"o,w\r\n", ("slate",))
    month_ago = time.time() - 31 * 86400
    os.utime(owed.path, (month_ago, month_ago))
    encoura_only = Forwarder([destination(sshd_server, remote, vendors=["encoura"])], ledger)
    until_idle(encoura_only)
    assert files_in(remote) == {}
    (orphaned,) = log_lines.events("forward.orphaned")
    assert orphaned["destinations"] == {"slate": 1}
    assert log_lines.events("forward.failed") == []  # not a failure per file: one report
    retention = Retention(ledger, 30, {"slate": ("encoura",)})
    assert retention.sweep() == [] and owed.path.exists()
    every = Forwarder([destination(sshd_server, remote)], ledger)
    until_idle(every)
    assert files_in(remote) == {"collegeboard/owed.csv": b"o,w\r\n"}


def test_two_exports_of_one_name_and_the_same_bytes_are_sent_once_without_a_conflict(
    sshd_server: Any, remote: Path, ledger: Ledger, tmp_path: Path
) -> None:
    """Encoura regenerates an export (a new uid, the same name, the same bytes): both land
    as one file, and it reaches Slate once; the second row is already there (ours), never
    a `reason=conflict` telling the admin to move Slate's copy away."""
    data = b"id,name\r\n1,Same\r\n"
    path = tmp_path / "files" / "encoura" / "score-reporter" / "same.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    for uid in ("uid-1", "uid-2"):
        ledger.claim("encoura", uid, "same.csv", "listing", "score-reporter")
        ledger.downloaded("encoura", uid, path, len(data), sha, ("slate",))
    forwarder = Forwarder([destination(sshd_server, remote)], ledger)
    seen = collect(forwarder)
    until_idle(forwarder)
    assert files_in(remote) == {"encoura/same.csv": data}
    assert [e for e in seen if isinstance(e, ForwardFailed)] == []
    for uid in ("uid-1", "uid-2"):
        row = ledger.forwards.get("slate", "encoura", uid)
        assert row is not None and row.state == "uploaded"
