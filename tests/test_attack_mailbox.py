"""One message must not stop the mailbox. A spoofed `@collegeboard.org` mail whose
BODYSTRUCTURE line is over imaplib's 1,000,000-byte limit (Dovecot), a multipart nested
150 deep whose FETCH a server fails (pymap), and an HTML part under 21 MB of part
headers: each is refused with a reason and a detail, and the genuine notification
behind them lands. Real servers, the real daemon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess

Start = Callable[..., DaemonProcess]
FROM = "From: College Board Reporting <reportingportal@collegeboard.org>\r\n"


def _message(message_id: str, content_type: str, body: str) -> bytes:
    head = (
        f"{FROM}To: scores@example.edu\r\nSubject: New score report file available\r\n"
        f"Message-ID: <{message_id}@collegeboard.org>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return (head + body).encode()


def long_structure() -> bytes:
    """600 parts with 2,000-character descriptions: a 1.2 MB BODYSTRUCTURE line."""
    parts = "".join(
        f"--b\r\nContent-Type: text/html\r\nContent-Description: {'d' * 2000}\r\n\r\n"
        '<span id="fileName">poison.csv</span>\r\n'
        for _ in range(600)
    )
    return _message("long-structure", 'multipart/mixed; boundary="b"', parts + "--b--\r\n")


def deep_multipart(depth: int = 150) -> bytes:
    """A multipart nested `depth` deep around one HTML part."""
    body = '<span id="fileName">deep.csv</span>\r\n'
    inner = f"Content-Type: text/html\r\n\r\n{body}"
    for level in range(depth, 0, -1):
        inner = (
            f'Content-Type: multipart/mixed; boundary="d{level}"\r\n\r\n'
            f"--d{level}\r\n{inner}\r\n--d{level}--\r\n"
        )
    head, _, rest = inner.partition("\r\n\r\n")
    return _message("deep", head.removeprefix("Content-Type: "), rest)


def fat_part_headers(megabytes: int = 21) -> bytes:
    """A 20-byte HTML part under `megabytes` MB of its own headers."""
    pad = "".join(f"X-Pad-{i}: {'p' * 990}\r\n" for i in range(megabytes * 1024))
    parts = (
        f"--f\r\nContent-Type: text/html\r\n{pad}\r\n"
        '<span id="fileName">fat.csv</span>\r\n--f--\r\n'
    )
    return _message("fat-headers", 'multipart/mixed; boundary="f"', parts)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _uids(imap_server: Any, folder: str) -> dict[str, int]:
    """Message-ID (without its domain) -> UID, as the server has them."""
    with imap_server.client() as client:
        client.select_folder(folder, readonly=True)
        found = client.fetch(client.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    return {
        next(v for k, v in data.items() if k.startswith(b"BODY[")).decode().split("<")[1]
        .split("@")[0]: uid
        for uid, data in found.items()
    }  # fmt: skip


def _rejected(daemon: DaemonProcess, uid: int) -> dict[str, Any]:
    event = daemon.wait_event("notification.rejected", uid=uid)
    assert len(daemon.named("notification.rejected", uid=uid)) == 1
    return event


def test_poison_messages_are_refused_and_the_notification_behind_them_lands(
    start_daemon: Start, cb_sim: CollegeBoardSimulator, imap_server: Any, imap_folder: str
) -> None:
    """Each poison message is notification.rejected (reason, detail, message_id) once and
    the genuine notification after them is downloaded, with flat memory."""
    for raw in (long_structure(), deep_multipart(), fat_part_headers()):
        imap_server.deliver(raw, imap_folder)
    cb_sim.publish("4300_20261201_090000.csv", b"a,b\r\n")
    imap_server.deliver(mail.notification("4300_20261201_090000.csv"), imap_folder)
    daemon = start_daemon()
    daemon.wait_event("delivery.downloaded", filename="4300_20261201_090000.csv", timeout=60)
    uids = _uids(imap_server, imap_folder)
    for message_id in ("long-structure", "deep", "fat-headers"):
        event = _rejected(daemon, uids[message_id])
        assert event["reason"] and event["detail"], event
    fat = _rejected(daemon, uids["fat-headers"])
    assert (fat["reason"], fat["message_id"]) == ("too_large", "<fat-headers@collegeboard.org>")
    assert not daemon.named("delivery.downloaded", filename="poison.csv")
    assert _peak_rss_mb(daemon.proc.pid) < 200
    imap_server.deliver(mail.notification("4300_20261201_090001.csv"), imap_folder)
    cb_sim.publish("4300_20261201_090001.csv", b"c,d\r\n")
    daemon.wait_event("delivery.downloaded", filename="4300_20261201_090001.csv", timeout=60)
    assert daemon.stop() == 0
