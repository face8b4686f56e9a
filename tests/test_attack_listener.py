"""An idle socket must not reach the whole daemon. About 1,020 idle TCP connections to
`metrics.listen` (prometheus_client's thread per connection, no timeout, no cap) took
every file descriptor: every vendor call then failed with EMFILE and nothing landed.
The real daemon, with the default soft limit of 1,024, flooded with 1,100 idle
connections held open: a notification still lands and the listener still answers."""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from scorefetch.core.limits import raise_open_files_limit
from scorefetch.observers.listener import MetricsListener
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.ports import free_port
from tests.support import wait_until

FLOOD = 1_100


@pytest.fixture
def imap_server(pymap_server: PymapServer) -> PymapServer:
    """The listener does not depend on the IMAP server: pymap only."""
    return pymap_server


@contextlib.contextmanager
def _soft_nofile(limit: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections that say nothing (connect only), as many as will connect."""
    opened = []
    for _ in range(count):
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    return opened


def _answers(port: int) -> bool:
    try:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except requests.RequestException:
        return False
    return response.status_code == 200 and b"scorefetch_deliveries_total" in response.content


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (EOF, or a reset when our bytes were unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.e2e
def test_a_flood_of_idle_connections_leaves_the_daemon_working(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: PymapServer,
    imap_folder: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """1,100 idle connections held open against a daemon whose soft limit is 1,024: the
    file lands, the daemon holds few descriptors, and a scrape is answered."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 512:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) leaves this process no room for the flood")
    port = free_port()
    path = write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder)
    with path.open("a") as out:
        out.write(f"metrics:\n  listen: 127.0.0.1:{port}\n")
    with _soft_nofile(1024):  # the daemon inherits the default soft limit
        daemon = start_daemon()
    daemon.wait_event("metrics.listening", address=f"127.0.0.1:{port}")
    assert raise_open_files_limit(FLOOD + 512) >= FLOOD + 100  # room for the flood here
    flood = _open_idle(port, FLOOD)
    try:
        assert len(flood) == FLOOD
        cb_sim.publish("4300_20261201_120000.csv", b"a,b\r\n")
        imap_server.deliver(mail.notification("4300_20261201_120000.csv"), imap_folder)
        daemon.wait_event("delivery.downloaded", filename="4300_20261201_120000.csv", timeout=60)
        held = len(list(Path(f"/proc/{daemon.proc.pid}/fd").iterdir()))
        assert held < 200, held
        wait_until(lambda: _answers(port), timeout=60)  # the listener answers, flood or not
    finally:
        for sock in flood:
            sock.close()
    assert _answers(port)
    assert daemon.stop() == 0


def test_the_listener_closes_a_silent_or_oversized_client_and_serves_others() -> None:
    """A client that says nothing is closed by the server, one that sends more than a
    request's bound too; one more than the cap pushes out the oldest; a scrape is served."""
    listener = MetricsListener("127.0.0.1", 0, lambda: b"scorefetch_up 1\n").start()
    port = listener.address[1]
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert _closed_by_server(silent)
        flood = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(65)]
        assert _closed_by_server(flood[0])  # the oldest made room
        big = socket.create_connection(("127.0.0.1", port), timeout=30)
        with contextlib.suppress(OSError):
            big.sendall(b"GET / HTTP/1.0\r\n" + b"X: " + b"y" * 20_000)
        assert _closed_by_server(big)
        answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert answer.status_code == 200 and answer.text == "scorefetch_up 1\n"
        for sock in [silent, big, *flood]:
            sock.close()
    finally:
        listener.close()


def test_a_failing_render_is_a_500_and_the_listener_goes_on() -> None:
    """An exception while rendering answers 500; the next scrape is served again."""
    calls: list[int] = []

    def render() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("ledger locked")
        return b"scorefetch_up 1\n"

    listener = MetricsListener("127.0.0.1", 0, render).start()
    try:
        url = f"http://127.0.0.1:{listener.address[1]}/metrics"
        assert requests.get(url, timeout=10).status_code == 500
        assert requests.get(url, timeout=10).text == "scorefetch_up 1\n"
    finally:
        listener.close()
