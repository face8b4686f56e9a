"""The service protocol: READY=1 and WATCHDOG=1 over a real $NOTIFY_SOCKET, clean SIGTERM."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scorefetch.sandbox.daemon import DaemonProcess
from scorefetch.service import Notifier

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    yield sock, path
    sock.close()


def receive_until(sock: socket.socket, wanted: str, timeout: float = 15) -> list[str]:
    """Datagrams received until one contains `wanted`."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.append(sock.recv(4096).decode())
        if wanted in got[-1]:
            return got
    raise AssertionError(f"{wanted!r} never came; got {got}")


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_ready_then_watchdog_then_stopping(
    start_daemon: Callable[..., DaemonProcess], notify_socket: tuple[socket.socket, str]
) -> None:
    """READY=1 comes once local start-up works, WATCHDOG=1 follows, SIGTERM exits 0."""
    sock, path = notify_socket
    began = time.monotonic()
    daemon = start_daemon(wait_ready=False, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    receive_until(sock, "READY=1")
    ready_after = time.monotonic() - began
    # The daemon logs daemon.ready before it sends READY=1; the line reaches this
    # process through a pipe and a reader thread, so it may trail the datagram a little.
    daemon.wait_event("daemon.ready", timeout=5)
    receive_until(sock, "WATCHDOG=1")
    receive_until(sock, "WATCHDOG=1")
    assert daemon.stop() == 0
    receive_until(sock, "STOPPING=1")
    assert ready_after < 15


def test_notifier_abstract_socket_address() -> None:
    """An `@name` NOTIFY_SOCKET is the Linux abstract namespace."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"scorefetch-test-{time.monotonic_ns()}"
    server.bind("\0" + name)
    server.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert server.recv(100) == b"READY=1"
    finally:
        server.close()


def test_notifier_watchdog_interval_is_half() -> None:
    """WATCHDOG_USEC=4s → a ping every 2 s; a WATCHDOG_PID for another process disables it."""
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_ready_with_the_mailbox_unreachable_and_status_says_so(
    start_daemon: Callable[..., DaemonProcess], notify_socket: tuple[socket.socket, str]
) -> None:
    """The mailbox on a closed port: READY=1 all the same (systemd does not kill a daemon
    whose two other triggers work), and STATUS= names the mailbox as not connected."""
    from scorefetch.sandbox.ports import free_port

    sock, path = notify_socket
    daemon = start_daemon(
        wait_ready=False,
        env={"NOTIFY_SOCKET": path},
        imap_address=("127.0.0.1", free_port()),
    )
    got = receive_until(sock, "READY=1")
    assert "mailbox not connected" in got[-1]
    assert daemon.stop() == 0
