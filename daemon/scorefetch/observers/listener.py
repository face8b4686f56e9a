"""The metrics HTTP endpoint (`metrics.listen`): bounded whatever connects to it.

prometheus_client's `start_http_server` (what served metrics once) runs a thread per
connection with no timeout and no cap: about a thousand idle connections took every file
descriptor of the daemon, and every vendor call failed with EMFILE. Here one thread
serves every connection (selectors, non-blocking): a request is read within DEADLINE_S
and MAX_REQUEST bytes, at most MAX_CONNECTIONS are open at once (the oldest is closed
for a new one), and the answer is written with a WRITE_TIMEOUT_S bound. An idle
connection costs a descriptor for a few seconds, never a thread, and never holds up a
scrape.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_CONNECTIONS = 64
MAX_REQUEST = 8192  # bytes of request line and headers; a scrape sends a few hundred
DEADLINE_S = 5.0  # from accept to the end of the request's headers
WRITE_TIMEOUT_S = 5.0
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format


@dataclass
class _Client:
    deadline: float
    request: bytearray = field(default_factory=bytearray)


class MetricsListener:
    """Serves `render()` on (host, port) until `close()`; OSError when it cannot listen."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self._sock.setblocking(False)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._render = render
        self._clients: dict[socket.socket, _Client] = {}  # oldest first
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    def start(self) -> MetricsListener:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._closed.is_set():
            now = time.monotonic()
            for sock in [s for s, c in self._clients.items() if c.deadline <= now]:
                self._drop(sock)
            wait = min((c.deadline for c in self._clients.values()), default=now + 60) - now
            for key, _ in self._selector.select(max(0.0, wait)):
                ready = key.fileobj
                if ready is self._sock:
                    self._accept()
                elif ready is not self._wake_r and isinstance(ready, socket.socket):
                    self._read(ready)
        for sock in list(self._clients):
            self._drop(sock)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the next round tries again
            if len(self._clients) >= MAX_CONNECTIONS:
                self._drop(next(iter(self._clients)))  # the oldest: likely idle
            conn.setblocking(False)
            self._clients[conn] = _Client(time.monotonic() + DEADLINE_S)
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        client = self._clients.get(sock)
        if client is None:
            return
        try:
            chunk = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        client.request += chunk
        if not chunk or len(client.request) > MAX_REQUEST:
            self._drop(sock)
        elif b"\r\n\r\n" in client.request or b"\n\n" in client.request:
            self._answer(sock, bytes(client.request))

    def _answer(self, sock: socket.socket, request: bytes) -> None:
        method = request.split(b" ", 1)[0]
        if method in (b"GET", b"HEAD"):
            try:
                body = self._render()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE + b"\r\n"
            except Exception:  # noqa: BLE001 - a failed scrape must not end the listener
                body = b"metrics unavailable\n"
                head = b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
        else:
            body = b"GET only\n"
            head = b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain\r\n"
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        self._selector.unregister(sock)
        del self._clients[sock]
        try:
            sock.settimeout(WRITE_TIMEOUT_S)
            sock.sendall(head + (body if method != b"HEAD" else b""))
        except OSError:
            pass
        finally:
            sock.close()

    def _drop(self, sock: socket.socket) -> None:
        if self._clients.pop(sock, None) is not None:
            self._selector.unregister(sock)
        sock.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=WRITE_TIMEOUT_S + 1)
        self._selector.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()
