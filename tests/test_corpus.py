"""Real mail nobody here wrote (tests/corpus/*/, provenance beside it), in the watched
folder as it is and again with its From rewritten to College Board's, between genuine
notifications: the daemon lands every genuine file once and rejects every other message
once, with a reason, within bounded memory, on Dovecot and pymap. The same mail also goes,
in process, through the notification reader and the catch-up (a fake connection), where a
failure names the message."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scorefetch.collegeboard.notifications import (
    Notification,
    Rejection,
    may_be_notification,
    read_notification,
)
from scorefetch.config import ImapConfig
from scorefetch.core import logs
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox.catchup import CatchUp, Refusal
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess
from tests.standins.fakeimap import FakeConnection

CORPUS = Path(__file__).parent / "corpus"
SENDERS = ("@collegeboard.org",)
AT_LEAST = 347  # messages in tests/corpus/*/: the test is only as good as its corpus
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


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*/msg_*.txt"))


def corpus() -> list[bytes]:
    return [delivered(path.read_bytes()) for path in corpus_files()]


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_the_notification_reader_rejects_every_corpus_message_with_a_reason() -> None:
    """read_notification over each whole message, as it is and spoofed: a Rejection with a
    reason, never a Notification or an exception; as it is, for its sender (none of this
    mail is College Board's), and the header screen agrees."""
    files = corpus_files()
    assert len(files) >= AT_LEAST
    wrong: list[str] = []
    for path in files:
        raw = delivered(path.read_bytes())
        for kind, message in (("as it is", raw), ("spoofed", spoofed(raw))):
            try:
                found = read_notification(message, SENDERS)
                screened = may_be_notification(message.partition(b"\r\n\r\n")[0], SENDERS)
            except Exception as exc:  # noqa: BLE001 - reported with the message's name
                wrong.append(f"{_name(path)} {kind}: raised {exc!r}")
                continue
            if not isinstance(found, Rejection) or not found.reason:
                wrong.append(f"{_name(path)} {kind}: {found!r}")
            elif kind == "as it is" and (found.reason != "sender" or screened):
                wrong.append(f"{_name(path)} {kind}: {found.reason} (screened: {screened})")
    assert wrong == []


class _Handler:
    """What the service does with a message handed over (CollegeBoardSource.handle_message
    without the ledger): read it, and keep the outcome per UID."""

    def __init__(self) -> None:
        self.outcomes: dict[int, list[Notification | Rejection | Refusal]] = {}

    def __call__(self, uid: int, raw: bytes | None, refused: Refusal | None) -> bool:
        found = read_notification(raw, SENDERS) if raw is not None else refused
        assert found is not None
        self.outcomes.setdefault(uid, []).append(found)
        return isinstance(found, Notification)


def test_the_catch_up_hands_every_corpus_message_over_once_and_finds_only_the_notifications(
    tmp_path: Path,
) -> None:
    """The catch-up over a folder of the corpus, as it is and spoofed, between genuine
    notifications (a fake connection answering from the same bytes): each message is
    handed over once and rejected with a reason, every notification's file is found, and
    mail from anyone else costs its headers only."""
    box: dict[int, bytes] = {}
    names: dict[int, str] = {}  # uid -> the corpus message and how, or the file announced

    def append(message: bytes, name: str) -> None:
        uid = len(box) + 1
        box[uid], names[uid] = message, name

    for n, path in enumerate(corpus_files()):
        raw = delivered(path.read_bytes())
        append(raw, f"{_name(path)} as it is")
        append(spoofed(raw), f"{_name(path)} spoofed")
        if n % 10 == 0:
            append(mail.notification(f"4300_20261201_{n:06d}.csv"), f"4300_20261201_{n:06d}.csv")
    conn = FakeConnection(box)
    handler = _Handler()
    config = ImapConfig(host="127.0.0.1", security="plain", username="u", password="p")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    catch_up = CatchUp(
        conn,
        config,
        ledger,
        handler,
        screen=lambda headers: may_be_notification(headers, SENDERS),
        stop=threading.Event(),
        tick=lambda: None,
        log=logs.get(),
    )
    assert catch_up.catch_up(7, 0) == len(box)
    assert ledger.mailbox_position("INBOX") == (7, len(box))
    wrong: list[str] = []
    for uid, name in names.items():
        outcomes = handler.outcomes.get(uid, [])
        found = outcomes[0] if len(outcomes) == 1 else None
        if name.endswith(".csv"):
            if not isinstance(found, Notification) or found.filenames != (name,):
                wrong.append(f"{name}: {outcomes!r}")
        elif not isinstance(found, Rejection | Refusal) or not found.reason:
            wrong.append(f"{name}: {outcomes!r}")
        elif name.endswith("as it is") and any(
            "HEADER.FIELDS" not in item and item != "RFC822.SIZE"
            for item in conn.fetched_items(uid)
        ):
            wrong.append(f"{name}: fetched {conn.fetched_items(uid)}")
    assert wrong == []


def test_real_mail_beside_notifications_lands_every_file_once_and_rejects_the_rest(
    start_daemon: Callable[..., DaemonProcess],
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
) -> None:
    """Every corpus message, as it is and spoofed, is notification.rejected once with a
    reason (never internal_error); every genuine notification's file lands once."""
    messages = corpus()
    assert len(messages) >= AT_LEAST
    names = [f"4300_20261201_{n:06d}.csv" for n in range(0, len(messages), 10)]
    with imap_server.client() as client:
        for n, raw in enumerate(messages):
            client.append(imap_folder, raw)
            client.append(imap_folder, spoofed(raw))
            if n % 10 == 0:
                name = names[n // 10]
                cb_sim.publish(name, name.encode())
                client.append(imap_folder, mail.notification(name))
    daemon = start_daemon()
    for name in names:
        daemon.wait_event("delivery.downloaded", filename=name, timeout=60)
    expected = 2 * len(messages)
    daemon.wait_for(lambda _: len(daemon.named("notification.rejected")) >= expected, timeout=60)
    rejected = daemon.named("notification.rejected")
    settled_s = max(e["_at"] for e in rejected) - daemon.started  # the figures, for the note
    peak_mb = _peak_rss_mb(daemon.proc.pid)
    print(
        f"\ncorpus: {len(messages)} messages ({2 * len(messages)} appended, as they are and"
        f" spoofed) + {len(names)} notifications; first start to the last rejection"
        f" {settled_s:.1f} s; peak RSS {peak_mb:.0f} MB"
    )
    uids = Counter(e["uid"] for e in rejected)
    assert len(rejected) == expected and max(uids.values()) == 1
    assert all(e.get("reason") and e["reason"] != "internal_error" for e in rejected)
    downloaded = Counter(e["filename"] for e in daemon.named("delivery.downloaded"))
    assert set(downloaded.values()) == {1}
    assert peak_mb < 200
    assert daemon.stop() == 0
