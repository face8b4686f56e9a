"""The shared-inbox benchmark: the daemon on a busy admissions inbox (Dovecot).

1,500 other messages (~400 MB: student questions, newsletters, transcripts with a 1 MB
PDF attached; a few College Board newsletters from an allowed sender) and three
notifications whose From is plain, folded and encoded-word in odd case. Everything is
generated deterministically and appended with MULTIAPPEND before the daemon starts.
The daemon reaches Dovecot through a counting proxy: every byte the server sends it
is counted, at first start and in steady state (more mail while it idles).
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.standins.dovecot import DovecotServer
from tests.standins.proxy import FaultProxy

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config

PDF_BYTES = 1024 * 1024
APPEND_CHUNK_BYTES = 32 * 1024 * 1024
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # fixed, so the bytes are the same every run


@dataclass
class SharedInboxResult:
    other_messages: int
    other_bytes: int
    first_start_s: float  # daemon start → the last notification's file in place
    first_scan_bytes: int  # sent by the server until every message was handled
    steady_messages: int
    steady_other_bytes: int
    steady_bytes: int
    peak_rss: int


def _text(rng: random.Random, words: int) -> str:
    vocabulary = "admission transcript deadline essay campus visit financial aid form"
    pool = vocabulary.split()
    lines, line = [], []
    for _ in range(words):
        line.append(rng.choice(pool))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\r\n".join(lines)


def other_mail(i: int) -> bytes:
    """Message `i` of the other mail: 3 in 16 a transcript with a 1 MB PDF, 4 in 16 a
    newsletter (every tenth of those from College Board), the rest a short question."""
    rng = random.Random(i)
    kind = i % 16
    sender = f"Student {i} <student{i}@mail.example.com>"
    subject = f"Question {i}"
    html_words = 60
    if 3 <= kind <= 6:
        news_from_cb = (i // 16) % 10 == 0
        sender = (
            "College Board <news@collegeboard.org>"
            if news_from_cb
            else f"Newsletter <news{i % 7}@lists.example.org>"
        )
        subject, html_words = f"Newsletter {i}", 5000
    body = _text(rng, html_words)
    when = (NOW - timedelta(days=i % 10, minutes=i)).strftime("%a, %d %b %Y %H:%M:%S +0000")
    head = (
        f"From: {sender}\r\nTo: admissions@example.edu\r\nSubject: {subject}\r\n"
        f"Date: {when}\r\nMessage-ID: <other-{i}@bench.example>\r\nMIME-Version: 1.0\r\n"
    )
    alternative = (
        f'Content-Type: multipart/alternative; boundary="a{i}"\r\n\r\n'
        f"--a{i}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body[:400]}\r\n"
        f"--a{i}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"<html><body><p>{body}</p></body></html>\r\n--a{i}--\r\n"
    )
    if kind > 2:
        return (head + alternative).encode()
    pdf = base64.encodebytes(rng.randbytes(PDF_BYTES)).replace(b"\n", b"\r\n")
    return (
        (
            head
            + f'Content-Type: multipart/mixed; boundary="m{i}"\r\n\r\n'
            + f"--m{i}\r\n"
            + alternative
            + f"--m{i}\r\nContent-Type: application/pdf; name=transcript-{i}.pdf\r\n"
            + f"Content-Disposition: attachment; filename=transcript-{i}.pdf\r\n"
            + "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + pdf
        + f"--m{i}--\r\n".encode()
    )


def notifications(names: list[str]) -> list[bytes]:
    """Notifications whose From is plain, folded, and an encoded word in odd case."""
    plain = b"From: College Board Reporting <reportingportal@collegeboard.org>\r\n"
    variants = [
        plain,
        b"From: College Board Reporting\r\n <reportingportal@collegeboard.org>\r\n",
        b"FROM: =?utf-8?q?College_Board?= <ReportingPortal@CollegeBoard.ORG>\r\n",
    ]
    found = []
    for n, name in enumerate(names):
        raw = mail.notification(name)
        assert plain in raw
        found.append(raw.replace(plain, variants[n % len(variants)]))
    return found


def _chunks(messages: Iterator[tuple[bytes, datetime]]) -> Iterator[list[dict[str, object]]]:
    chunk: list[dict[str, object]] = []
    size = 0
    for raw, when in messages:
        chunk.append({"msg": raw, "date": when})
        size += len(raw)
        if size >= APPEND_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def fill(server: DovecotServer, first: int, count: int, notices: dict[int, bytes]) -> int:
    """Append other mail `first`…`first+count-1` with the notifications at their positions;
    the other mail's bytes."""
    total = 0

    def messages() -> Iterator[tuple[bytes, datetime]]:
        nonlocal total
        for i in range(first, first + count):
            if i in notices:
                yield notices[i], NOW - timedelta(hours=1)
            raw = other_mail(i)
            total += len(raw)
            yield raw, NOW - timedelta(days=i % 10, minutes=i)

    with server.client(timeout=120) as client:
        for chunk in _chunks(messages()):
            client.multiappend("INBOX", chunk)
    return total


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _wait_handled(daemon: DaemonProcess, count: int, timeout: float) -> None:
    """Until `count` messages were rejected (every other mail is), or fail."""
    deadline = time.monotonic() + timeout
    while len(daemon.named("notification.rejected")) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(daemon.named('notification.rejected'))}/{count}")
        time.sleep(0.05)


def shared_inbox(folder: Path, others: int = 1500, steady: int = 150) -> SharedInboxResult:
    names = [f"4300_20261129_{n:06d}.csv" for n in range(4)]
    notices = notifications(names)
    spots = {others * (k + 1) // 4: notices[k] for k in range(3)}
    with CollegeBoardSimulator() as sim, DovecotServer(folder / "dovecot") as server:
        for name in names:
            sim.publish(name, random.Random(name).randbytes(100 * 1024))
        other_bytes = fill(server, 0, others, spots)
        with FaultProxy(server.host, server.port) as proxy:
            # The mail is dated up to 10 days before NOW (fixed): the first start must look
            # back past it however long ago NOW is (14 days stopped covering it on 12-07).
            lookback = (datetime.now(UTC) - NOW).days + 14
            config = write_config(
                folder, sim, server, imap_address=(proxy.host, proxy.port), lookback_days=lookback
            )
            began = time.monotonic()
            daemon = DaemonProcess(config)
            try:
                last = 0.0
                for name in names[:3]:
                    event = daemon.wait_event("delivery.downloaded", timeout=600, filename=name)
                    last = max(last, event["_at"])
                _wait_handled(daemon, others, 600)
                first_bytes = proxy.bytes_to_clients
                steady_bytes = fill(server, others, steady, {others + steady // 2: notices[3]})
                daemon.wait_event("delivery.downloaded", timeout=600, filename=names[3])
                _wait_handled(daemon, others + steady, 600)
                time.sleep(1.0)  # the IDLE that follows
                steady_sent = proxy.bytes_to_clients - first_bytes
                rss = _peak_rss(daemon.proc.pid)
            finally:
                daemon.stop()
    return SharedInboxResult(
        other_messages=others,
        other_bytes=other_bytes,
        first_start_s=last - began,
        first_scan_bytes=first_bytes,
        steady_messages=steady,
        steady_other_bytes=steady_bytes,
        steady_bytes=steady_sent,
        peak_rss=rss,
    )


def rows(result: SharedInboxResult) -> list[tuple[str, str, str, str]]:
    """The results-table rows: bytes at first start and in steady state, time and RSS."""
    first = result.first_scan_bytes / result.other_bytes
    steady = result.steady_bytes / result.steady_other_bytes
    return [
        (
            f"shared inbox, first start: {result.other_messages} other messages "
            f"({result.other_bytes / 1e6:.0f} MB) + 3 notifications, Dovecot",
            f"files in {result.first_start_s:.2f} s; fetched "
            f"{result.first_scan_bytes / 1e6:.1f} MB ({first:.1%} of the other mail); "
            f"peak RSS {result.peak_rss / 1e6:.0f} MB",
            "≤ 10 s, ≤ 5%, RSS < 80 MB",
            "met"
            if result.first_start_s <= 10 and first <= 0.05 and result.peak_rss < 80e6
            else "missed",
        ),
        (
            f"shared inbox, steady state: {result.steady_messages} more "
            f"({result.steady_other_bytes / 1e6:.0f} MB) + 1 notification under IDLE",
            f"fetched {result.steady_bytes / 1e6:.1f} MB ({steady:.1%} of the other mail)",
            "≤ 5%",
            "met" if steady <= 0.05 else "missed",
        ),
    ]
