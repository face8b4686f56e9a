"""A destination that accepts the connection and the login, then never answers: every
step of a session is bounded by the destination's `timeout` (a forwarder thread that
waits for ever forwards nothing again, and holds a shutdown)."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scorefetch.config import SftpDestination
from scorefetch.core.errors import Failure
from scorefetch.forward import ForwardError
from scorefetch.forward.sftp import SftpTarget
from scorefetch.sandbox.sshd import SshServer, sshd_binary

pytestmark = pytest.mark.skipif(sshd_binary() is None, reason="sshd is not installed")


@pytest.fixture
def silent_sftp(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd whose `sftp` subsystem starts and then says nothing (no version)."""
    server = SshServer(tmp_path / "sshd", sftp_subsystem="/bin/sleep 30")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def refusing_sftp(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd whose `sftp` is OpenSSH's sftp-server that refuses one write of a
    session, as a disk full for a moment does, while `server.workdir / "refuse"` exists."""
    script = Path(__file__).parent / "standins" / "sftp_refusing.py"
    trigger = tmp_path / "sshd" / "refuse"
    server = SshServer(
        tmp_path / "sshd", sftp_subsystem=f"{sys.executable} {script} --trigger {trigger} --nth 3"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _target(server: SshServer, timeout: str = "2s") -> SftpTarget:
    config = SftpDestination.model_validate(
        {
            "type": "sftp",
            "host": server.host,
            "port": server.port,
            "username": server.username,
            "private_key": server.client_key,
            "host_key": server.host_key,
            "remote_dir": str(server.root),
            "timeout": timeout,
        }
    )
    return SftpTarget("slate", config)


def _bounded(call: Callable[[], object], seconds: float) -> BaseException | None:
    """Run `call` in a thread; fail the test if it is still running after `seconds`."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds}s"
    return outcome[0]


def test_an_sftp_server_that_never_says_its_version_times_out(
    silent_sftp: SshServer, tmp_path: Path
) -> None:
    """An SFTP server that accepts the login and then says nothing fails within the timeout."""
    local = tmp_path / "4300_20260101_000000.csv"
    local.write_bytes(b"a,b\n")
    target = _target(silent_sftp)
    error = _bounded(lambda: target.upload(local, local.name, "collegeboard", None), 30)
    assert isinstance(error, ForwardError), error
    assert error.kind is Failure.TRANSIENT
    assert "no answer within 2s" in str(error)


def test_the_doctor_probe_times_out_too(silent_sftp: SshServer) -> None:
    """doctor's probe of a silent SFTP server fails within the timeout too."""
    error = _bounded(_target(silent_sftp).probe, 15)
    assert isinstance(error, ForwardError), error


def test_a_refused_write_in_the_middle_of_an_upload_never_lands(
    refusing_sftp: SshServer, tmp_path: Path
) -> None:
    """One write refused among many answered (the remote disk full for a moment, then free
    again): the upload fails and is retried; nothing is renamed into the folder, no part is
    left, and the retry puts the right bytes there. Before, the refusal of a pipelined write
    went unread, the file had the right size with a hole of zeros, and it was delivered."""
    (refusing_sftp.workdir / "refuse").touch()
    local = tmp_path / "big.csv"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    target = _target(refusing_sftp, timeout="10s")
    folder = refusing_sftp.root  # remote_dir of _target
    with pytest.raises(ForwardError) as refused:
        target.upload(local, "big.csv", "collegeboard", None, sha256=digest)
    assert refused.value.kind is Failure.TRANSIENT and "Failure" in str(refused.value)
    assert not (refusing_sftp.workdir / "refuse").exists()  # the fault did fire
    assert sorted(p.name for p in folder.iterdir()) == []
    placed = target.upload(local, "big.csv", "collegeboard", None, sha256=digest)
    assert not placed.already
    assert (folder / "big.csv").read_bytes() == local.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["big.csv"]
