"""The Dovecot sandbox: a real IMAP server in a temporary folder on a free loopback port."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins.dovecot import DovecotServer, dovecot_binary

pytestmark = pytest.mark.e2e  # every test here starts a Dovecot

if dovecot_binary() is None:
    if os.environ.get("SCOREFETCH_REQUIRE_DOVECOT") == "1":
        pytest.fail("SCOREFETCH_REQUIRE_DOVECOT=1 but dovecot is not installed", pytrace=False)
    pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)", allow_module_level=True)


def message(subject: str) -> bytes:
    return (
        f"From: scores@collegeboard.org\r\nTo: scores@example.edu\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@sandbox>\r\n\r\nNew scores are available.\r\n"
    ).encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DovecotServer]:
    with DovecotServer(tmp_path / "dovecot") as running:
        yield running


def fetch_all(server: DovecotServer) -> list[bytes]:
    with server.client() as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[]"])
        return [fetched[uid][b"BODY[]"] for uid in sorted(uids)]


def test_delivered_message_is_served_byte_for_byte(server: DovecotServer) -> None:
    """A delivered message is found by UID SEARCH ALL and fetched back unchanged."""
    raw = message("SAT scores ready")
    server.deliver(raw)
    assert fetch_all(server) == [raw]
    assert server.log_path.is_file()


def test_restart_keeps_mail_and_port(server: DovecotServer) -> None:
    """While stopped nothing listens; start() again serves the earlier mail on the same port."""
    first = message("before the outage")
    server.deliver(first)
    port = server.port
    server.stop()
    with pytest.raises(OSError):
        server.deliver(message("during the outage"))
    server.start()
    assert server.port == port
    assert fetch_all(server) == [first]


def test_idle_reports_append_from_another_client(server: DovecotServer) -> None:
    """A client in IDLE hears about a message another client appends, within 3 s."""
    with server.client() as watcher:
        watcher.select_folder("INBOX")
        watcher.idle()
        server.deliver(message("pushed"))
        deadline = time.monotonic() + 3
        responses: list[object] = []
        while time.monotonic() < deadline and not responses:
            responses = watcher.idle_check(timeout=max(0.0, deadline - time.monotonic()))
        watcher.idle_done()
    assert (1, b"EXISTS") in responses


def test_parallel_instances_are_independent(tmp_path: Path) -> None:
    """Two instances in different folders run at once, each with its own port and mail."""
    with (
        DovecotServer(tmp_path / "a") as first,
        DovecotServer(tmp_path / "b", username="other@example.edu") as second,
    ):
        assert first.port != second.port
        first.deliver(message("only in a"))
        assert fetch_all(second) == []
        assert fetch_all(first) == [message("only in a")]
