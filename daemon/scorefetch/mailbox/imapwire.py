"""The IMAP connection below imapclient's API: socket tuning, whole-line reads in IDLE,
and the untagged responses imaplib keeps.

Everything here that reaches into imapclient's or imaplib's private parts
(`_imap`, `_get_line`, `file`, `untagged_responses`, `_parse_untagged_response`) is in
this module, so an upgrade of either has one place to check (tests/test_faults.py
exercises each path).
"""

from __future__ import annotations

import contextlib
import imaplib
import select
import socket
import ssl
from typing import Any

from imapclient import IMAPClient
from imapclient.imapclient import _parse_untagged_response

from scorefetch.core.errors import MailboxError
from scorefetch.core.logs import untrusted


def tune(sock: socket.socket) -> None:
    """TCP keepalive notices a dead peer; NODELAY stops Nagle from holding a command after
    IDLE's DONE for a delayed ACK (measured: 42 ms per wake-up on loopback)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def drop(client: IMAPClient) -> None:
    """Close the connection without a word. An error here must not hide the one that
    brought us here (a failed STARTTLS handshake leaves imaplib a closed socket: EBADF)."""
    with contextlib.suppress(OSError):
        client.shutdown()


def idle_check(client: IMAPClient, wait: float, wakeup: int | None = None) -> list[Any]:
    """What the server said in IDLE within `wait` seconds: whole lines, read with the read
    timeout once a first byte is there, while more is at hand. (imapclient's idle_check()
    reads non-blocking and so breaks on a line that arrives in two TCP segments.) [] as
    soon as `wakeup` (a file descriptor) is readable."""
    imap = client._imap
    if not pending(client):
        poller = select.poll()
        sock = client.socket().fileno()
        poller.register(sock, select.POLLIN)
        if wakeup is not None:
            poller.register(wakeup, select.POLLIN)
        ready = [fd for fd, _ in poller.poll(wait * 1000)]
        if sock not in ready:
            return []
    responses = []
    while True:
        try:
            line = imap._get_line()
        except imaplib.IMAP4.abort as exc:
            if "EOF" in str(exc):
                raise MailboxError("connection closed by the server") from None
            raise
        responses.append(_parse_untagged_response(line))
        if not pending(client):
            return responses


def pending(client: IMAPClient) -> bool:
    """Whether bytes from the server wait in imaplib's buffer or the socket; never blocks.
    (False at EOF too: the socket then polls readable and the next read says so.)"""
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(client._imap.file.peek(1))
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    finally:
        sock.settimeout(timeout)


def take_new_mail_signals(client: IMAPClient) -> bool:
    """Whether the server said EXISTS/RECENT outside IDLE since the last call; forgets them.
    (imaplib keeps untagged responses until the next SELECT: this also bounds memory.)"""
    untagged: dict[str, list[Any]] = client._imap.untagged_responses
    found = bool(untagged.pop("EXISTS", None)) | bool(untagged.pop("RECENT", None))
    for name in ("FETCH", "EXPUNGE", "OK"):
        untagged.pop(name, None)
    return found


def words(parts: Any) -> str:
    """A parsed response's atoms as text again, e.g. for a BYE's reason: the server's words,
    so cleaned as untrusted text."""
    text = " ".join(p.decode("ascii", "replace") if isinstance(p, bytes) else str(p) for p in parts)
    return untrusted(text)


def is_bye(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) > 0 and response[0] == b"BYE"


def wakes(response: Any) -> bool:
    """EXISTS (new mail) wakes the catch-up; FETCH flag changes and keep-alive OKs do not."""
    return (
        isinstance(response, tuple) and len(response) > 1 and response[1] in (b"EXISTS", b"RECENT")
    )
