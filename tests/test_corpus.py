"""Real mail nobody here wrote (tests/corpus/*/, provenance beside it), in the watched
folder as it is and again with its From rewritten to College Board's, between genuine
notifications: the daemon lands every genuine file once and rejects every other message
once, with a reason, within bounded memory, on Dovecot and pymap."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess

CORPUS = Path(__file__).parent / "corpus"
CB_FROM = b"From: College Board Reporting <reportingportal@collegeboard.org>"
_FROM = re.compile(rb"^From:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", re.I | re.M)


def delivered(raw: bytes) -> bytes:
    """As an MTA hands it over: no mbox `From ` line, CRLF line ends."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def spoofed(raw: bytes) -> bytes:
    """`raw` with its From (in the header block) College Board's, or one added."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    head, found = _FROM.subn(CB_FROM.replace(b"\\", b"\\\\"), head, count=1)
    if not found:
        head = CB_FROM + b"\r\n" + head
    return head + sep + body


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def corpus() -> list[bytes]:
    return [delivered(path.read_bytes()) for path in sorted(CORPUS.glob("*/msg_*.txt"))]


def test_real_mail_beside_notifications_lands_every_file_once_and_rejects_the_rest(
    start_daemon: Callable[..., DaemonProcess],
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
) -> None:
    """Every corpus message, as it is and spoofed, is notification.rejected once with a
    reason (never internal_error); every genuine notification's file lands once."""
    messages = corpus()
    assert len(messages) >= 40
    names = [f"4300_20261201_{n:06d}.csv" for n in range(6)]
    with imap_server.client() as client:
        for n, raw in enumerate(messages):
            client.append(imap_folder, raw)
            client.append(imap_folder, spoofed(raw))
            if n % 10 == 0:
                name = names[n // 10]
                cb_sim.publish(name, name.encode())
                client.append(imap_folder, mail.notification(name))
    daemon = start_daemon()
    for name in names[: len(messages) // 10 + 1]:
        daemon.wait_event("delivery.downloaded", filename=name, timeout=60)
    expected = 2 * len(messages)
    daemon.wait_for(lambda _: len(daemon.named("notification.rejected")) >= expected, timeout=60)
    rejected = daemon.named("notification.rejected")
    uids = Counter(e["uid"] for e in rejected)
    assert len(rejected) == expected and max(uids.values()) == 1
    assert all(e.get("reason") and e["reason"] != "internal_error" for e in rejected)
    downloaded = Counter(e["filename"] for e in daemon.named("delivery.downloaded"))
    assert set(downloaded.values()) == {1}
    assert _peak_rss_mb(daemon.proc.pid) < 200
    assert daemon.stop() == 0
