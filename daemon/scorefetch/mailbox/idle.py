"""Waiting in IDLE, with a liveness probe.

A peer that goes silent without closing (a black hole: no bytes, no RST) is noticed
within the read timeout: after half of it without a byte from the server, IDLE is
ended and DONE's answer, awaited only until the read timeout is up, is the probe.

At rest the watcher sleeps in one poll() on the socket and a stop pipe (`StopPipe`)
until the server speaks, the probe or the idle timeout is due, or stop is set; without
a stop pipe (a test's fake connection) it looks at the stop flag each TICK_S.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from scorefetch.core.errors import MailboxError
from scorefetch.mailbox import imapwire
from scorefetch.mailbox.connection import Connection

TICK_S = 1.0  # how often the loop looks at the stop flag, without a stop pipe
PROBE_MIN_S = 0.5  # the shortest wait for DONE's answer, however late the probe began


class StopPipe:
    """A pipe that becomes readable when `stop` is set, for poll() beside the socket. Its
    thread waits on the flag and costs nothing until then."""

    def __init__(self, stop: threading.Event) -> None:
        self.fd, self._write = os.pipe2(os.O_CLOEXEC)
        self._stop = stop
        threading.Thread(target=self._ring, name="mailbox-stop", daemon=True).start()

    def _ring(self) -> None:
        self._stop.wait()
        os.write(self._write, b"x")


def wait_in_idle(
    conn: Connection,
    *,
    until: float,
    read_timeout: float,
    stop: threading.Event,
    tick: Callable[[], None],
    stop_pipe: StopPipe | None = None,
) -> None:
    """IDLE has been accepted: wait until the server says something that wakes us,
    `until` (monotonic), half the read timeout of silence, or stop; then DONE. On a
    dead connection the exception skips DONE; the session then drops the socket."""
    # Mail that arrived during the catch-up was announced in the answers to SEARCH or
    # FETCH (or before IDLE's "+"); the server will not say it again while idling.
    if conn.take_new_mail_signals():
        until = 0.0
    while not stop.is_set():
        now = time.monotonic()
        longest = TICK_S if stop_pipe is None else until - now
        wait = min(longest, until - now, conn.heard + read_timeout / 2 - now)
        if wait <= 0:
            break
        tick()
        if stop_pipe is None:
            responses = conn.idle_check(wait)
        else:
            responses = conn.idle_check(wait, stop_pipe.fd)
        for response in responses:
            if imapwire.is_bye(response):
                raise MailboxError(f"server said BYE: {imapwire.words(response[1:])}")
        if any(imapwire.wakes(r) for r in responses):
            break
    # DONE, whose answer is also the liveness probe: awaited only until the read timeout
    # has passed since the server last said anything.
    left = conn.heard + read_timeout - time.monotonic()
    conn.idle_done(max(PROBE_MIN_S, left))
