"""The real `scorefetch run` process against the sandbox over real sockets, on pymap and Dovecot."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scorefetch.core.ledger import Ledger
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from tests.support import files_under, wait_until

pytestmark = pytest.mark.e2e
Start = Callable[..., DaemonProcess]


def publish_pair(sim: CollegeBoardSimulator, stem: str) -> dict[str, bytes]:
    """Post `stem`.csv and `stem`.txt with distinct bytes, as College Board does."""
    files = {
        f"{stem}.csv": f"Last,First,Total\r\nDoe,{stem},1400\r\n".encode(),
        f"{stem}.txt": f"DOE       {stem}    1400\r\n".encode(),
    }
    for name, data in files.items():
        sim.publish(name, data)
    return files


def landed(tmp_path: Path) -> dict[str, bytes]:
    """Every file in the College Board folder, hidden ones included."""
    return files_under(tmp_path / "files" / "collegeboard")


def deliver(server: Any, folder: str, raw: bytes, when: datetime | None = None) -> None:
    with server.client() as client:
        client.append(folder, raw, msg_time=when)


def test_wanted_files_land_once_and_nothing_else(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """Notifications of many shapes: every wanted csv lands once with the right bytes; twins,
    duplicates, marketing, spoofed senders and hostile names land nothing."""
    files = {
        **publish_pair(cb_sim, "4300_20261121_101544"),
        **publish_pair(cb_sim, "4300_20261121_113020"),
    }
    cb_sim.publish("passwd", b"root:x:0:0\n")
    daemon = start_daemon()
    for raw in (
        mail.notification("4300_20261121_101544.csv"),
        mail.notification("4300_20261121_101544.txt"),
        mail.marketing(),
        mail.notification(
            "4300_20261121_113020.csv",
            html_encoding="base64",
            with_text=False,
            span="<TD ID='fileName'>\r\n\t4300_20261121_113020.csv&nbsp;</TD>",
        ),
        mail.notification("4300_20261121_113020.txt", charset="iso-8859-1"),
        mail.notification("passwd", sender="reportingportal@collegeboard.org <x@evil.example>"),
        mail.notification("../passwd"),
        mail.notification("4300_20261121_101544.csv"),
    ):
        deliver(imap_server, imap_folder, raw)
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_101544.csv")
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_113020.csv")
    daemon.wait_event("delivery.skipped", reason="duplicate", filename="4300_20261121_101544.csv")
    assert daemon.stop() == 0

    wanted = {n: files[n] for n in ("4300_20261121_101544.csv", "4300_20261121_113020.csv")}
    assert landed(tmp_path) == wanted
    assert sorted(cb_sim.stats.file_url_names) == sorted(wanted)
    skipped = {(e["filename"], e["reason"]) for e in daemon.named("delivery.skipped")}
    assert skipped == {
        ("4300_20261121_101544.txt", "format"),
        ("4300_20261121_113020.txt", "format"),
        ("4300_20261121_101544.csv", "duplicate"),
    }
    reasons = sorted(e["reason"] for e in daemon.named("notification.rejected"))
    assert reasons == ["no_filename", "sender", "unsafe_filename"]
    event = daemon.named("delivery.downloaded", filename="4300_20261121_101544.csv")[0]
    assert event["sha256"] == hashlib.sha256(files["4300_20261121_101544.csv"]).hexdigest()
    assert event["bytes"] == len(files["4300_20261121_101544.csv"])
    path = Path(event["path"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_txt_format_chosen_lands_txt_only(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """With formats [txt] the fixed-width twin lands and the csv is skipped."""
    files = publish_pair(cb_sim, "4300_20261121_090000")
    daemon = start_daemon(formats=("txt",))
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_090000.csv"))
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_090000.txt"))
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_090000.txt")
    daemon.wait_event("delivery.skipped", reason="format", filename="4300_20261121_090000.csv")
    assert daemon.stop() == 0
    assert landed(tmp_path) == {"4300_20261121_090000.txt": files["4300_20261121_090000.txt"]}


def test_mail_already_in_folder_at_first_start(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """On a first start, notifications within lookback_days are handled; older ones are not."""
    recent = publish_pair(cb_sim, "4300_20261120_080000")
    publish_pair(cb_sim, "4300_20250101_080000")
    old = datetime.now(UTC) - timedelta(days=40)
    deliver(imap_server, imap_folder, mail.notification("4300_20250101_080000.csv"), when=old)
    deliver(imap_server, imap_folder, mail.notification("4300_20261120_080000.csv"))
    daemon = start_daemon(lookback_days=14)
    daemon.wait_event("delivery.downloaded", filename="4300_20261120_080000.csv")
    assert daemon.stop() == 0
    assert landed(tmp_path) == {"4300_20261120_080000.csv": recent["4300_20261120_080000.csv"]}


def test_mail_while_daemon_down_is_handled_after_start(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """Mail that arrives while the daemon is stopped lands after it starts; nothing twice."""
    first = publish_pair(cb_sim, "4300_20261121_070000")
    second = publish_pair(cb_sim, "4300_20261121_071500")
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_070000.csv"))
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_070000.csv")
    assert daemon.stop() == 0

    deliver(imap_server, imap_folder, mail.notification("4300_20261121_071500.csv"))
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_070000.csv"))
    again = start_daemon()
    again.wait_event("delivery.downloaded", filename="4300_20261121_071500.csv")
    again.wait_event("delivery.skipped", reason="duplicate", filename="4300_20261121_070000.csv")
    assert again.stop() == 0
    assert landed(tmp_path) == {
        "4300_20261121_070000.csv": first["4300_20261121_070000.csv"],
        "4300_20261121_071500.csv": second["4300_20261121_071500.csv"],
    }
    assert cb_sim.stats.file_url_names.count("4300_20261121_070000.csv") == 1


def test_announced_before_posted_lands_when_posted(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """A 404 is retried on the schedule; the file lands once the vendor posts it."""
    daemon = start_daemon(retry_schedule=("1s", "1s", "30s"))
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_120000.csv"))
    failed = daemon.wait_event("delivery.failed", filename="4300_20261121_120000.csv")
    assert failed["will_retry"] is True
    assert "404" in failed["error"]
    files = publish_pair(cb_sim, "4300_20261121_120000")
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_120000.csv", timeout=20)
    assert daemon.stop() == 0
    assert landed(tmp_path) == {"4300_20261121_120000.csv": files["4300_20261121_120000.csv"]}


def test_vendor_outage_is_retried(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """503s from the file endpoint and from S3 are transient: retried until the file lands."""
    files = publish_pair(cb_sim, "4300_20261121_130000")
    cb_sim.inject("file", 503, count=2)
    cb_sim.inject("download", 500, count=1)
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_130000.csv"))
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_130000.csv", timeout=30)
    assert daemon.stop() == 0
    assert len(daemon.named("delivery.failed")) == 3
    assert landed(tmp_path) == {"4300_20261121_130000.csv": files["4300_20261121_130000.csv"]}


def test_expired_urls_are_renewed_never_used_late(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """A URL refused as expired is replaced by a fresh one; no download succeeds late."""
    files = publish_pair(cb_sim, "4300_20261121_140000")
    cb_sim.url_lifetime = 0.0  # every URL is dead on arrival
    daemon = start_daemon(retry_schedule=("1s", "30s"))
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_140000.csv"))
    daemon.wait_for(lambda e: e.get("event") == "delivery.failed" and e.get("retry_in_s"))
    assert cb_sim.stats.expired_rejections >= 3
    assert not landed(tmp_path)
    cb_sim.url_lifetime = 15.0
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_140000.csv", timeout=20)
    assert daemon.stop() == 0
    assert landed(tmp_path) == {"4300_20261121_140000.csv": files["4300_20261121_140000.csv"]}
    wait_until(lambda: cb_sim.stats.downloads_completed == 1)


def test_url_outside_download_hosts_is_never_connected(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """A presigned URL to a host not in download_hosts is refused before any connection."""
    publish_pair(cb_sim, "4300_20261121_150000")
    cb_sim.url_host_override = "localhost"  # loopback, but not the allowlisted 127.0.0.1
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_150000.csv"))
    failed = daemon.wait_event("delivery.failed", filename="4300_20261121_150000.csv")
    assert failed["will_retry"] is False
    assert "download_hosts" in failed["error"]
    assert daemon.stop() == 0
    assert cb_sim.stats.downloads_started == 0
    assert not landed(tmp_path)


def test_restart_redoes_unfinished_rows_and_removes_partials(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    tmp_path: Path,
) -> None:
    """A row left pending by a crash is redone at start; a stale .part file is removed."""
    files = publish_pair(cb_sim, "4300_20261121_160000")
    folder = tmp_path / "files" / "collegeboard"
    folder.mkdir(parents=True)
    (folder / ".4300_20261121_160000.csv.part").write_bytes(b"half a fi")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    assert ledger.claim(
        "collegeboard", "4300_20261121_160000.csv", "4300_20261121_160000.csv", "notification"
    )
    ledger.close()
    daemon = start_daemon()
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_160000.csv")
    assert daemon.named("delivery.partial_removed")
    assert daemon.stop() == 0
    assert landed(tmp_path) == {"4300_20261121_160000.csv": files["4300_20261121_160000.csv"]}


def test_sigkill_mid_download_leaves_nothing_visible_and_redoes_it(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """A daemon killed mid-download shows no partial file; the next start lands it whole, once."""
    name = "4300_20261121_170000.csv"
    cb_sim.publish_generated(name, 4 * 1024 * 1024, seed=7)
    cb_sim.throttle_bps = 1024 * 1024
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification(name))
    part = tmp_path / "files" / "collegeboard" / f".{name}.part"
    wait_until(lambda: part.exists() and part.stat().st_size > 0)
    daemon.kill()
    assert not (tmp_path / "files" / "collegeboard" / name).exists()

    cb_sim.throttle_bps = None
    again = start_daemon()
    event = again.wait_event("delivery.downloaded", filename=name)
    assert again.stop() == 0
    assert again.named("delivery.partial_removed") or again.named("delivery.resumed")
    assert event["sha256"] == cb_sim.sha256_of(name)
    assert list(landed(tmp_path)) == [name]
    assert hashlib.sha256(landed(tmp_path)[name]).hexdigest() == cb_sim.sha256_of(name)


def test_sigterm_lets_the_running_download_finish(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """SIGTERM during a download: the file finishes and lands, then the daemon exits 0."""
    name = "4300_20261121_171500.csv"
    cb_sim.publish_generated(name, 2 * 1024 * 1024, seed=3)
    cb_sim.throttle_bps = 2 * 1024 * 1024
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification(name))
    wait_until(lambda: cb_sim.stats.downloads_started == 1)
    assert daemon.stop() == 0
    assert daemon.named("delivery.downloaded", filename=name)
    assert hashlib.sha256(landed(tmp_path)[name]).hexdigest() == cb_sim.sha256_of(name)


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
def test_server_restart_reconnects_and_catches_up(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """The IMAP server goes down and comes back: the daemon reconnects and handles the mail
    delivered while it was away (and nothing twice)."""
    first = publish_pair(cb_sim, "4300_20261121_180000")
    second = publish_pair(cb_sim, "4300_20261121_181500")
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_180000.csv"))
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_180000.csv")
    imap_server.stop()
    try:
        daemon.wait_event("imap.disconnected", timeout=30)
    finally:
        imap_server.start()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_181500.csv"))
    daemon.wait_event("delivery.downloaded", filename="4300_20261121_181500.csv", timeout=60)
    assert len(daemon.named("imap.connected")) >= 2
    assert daemon.stop() == 0
    assert landed(tmp_path) == {
        "4300_20261121_180000.csv": first["4300_20261121_180000.csv"],
        "4300_20261121_181500.csv": second["4300_20261121_181500.csv"],
    }
    assert cb_sim.stats.file_url_names.count("4300_20261121_180000.csv") == 1


def test_uidvalidity_change_rescans_without_downloading_twice(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """The folder is deleted and recreated while the daemon is down (a new UIDVALIDITY, UIDs
    from 1 again): it says so, rescans lookback_days, and the ledger stops a second
    download of what it already has while the new file lands."""
    files = publish_pair(cb_sim, "4300_20261122_070000") | publish_pair(
        cb_sim, "4300_20261122_073000"
    )
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261122_070000.csv"))
    daemon.wait_event("delivery.downloaded", filename="4300_20261122_070000.csv")
    assert daemon.stop() == 0
    with imap_server.client() as client:
        client.delete_folder(imap_folder)
        client.create_folder(imap_folder)
    deliver(imap_server, imap_folder, mail.notification("4300_20261122_070000.csv"))
    deliver(imap_server, imap_folder, mail.notification("4300_20261122_073000.csv"))
    again = start_daemon()
    changed = again.wait_event("imap.uidvalidity_changed")
    again.wait_event("delivery.downloaded", filename="4300_20261122_073000.csv")
    again.wait_event("delivery.skipped", reason="duplicate", filename="4300_20261122_070000.csv")
    assert again.stop() == 0
    assert changed["old"] != changed["new"]
    assert landed(tmp_path) == {
        n: files[n] for n in ("4300_20261122_070000.csv", "4300_20261122_073000.csv")
    }
    assert sorted(cb_sim.stats.file_url_names) == [
        "4300_20261122_070000.csv",
        "4300_20261122_073000.csv",
    ]


def test_debug_level_times_one_notification_command_by_command(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """`log.level: debug` traces a notification's way: the FETCH of sizes and headers, the
    FETCH of the whole small message, the URL call and the download, each with its time;
    a URL's path or query never appears."""
    path = write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder)
    path.write_text(path.read_text().replace("  level: info\n", "  level: debug\n"))
    name = "4300_20261121_120000.csv"
    cb_sim.publish(name, b"Last,First\r\nDoe,Jane\r\n")
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification(name))
    daemon.wait_event("delivery.downloaded", filename=name)
    commands = [e["command"] for e in daemon.named("imap.command")]
    assert "UID FETCH RFC822.SIZE BODY.PEEK" in commands
    assert "UID FETCH BODY.PEEK BODY.PEEK" in commands  # whole: body headers and text
    assert "UID FETCH BODYSTRUCTURE" not in commands
    calls = daemon.named("http.call")
    assert {c["method"] for c in calls} >= {"POST", "GET"}
    assert all(c["status"] == 200 and c["elapsed_ms"] >= 0 for c in calls)
    assert not [c for c in calls if "/" in c["host"] or "?" in c["host"]]


def test_college_board_only_daemon_loads_no_library_it_does_not_need(
    start_daemon: Start, cb_sim: CollegeBoardSimulator, imap_server: Any, imap_folder: str
) -> None:
    """A College-Board-only daemon that has delivered a file has not loaded what other
    configurations need (SFTP's cryptography, bcrypt and nacl), an encoding guesser
    (requests' charset_normalizer) or asyncio: its compiled parts would be in its memory
    map. Each costs megabytes resident for as long as the service runs."""
    files = publish_pair(cb_sim, "4300_20261121_101544")
    daemon = start_daemon()
    deliver(imap_server, imap_folder, mail.notification("4300_20261121_101544.csv"))
    daemon.wait_event("delivery.downloaded", timeout=30, filename="4300_20261121_101544.csv")
    assert "4300_20261121_101544.csv" in files
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    paths = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
    unwanted = ("/charset_normalizer/", "/cryptography/", "/bcrypt/", "/nacl/", "/_asyncio.")
    assert [p for p in paths if "/pydantic_core/" in p], "the map does not show packages"
    assert not [p for p in paths if any(part in p for part in unwanted)], sorted(paths)
    # and its threads are told apart in top -H (core/libc.py's name_threads)
    tasks = Path(f"/proc/{daemon.proc.pid}/task").glob("*/comm")
    assert {"engine", "mailbox", "timers"} <= {task.read_text().strip() for task in tasks}
