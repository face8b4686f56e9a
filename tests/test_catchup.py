"""The catch-up, the moves and the reconnect policy, against a fake connection
(tests/standins/fakeimap.py): what is fetched, in what order, and what is handed over."""

from __future__ import annotations

import imaplib
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from bench.shared_inbox import other_mail

from scorefetch.collegeboard.notifications import (
    Notification,
    may_be_notification,
    read_notification,
)
from scorefetch.config import ImapConfig
from scorefetch.core import logs
from scorefetch.core.errors import MailboxAuthError, MailboxError
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox import catchup, messages
from scorefetch.mailbox.catchup import CatchUp, Refusal
from scorefetch.mailbox.connection import FetchFailed
from scorefetch.mailbox.watcher import AUTH_BACKOFF_S, MailboxWatcher
from scorefetch.sandbox import mail
from tests.standins.fakeimap import FakeConnection
from tests.support import LogLines

SENDERS = ("@collegeboard.org",)
PLAIN_FROM = b"From: College Board Reporting <reportingportal@collegeboard.org>\r\n"


def with_from(raw: bytes, header: bytes) -> bytes:
    assert PLAIN_FROM in raw
    return raw.replace(PLAIN_FROM, header)


def transcript(i: int) -> bytes:
    """A student's mail with a 1 MB PDF attached (the bulk of a shared inbox)."""
    raw = other_mail(i * 16)  # kind 0: a transcript with a 1 MB PDF
    assert b"application/pdf" in raw
    return raw


def screen(headers: bytes) -> bool:
    return may_be_notification(headers, SENDERS)


class Recorder:
    """The handler: reads what it is given as the service does, and keeps the outcome."""

    def __init__(self, conn: FakeConnection | None = None) -> None:
        self.seen: list[tuple[int, Any, str]] = []
        self.timeline: list[tuple[str, int]] = []
        self.refusals: list[Refusal | None] = []
        self.conn = conn

    def __call__(self, uid: int, raw: bytes | None, refused: Refusal | None) -> bool:
        result = read_notification(raw, SENDERS) if raw is not None else None
        self.seen.append((uid, result, refused.reason if refused else ""))
        self.refusals.append(refused)
        self.timeline.append(("handle", uid))
        return isinstance(result, Notification)

    def names(self) -> list[str]:
        return [n for _, r, _ in self.seen if isinstance(r, Notification) for n in r.filenames]


def make(
    tmp_path: Path, conn: FakeConnection, handler: Recorder, **imap: Any
) -> tuple[CatchUp, Ledger, list[str]]:
    config = ImapConfig(host="127.0.0.1", security="plain", username="u", password="p", **imap)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ticks: list[str] = []
    runner = CatchUp(
        conn,
        config,
        ledger,
        handler,
        screen=screen,
        stop=threading.Event(),
        tick=lambda: ticks.append("tick"),
        log=logs.get(),
    )
    return runner, ledger, ticks


def _body_fetch(items: Any) -> bool:
    """Whether a FETCH asks for more than a message's size and judged headers."""
    return any("HEADER.FIELDS" not in i and i != "RFC822.SIZE" for i in items)


@pytest.mark.parametrize("whole", [True, False], ids=["small-read-whole", "large-by-structure"])
def test_other_mail_costs_its_headers_and_notifications_only_their_html(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    """Non-candidates get one header FETCH and nothing else. A candidate as small as a
    notification is read whole; a larger one has its HTML part fetched, never its text
    part or another message's attachment."""
    if not whole:
        monkeypatch.setattr(messages, "MAX_WHOLE_BYTES", 100)
    box = {1: transcript(1), 2: mail.notification("a.csv"), 3: transcript(2), 4: mail.marketing()}
    conn = FakeConnection(box)
    handler = Recorder()
    runner, ledger, _ = make(tmp_path, conn, handler)
    assert runner.catch_up(7, 0) == 4
    for uid in (1, 3):
        assert not _body_fetch(conn.fetched_items(uid)), uid
    sections = [i.split("<")[0] for i in conn.fetched_items(2)]
    if whole:
        assert "BODY.PEEK[TEXT]" in sections and "BODYSTRUCTURE" not in sections
    else:
        assert "BODY.PEEK[2]" in sections and "BODY.PEEK[1]" not in sections
        assert "BODY.PEEK[TEXT]" not in sections
    assert conn.answered < 30_000  # two transcripts weigh ~2.8 MB
    assert handler.names() == ["a.csv"]
    assert [(u, r.reason if r else None) for u, r, _ in handler.seen if u != 2] == [
        (1, "sender"),
        (3, "sender"),
        (4, "no_filename"),
    ]
    assert ledger.mailbox_position("INBOX") == (7, 4)


@pytest.mark.parametrize(
    "header",
    [
        PLAIN_FROM,
        b"From: College Board Reporting\r\n <reportingportal@collegeboard.org>\r\n",
        b"FROM: =?utf-8?q?College_Board?= <ReportingPortal@CollegeBoard.ORG>\r\n",
        b"from: =?utf-8?b?Q29sbGVnZSBCb2FyZA==?=\r\n\t<REPORTINGPORTAL@COLLEGEBOARD.ORG>\r\n",
    ],
    ids=["plain", "folded", "encoded-word", "folded-encoded-upper"],
)
def test_a_notification_is_found_whatever_the_shape_of_its_from(
    tmp_path: Path, header: bytes
) -> None:
    """The header screen and the full read agree on folded, encoded-word, odd-case From."""
    conn = FakeConnection({5: with_from(mail.notification("b.csv"), header)})
    handler = Recorder()
    make(tmp_path, conn, handler)[0].catch_up(7, 0)
    assert handler.names() == ["b.csv"]


@pytest.mark.parametrize(
    "raw",
    [
        mail.notification("c.csv", with_text=False, html_encoding="base64"),
        mail.notification("c.csv", html_encoding="8bit", charset="iso-8859-1"),
        mail.notification("c.csv", html_encoding="7bit"),
    ],
    ids=["single-part-base64", "latin1-8bit", "7bit"],
)
def test_any_transfer_encoding_and_single_part_messages(tmp_path: Path, raw: bytes) -> None:
    """The HTML part is read in any transfer encoding, also as a message's only body."""
    handler = Recorder()
    make(tmp_path, FakeConnection({1: raw}), handler)[0].catch_up(7, 0)
    assert handler.names() == ["c.csv"]


def test_a_forged_header_inside_a_part_is_not_taken_for_the_messages_own(tmp_path: Path) -> None:
    """Only Content-* lines of a part's MIME header reach the assembled message."""
    raw = mail.notification("d.csv")
    forged = b'Content-Type: text/html; charset="utf-8"\r\nFrom: x@evil.example\r\n'
    assert b'Content-Type: text/html; charset="utf-8"\r\n' in raw
    raw = raw.replace(b'Content-Type: text/html; charset="utf-8"\r\n', forged, 1)
    handler = Recorder()
    make(tmp_path, FakeConnection({1: raw}), handler)[0].catch_up(7, 0)
    assert handler.names() == ["d.csv"]  # the part's From did not become a second From


def test_a_huge_html_part_from_an_allowed_sender_is_refused_unfetched(tmp_path: Path) -> None:
    """A spoofed-From mail with a 5 MB HTML part: too_large, its body never fetched."""
    huge = mail.notification("e.csv", span='<span id="fileName">e.csv</span>' + "x" * 5_000_000)
    conn = FakeConnection({1: huge, 2: mail.notification("f.csv")})
    handler = Recorder()
    make(tmp_path, conn, handler)[0].catch_up(7, 0)
    assert handler.seen[0] == (1, None, "too_large")
    assert not [i for i in conn.fetched_items(1) if "BODY.PEEK[2" in i or "TEXT" in i]
    assert handler.names() == ["f.csv"]


def test_bodies_held_at_once_are_bounded_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetched HTML is handed over before more is fetched once a byte budget is reached."""
    monkeypatch.setattr(catchup, "BODY_BATCH_BYTES", 20_000)
    pad = "<p>" + "y" * 9_000 + "</p>"
    box = {u: mail.notification(f"{u}.csv", span=f'<span id="fileName">{u}.csv</span>{pad}')
           for u in range(1, 11)}  # fmt: skip
    conn = FakeConnection(box)
    handler = Recorder()
    runner = make(tmp_path, conn, handler)[0]
    fetched: list[int] = []
    real_fetch = conn.fetch

    def fetch(uids: Any, items: Any) -> Any:
        if _body_fetch(items) and items != ["BODYSTRUCTURE"]:
            fetched.extend(uids)
            handler.timeline.extend(("body", uid) for uid in uids)
        return real_fetch(uids, items)

    conn.fetch = fetch  # type: ignore[method-assign]
    runner.catch_up(7, 0)
    assert len(handler.names()) == 10
    held = most = 0
    for what, _ in handler.timeline:
        held += 1 if what == "body" else -1 if held else 0
        most = max(most, held)
    assert most <= 3  # ~10 KB each against a 20 KB budget


def test_the_watchdog_hears_of_every_message(tmp_path: Path) -> None:
    """tick() runs at least once per message handed over, so a long scan keeps it fed."""
    box = {u: mail.marketing() if u % 2 else mail.notification(f"{u}.csv") for u in range(1, 41)}
    runner, _, ticks = make(tmp_path, FakeConnection(box), Recorder())
    runner.catch_up(7, 0)
    assert len(ticks) >= 40


def test_position_advances_once_per_message_and_a_restart_handles_nothing_twice(
    tmp_path: Path,
) -> None:
    """Each UID is handed over exactly once across a first scan and a later catch-up."""
    box = {u: mail.marketing() for u in range(1, 6)}
    conn = FakeConnection(box)
    handler = Recorder()
    runner, ledger, _ = make(tmp_path, conn, handler)
    assert runner.starting_uid(7) == 5
    conn.messages[6] = mail.notification("g.csv")
    assert runner.catch_up(7, 5) == 6
    assert runner.catch_up(7, 6) == 6  # `UID SEARCH 7:*` answers 6: nothing new
    assert [u for u, _, _ in handler.seen] == [1, 2, 3, 4, 5, 6]
    assert ledger.mailbox_position("INBOX") == (7, 6)


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        (("MOVE", "UIDPLUS"), ["move"]),
        (("UIDPLUS",), ["copy", "mark_deleted", "uid_expunge"]),
        ((), ["copy", "mark_deleted"]),
    ],
    ids=["move", "uidplus", "neither"],
)
def test_moves_never_expunge_other_mail(
    tmp_path: Path, capabilities: tuple[str, ...], expected: list[str]
) -> None:
    """MOVE; else COPY + \\Deleted + UID EXPUNGE; with neither, no EXPUNGE at all."""
    conn = FakeConnection({1: mail.notification("h.csv")}, capabilities=capabilities)
    runner = make(tmp_path, conn, Recorder(), processed_folder="Done")[0]
    runner.catch_up(7, 0)
    moves = {"move", "copy", "mark_deleted", "uid_expunge", "expunge"}
    assert [name for name, _ in conn.commands if name in moves] == expected
    assert conn.folders["Done"] == [1]


class QuickWatcher(MailboxWatcher):
    """Skips its backoff sleeps (`imap.reconnecting` says how long they would be)."""

    def _sleep(self, seconds: float) -> None:
        pass


def test_backoff_grows_and_a_healthy_cycle_starts_it_again(
    tmp_path: Path, log_lines: LogLines
) -> None:
    """Failures in a row raise the attempt count; a session that got to IDLE resets it;
    a refused login waits AUTH_BACKOFF_S."""
    stop = threading.Event()
    outcomes: list[Any] = [OSError("refused"), OSError("refused"), "healthy", OSError("x")]
    outcomes += [MailboxAuthError("login refused"), "stop"]

    def connect() -> FakeConnection:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        conn = FakeConnection({})
        if outcome == "stop":
            stop.set()
        else:
            conn.fail_on["idle_check"] = OSError("connection reset")
        return conn

    config = ImapConfig(host="127.0.0.1", security="plain", username="u", password="p")
    watcher = QuickWatcher(
        config,
        Ledger(tmp_path / "ledger.sqlite3"),
        lambda *_: False,
        stop,
        lambda: None,
        lambda: None,
        connect=connect,
        rng=random.Random(1),
    )
    watcher.run()
    reconnects = log_lines.events("imap.reconnecting")
    assert [e["attempt"] for e in reconnects] == [1, 2, 1, 2, 2]  # the healthy session reset it
    assert reconnects[4]["delay_s"] == AUTH_BACKOFF_S
    assert not outcomes


def test_assembled_message_keeps_several_html_parts() -> None:
    """Two HTML parts go back together as a multipart/mixed the reader walks whole."""
    head = b"From: a@collegeboard.org\r\nMessage-ID: <m@x>\r\n\r\n"
    parts = [
        b"Content-Type: text/html\r\n\r\n<span id=fileName>i.csv</span>",
        b"Content-Type: text/html\r\n\r\n<span id=fileName>i.txt</span>",
    ]
    found = read_notification(messages.assemble(head, parts), SENDERS)
    assert isinstance(found, Notification) and found.filenames == ("i.csv", "i.txt")


class _Failing(FakeConnection):
    """Fails every FETCH that includes `bad` (as `FetchFailed`, in step or not)."""

    def __init__(self, box: dict[int, bytes], bad: int, in_sync: bool) -> None:
        super().__init__(box)
        self.bad, self.in_sync = bad, in_sync

    def fetch(self, uids: Any, items: Any) -> Any:
        if self.bad in uids and (self.in_sync or _body_fetch(items)):
            self.commands.append(("fetch", (list(uids), list(items))))
            raise FetchFailed("fetch failed: NO [SERVERBUG] broken", in_sync=self.in_sync)
        return super().fetch(uids, items)


def test_a_fetch_the_server_refuses_for_one_message_refuses_only_that_one(tmp_path: Path) -> None:
    """A NO for one message fails its batch: each is then read alone, the bad one is
    `unreadable` with the server's words, and every other notification is read."""
    box = {u: mail.notification(f"{u}.csv") for u in range(1, 6)}
    conn = _Failing(box, bad=3, in_sync=True)
    handler = Recorder()
    runner, ledger, _ = make(tmp_path, conn, handler)
    assert runner.catch_up(7, 0) == 5
    assert handler.names() == ["1.csv", "2.csv", "4.csv", "5.csv"]
    refusal = handler.refusals[2]
    assert refusal is not None and refusal.reason == "unreadable"
    assert "SERVERBUG" in refusal.detail
    assert ledger.mailbox_position("INBOX") == (7, 5)


def test_a_line_over_the_limit_loses_the_connection_and_then_only_that_message(
    tmp_path: Path,
) -> None:
    """Out of step: the run's unread messages become suspects and the session ends; the
    next session reads them one by one and refuses only the bad one."""
    box = {u: mail.notification(f"{u}.csv") for u in range(1, 6)}
    conn = _Failing(box, bad=3, in_sync=False)
    handler = Recorder()
    runner, ledger, _ = make(tmp_path, conn, handler)
    with pytest.raises(MailboxError):
        runner.catch_up(7, 0)
    assert set(runner.suspects) >= {3}
    position = ledger.mailbox_position("INBOX")
    last = position[1] if position else 0
    with pytest.raises(MailboxError):  # the bad one alone: refused, then reconnect
        runner.catch_up(7, last)
    assert runner.catch_up(7, 3) == 5
    assert handler.names() == ["1.csv", "2.csv", "4.csv", "5.csv"]
    assert [u for u, _, reason in handler.seen if reason == "unreadable"] == [3]


class _Dropping(FakeConnection):
    """Loses the connection (imaplib's abort) whenever the body of `bad` is asked."""

    def __init__(self, box: dict[int, bytes], bad: int) -> None:
        super().__init__(box)
        self.bad = bad

    def fetch(self, uids: Any, items: Any) -> Any:
        if self.bad in uids and _body_fetch(items):
            raise imaplib.IMAP4.abort("socket error: unterminated line")
        return super().fetch(uids, items)


def test_a_message_that_drops_the_connection_twice_alone_is_refused(tmp_path: Path) -> None:
    """A server that drops the connection at one message: after the run's messages are
    read one by one, that message losing it twice on its own is `unreadable`."""
    box = {u: mail.notification(f"{u}.csv") for u in range(1, 5)}
    conn = _Dropping(box, bad=2)
    handler = Recorder()
    runner, ledger, _ = make(tmp_path, conn, handler)
    last = 0
    for _ in range(3):  # the run; 2 alone (strike one); 2 alone again (refused)
        with pytest.raises(imaplib.IMAP4.abort):
            runner.catch_up(7, last)
        position = ledger.mailbox_position("INBOX")
        last = position[1] if position else 0
    assert last == 2
    assert runner.catch_up(7, last) == 4
    assert handler.names() == ["1.csv", "3.csv", "4.csv"]
    assert [u for u, _, reason in handler.seen if reason == "unreadable"] == [2]


def test_a_burst_of_notifications_costs_two_fetches(tmp_path: Path) -> None:
    """Sizes and headers in one FETCH, the small candidates whole in one more: a burst
    of notifications costs the round trips of one (no BODYSTRUCTURE each)."""
    box = {u: mail.notification(f"{u}.csv") for u in range(1, 51)}
    box[51] = transcript(1)  # other mail among them still costs its headers only
    conn = FakeConnection(box)
    handler = Recorder()
    make(tmp_path, conn, handler)[0].catch_up(7, 0)
    assert handler.names() == [f"{u}.csv" for u in range(1, 51)]
    fetches = [a for name, a in conn.commands if name == "fetch"]
    assert len(fetches) == 2
    assert fetches[1][0] == list(range(1, 51))
    assert not _body_fetch(conn.fetched_items(51))


def test_a_server_that_understates_a_size_costs_a_bounded_read(tmp_path: Path) -> None:
    """A message said to be small but larger than a whole read's bound: the read stops at
    one byte over it, and the message is read by its structure (its HTML part only),
    so nothing is lost and nothing unbounded is held."""
    pad = "<p>" + "z" * 150_000 + "</p>"
    big = mail.notification("j.csv", span=f'<span id="fileName">j.csv</span>{pad}')
    conn = FakeConnection({1: big, 2: mail.notification("k.csv")})
    conn.sizes[1] = 4_000
    handler = Recorder()
    make(tmp_path, conn, handler)[0].catch_up(7, 0)
    assert handler.names() == ["j.csv", "k.csv"]
    items = conn.fetched_items(1)
    assert f"BODY.PEEK[TEXT]<0.{messages.MAX_WHOLE_BYTES + 1}>" in items
    assert "BODYSTRUCTURE" in items
    assert sum("BODY.PEEK[2]" in i for i in items) == 1  # its HTML part, fetched once


def test_a_whole_read_the_server_refuses_refuses_only_its_culprit(tmp_path: Path) -> None:
    """The batch of whole reads fails for one message: each is read alone, and only that
    one is `unreadable`."""

    class Refusing(FakeConnection):
        def fetch(self, uids: Any, items: Any) -> Any:
            if 2 in uids and any(i.startswith("BODY.PEEK[TEXT]") for i in items):
                self.commands.append(("fetch", (list(uids), list(items))))
                raise FetchFailed("fetch failed: NO [SERVERBUG] broken", in_sync=True)
            return super().fetch(uids, items)

    conn = Refusing({u: mail.notification(f"{u}.csv") for u in range(1, 4)})
    handler = Recorder()
    runner, ledger, _ = make(tmp_path, conn, handler)
    assert runner.catch_up(7, 0) == 3
    assert handler.names() == ["1.csv", "3.csv"]
    assert [u for u, _, reason in handler.seen if reason == "unreadable"] == [2]
    assert ledger.mailbox_position("INBOX") == (7, 3)


def test_a_header_line_the_parser_cannot_read_above_from_does_not_hide_it(tmp_path: Path) -> None:
    """A relay's obsolete-syntax line (`X-Gw : scanned`) above From: Python's parser ends
    the header block there, so a message read as it is would have no From. The reader
    gets the judged lines as the server picked them out, and the notification is read."""
    raw = b"X-Gw : scanned\r\n" + mail.notification("m.csv")
    conn = FakeConnection({1: raw})
    handler = Recorder()
    make(tmp_path, conn, handler)[0].catch_up(7, 0)
    assert handler.names() == ["m.csv"]


def test_understated_size_without_an_html_part_asks_for_nothing_empty(tmp_path: Path) -> None:
    """Said to be small, larger after all, and no HTML part: read by its structure, no
    FETCH of no items (a real server answers BAD), and refused as `no_filename`."""
    big = mail.marketing() + b"<p>" + b"q" * 150_000 + b"</p>\r\n"
    conn = FakeConnection({1: big})
    conn.sizes[1] = 4_000
    handler = Recorder()
    make(tmp_path, conn, handler)[0].catch_up(7, 0)
    assert [a for name, a in conn.commands if name == "fetch" and not a[1]] == []
    assert [(u, r.reason if r else reason) for u, r, reason in handler.seen] == [(1, "no_filename")]
