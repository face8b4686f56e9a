"""A loopback TCP relay that breaks on demand, the ways networks break, for the fault
tests and the benchmarks.

It sits between the daemon and an IMAP server and can pass bytes through, `cut()`
every connection (the daemon reads EOF, or a reset), `blackhole()` them (sockets stay
open, nothing moves either way: a peer behind a dead route or a stateful firewall that
forgot the connection), `restore()` them, or `say_bye()` as a server that is going away.
With `split_gap_s` set it hands the client every chunk in two parts that far apart, so
that responses arrive cut mid-line, as TCP may deliver them.
A black hole takes the connections open at the time; with `new=True` also every later
one, which is then accepted but hears nothing, not even a greeting.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

from scorefetch.sandbox.ports import Lifecycle

_CHUNK = 65536
_POLL_S = 0.05  # how often a relay thread looks at the black-hole switch


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.lock = threading.Lock()  # one writer toward the client at a time
        self.closed = threading.Event()
        self.flowing = threading.Event()

    def close(self, reset: bool = False) -> None:
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
            for sock in (self.client, self.server):
                try:
                    if reset:  # linger 0: close() sends RST instead of FIN
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    else:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


class FaultProxy(Lifecycle):
    """Relays 127.0.0.1:`port` to `target_host`:`target_port`, one thread per direction."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, transcript: bool = False) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections taken, for tests that count reconnects
        self.sent = bytearray()  # what clients sent upstream, when `transcript` is on
        self.received = bytearray()  # and what the server sent them
        self.bytes_to_clients = 0  # everything the server sent through, for byte budgets
        self._transcript = transcript
        self.split_gap_s: float | None = None
        # Closes a connection, instead of forwarding, when the client sends these bytes
        # (e.g. b"IDLE\r\n": a server that drops every session before it settles).
        self.cut_when_client_sends: bytes | None = None
        self._hole_new = False
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))  # the same port again after stop()
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone leaves a thread blocked in accept() holding the port.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self.cut()

    def cut(self, reset: bool = False) -> None:
        """Close both sides of every connection: FIN, or RST with `reset`."""
        for link in self._take_links():
            link.close(reset)

    def blackhole(self, new: bool = False) -> None:
        """Stop moving bytes both ways on the open connections (and, with `new`, on
        every later one); every socket stays open."""
        with self._lock:
            self._hole_new = self._hole_new or new
            for link in self._links:
                link.flowing.clear()

    def restore(self) -> None:
        """Move bytes again, including any held back by the black hole."""
        with self._lock:
            self._hole_new = False
            for link in self._links:
                link.flowing.set()

    def say_bye(self, text: bytes = b"* BYE going away\r\n") -> None:
        """Tell every client the server is leaving, then close, as a server shutting down."""
        for link in self._take_links():
            with link.lock, contextlib.suppress(OSError):
                link.client.sendall(text)
            link.close()

    def idling(self) -> bool:
        """With `transcript`: the client's last command is IDLE and the server's last line
        is its go-ahead (`+`), so the client waits in IDLE (an IMAP client behind the proxy
        that handed its last mail over)."""
        last_line = bytes(self.received).rstrip(b"\r\n").rpartition(b"\r\n")[2]
        return bytes(self.sent).endswith(b" IDLE\r\n") and last_line.startswith(b"+")

    def _take_links(self) -> list[_Link]:
        with self._lock:
            links, self._links = self._links, []
        return links

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # upstream down: the client sees its connection closed
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                if not self._hole_new:
                    link.flowing.set()
                self._links.append(link)
                self.accepted += 1
            for src, dst, to_client in ((server, client, True), (client, server, False)):
                threading.Thread(
                    target=self._pump, args=(link, src, dst, to_client), daemon=True
                ).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while not link.closed.is_set():
                if not link.flowing.wait(_POLL_S):
                    continue  # black hole: leave the bytes unread in the kernel
                readable, _, _ = select.select([src], [], [], _POLL_S)
                if not readable or not link.flowing.is_set():
                    continue
                data = src.recv(_CHUNK)
                if not data:
                    break
                if to_client:
                    with link.lock:
                        self._to_client(dst, data)
                    with self._lock:
                        self.bytes_to_clients += len(data)
                    if self._transcript:
                        self.received += data
                else:
                    trigger = self.cut_when_client_sends
                    if trigger is not None and trigger in data:
                        break
                    dst.sendall(data)
                    if self._transcript:
                        self.sent += data
        except (OSError, ValueError):
            pass  # a socket closed under us by cut(), or by the other pump
        link.close()
        with self._lock:
            if link in self._links:
                self._links.remove(link)

    def _to_client(self, sock: socket.socket, data: bytes) -> None:
        gap = self.split_gap_s
        if gap is None or len(data) < 2:
            sock.sendall(data)
            return
        half = len(data) // 2
        sock.sendall(data[:half])
        time.sleep(gap)
        sock.sendall(data[half:])
