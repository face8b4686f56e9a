"""Real IMAP servers for the demo and the tests: pymap (always) and Dovecot (when installed).

Both run as child processes on a free loopback port and speak plain IMAP there
(`imap.security: plain` is accepted for loopback hosts only).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Protocol

from imapclient import IMAPClient

from scorefetch.sandbox.ports import Lifecycle, free_port, wait_for_port


class ImapServer(Protocol):
    """What the demo, the tests and the benchmarks need of an IMAP server."""

    name: str
    host: str
    port: int
    username: str
    password: str

    def start(self) -> None: ...
    def stop(self) -> None: ...


class _ServerBase(Lifecycle):
    name = "imap"
    host = "127.0.0.1"
    port = 0
    username = ""
    password = ""

    def client(self, timeout: float = 10.0) -> IMAPClient:
        """A logged-in client, e.g. to APPEND notifications."""
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=timeout)
        # Without NODELAY each APPEND waits ~40 ms for a delayed ACK before its literal.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.login(self.username, self.password)
        return client

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Append one message, as the MTA would deliver it."""
        with self.client() as client:
            client.append(folder, raw)


class PymapServer(_ServerBase):
    """pymap's in-memory `dict` backend: pure Python, supports IDLE, loses everything on stop."""

    name = "pymap"

    def __init__(
        self, username: str = "scores@example.edu", password: str = "sandbox-imap"
    ) -> None:
        self.username = username
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port(self.host)
        argv = [
            sys.executable,
            "-c",
            "from pymap.main import main; main()",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--no-tls",
            "dict",
            "--demo-user",
            self.username,
            "--demo-password",
            self.password,
        ]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.host, self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
