"""The watcher's own duties, through the real daemon: moving handled notifications to
`imap.processed_folder`, and renewing its session before `imap.session_lifetime`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bench.shared_inbox import other_mail
from imapclient import IMAPClient

from scorefetch.mailbox.watcher import backoff_delay, new_uids
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from tests.conftest import dovecot_or_skip
from tests.standins.proxy import FaultProxy
from tests.support import wait_until

pytestmark = pytest.mark.e2e
Start = Callable[..., DaemonProcess]


def kinds(server: Any, folder: str) -> list[str]:
    """What is in `folder`: each message labelled spoof, webinar, txt or csv."""
    with server.client() as client:
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        found = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
    labels = []
    for item in found.values():
        raw = item[b"BODY[]"]
        if b"evil.example" in raw:
            labels.append("spoof")
        elif b"webinar" in raw:
            labels.append("webinar")
        else:
            labels.append("txt" if b".txt" in raw else "csv")
    return sorted(labels)


def test_processed_folder_takes_notifications_and_leaves_the_rest(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """Notifications acted on (downloaded, or skipped as a twin) move once the ledger holds
    them; mail that is not a notification stays where it was, unread."""
    processed = f"{imap_folder}-done"
    cb_sim.publish("4300_20261122_080000.csv", b"a,b\r\n1,2\r\n")
    cb_sim.publish("4300_20261122_080000.txt", b"1 2\r\n")
    daemon = start_daemon(extra_imap=f'  processed_folder: "{processed}"\n')
    daemon.wait_event("imap.folder_created", processed_folder=processed)
    for raw in (
        mail.notification("4300_20261122_080000.csv"),
        mail.notification("4300_20261122_080000.txt"),
        mail.marketing(),
        mail.notification("4300_20261122_080000.csv", sender="x@evil.example"),
    ):
        imap_server.deliver(raw, imap_folder)
    daemon.wait_event("delivery.downloaded", filename="4300_20261122_080000.csv")
    daemon.wait_event("notification.rejected", reason="sender")
    assert daemon.stop() == 0

    assert kinds(imap_server, processed) == ["csv", "txt"]
    assert kinds(imap_server, imap_folder) == ["spoof", "webinar"]
    with imap_server.client() as client:
        client.select_folder(imap_folder, readonly=True)
        assert client.search(["SEEN"]) == []  # read with BODY.PEEK only
    assert not daemon.named("imap.move_failed")
    assert (tmp_path / "files" / "collegeboard" / "4300_20261122_080000.csv").exists()


NO_MOVE = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE UIDPLUS CHILDREN"


def move_to_done(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    capability: str,
    name: str,
    until: Callable[[DaemonProcess, FaultProxy], None],
) -> tuple[list[str], list[str], bytes]:
    """A Dovecot offering `capability` behind a transcribing proxy, a message someone else
    marked \\Deleted in INBOX, and a daemon with processed_folder "Done" that lands `name`
    from a notification and runs until `until` returns; then (Done's kinds, INBOX's kinds,
    what the daemon sent)."""
    server = dovecot_or_skip(tmp_path / "dovecot-capability")
    server.capability = capability
    with server, FaultProxy(server.host, server.port, transcript=True) as proxy:
        with server.client() as client:
            client.append("INBOX", mail.marketing(), flags=[b"\\Deleted"])
        cb_sim.publish(name, b"a\r\n")
        config = write_config(
            tmp_path,
            cb_sim,
            server,
            imap_address=(proxy.host, proxy.port),
            extra_imap='  processed_folder: "Done"\n',
        )
        daemon = DaemonProcess(config)
        try:
            daemon.wait_event("daemon.ready")
            server.deliver(mail.notification(name))
            daemon.wait_event("delivery.downloaded", filename=name)
            until(daemon, proxy)
        finally:
            assert daemon.stop() == 0
        return kinds(server, "Done"), kinds(server, "INBOX"), bytes(proxy.sent)


def test_processed_folder_without_move_copies_and_expunges_only_that_message(
    tmp_path: Path, cb_sim: CollegeBoardSimulator
) -> None:
    """A server without MOVE: COPY, \\Deleted, then UID EXPUNGE of that one UID, so a
    message someone else marked \\Deleted in the folder is not expunged with it."""

    def expunged(_daemon: DaemonProcess, proxy: FaultProxy) -> None:
        wait_until(lambda: b"UID EXPUNGE" in proxy.sent)

    done, inbox, sent = move_to_done(
        tmp_path, cb_sim, NO_MOVE, "4300_20261122_100000.csv", expunged
    )
    assert done == ["csv"]
    assert inbox == ["webinar"]  # still there, still \\Deleted
    assert b" MOVE " not in sent and b"UID COPY" in sent


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_session_is_renewed_before_its_lifetime_and_mail_still_lands(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """A planned renewal reconnects at once, is not counted as a reconnect, loses nothing."""
    daemon = start_daemon(extra_imap="  session_lifetime: 2s\n")
    daemon.wait_event("imap.session_renewed")
    connected = daemon.wait_for(
        lambda e: e.get("event") == "imap.connected",
        start=len(daemon.events) - 1,
    )
    cb_sim.publish("4300_20261122_090000.csv", b"x\r\n")
    imap_server.deliver(mail.notification("4300_20261122_090000.csv"), imap_folder)
    daemon.wait_event("delivery.downloaded", filename="4300_20261122_090000.csv")
    assert connected
    assert not daemon.named("imap.disconnected")
    assert not daemon.named("imap.reconnecting")
    config = tmp_path / "config.yaml"
    status = subprocess.run(
        [sys.executable, "-m", "scorefetch", "status", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    watcher = json.loads(status.stdout)["watcher"]
    assert watcher.get("reconnects", {"value": "0"})["value"] == "0"
    assert daemon.stop() == 0


def test_processed_folder_must_differ_from_the_watched_one(tmp_path: Path) -> None:
    """processed_folder equal to the watched folder is a config error."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"download_dir: {tmp_path}/f\nstate_dir: {tmp_path}/s\n"
        "imap: {host: 127.0.0.1, security: plain, username: u, password: p,"
        " folder: INBOX, processed_folder: INBOX}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "scorefetch", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 78
    assert "imap.processed_folder: must differ from folder" in done.stderr


def test_backoff_is_full_jitter_between_one_second_and_five_minutes() -> None:
    """Reconnect delays are full jitter with a ceiling that doubles from 1 s to 5 min."""
    rng = random.Random(7)
    for failures in range(40):
        ceiling = min(300.0, 2.0**failures)
        delays = [backoff_delay(failures, rng) for _ in range(200)]
        assert all(1.0 <= d <= max(1.0, ceiling) for d in delays)
    assert max(backoff_delay(30, rng) for _ in range(500)) > 250  # it does reach the cap


def test_new_uids_filters_the_star_answer() -> None:
    """`UID SEARCH 8:*` on a folder whose top is 5 answers [5]: nothing is new."""
    assert new_uids([5], 7) == []
    assert new_uids([9, 8, 12], 7) == [8, 9, 12]


def test_other_mail_in_a_shared_inbox_costs_only_its_headers(
    start_daemon: Start, cb_sim: CollegeBoardSimulator, imap_server: Any, imap_folder: str
) -> None:
    """Transcripts with PDFs next to a notification: the daemon reads headers, and the
    notification's HTML; bytes through the proxy stay far below one transcript."""
    transcripts = [other_mail(16 * n) for n in range(3)]  # ~1.4 MB each
    with FaultProxy(imap_server.host, imap_server.port) as proxy:
        for item in transcripts:
            imap_server.deliver(item, imap_folder)
        cb_sim.publish("4300_20261122_110000.csv", b"a\r\n")
        imap_server.deliver(mail.notification("4300_20261122_110000.csv"), imap_folder)
        daemon = start_daemon(imap_address=(proxy.host, proxy.port))
        daemon.wait_event("delivery.downloaded", filename="4300_20261122_110000.csv")
        imap_server.deliver(other_mail(32), imap_folder)  # steady state, under IDLE
        wait_until(lambda: len(daemon.named("notification.rejected", reason="sender")) >= 4)
        assert proxy.bytes_to_clients < 100_000, proxy.bytes_to_clients
        assert daemon.stop() == 0


NEITHER = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE CHILDREN"


def test_processed_folder_without_move_or_uidplus_expunges_nothing(
    tmp_path: Path, cb_sim: CollegeBoardSimulator
) -> None:
    """Neither MOVE nor UIDPLUS: the notification is copied and marked \\Deleted, and no
    EXPUNGE is sent, so other mail marked \\Deleted stays."""
    done, inbox, sent = move_to_done(
        tmp_path,
        cb_sim,
        NEITHER,
        "4300_20261122_120000.csv",
        lambda daemon, _: daemon.wait_event("imap.move_without_expunge", processed_folder="Done"),
    )
    assert done == ["csv"]
    assert inbox == ["csv", "webinar"]  # both marked \\Deleted, both kept
    assert b"EXPUNGE" not in sent and b"UID COPY" in sent


def test_a_non_ascii_password_logs_in_with_authenticate_plain(
    tmp_path: Path, cb_sim: CollegeBoardSimulator
) -> None:
    """LOGIN cannot carry it; AUTHENTICATE PLAIN (UTF-8) can, and check-config says so."""
    server = dovecot_or_skip(tmp_path / "dovecot-utf8")
    server.password = "pässwörd-ü€"
    with server:
        cb_sim.publish("4300_20261122_130000.csv", b"a\r\n")
        config = write_config(tmp_path, cb_sim, server)
        daemon = DaemonProcess(config)
        try:
            daemon.wait_event("daemon.ready")
            with IMAPClient(server.host, port=server.port, ssl=False) as client:
                client.plain_login(server.username, server.password)  # LOGIN would fail
                client.append("INBOX", mail.notification("4300_20261122_130000.csv"))
            daemon.wait_event("delivery.downloaded", filename="4300_20261122_130000.csv")
        finally:
            assert daemon.stop() == 0
        assert not daemon.named("imap.auth_failed")
        assert all(server.password not in line for line in daemon.lines)
    done = subprocess.run(
        [sys.executable, "-m", "scorefetch", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "AUTHENTICATE PLAIN" in done.stderr
    assert server.password not in done.stdout + done.stderr
