"""Untrusted words reach people clean. An SFTP server's error text, an Encoura
organisation's name, a vendor's message: terminal escapes that rewrite `status` or make a
`doctor` FAIL line read "ok", 300 KB errors, a NUL that stopped the on_failure hook.
One function cleans them all (logs.untrusted), where the text comes in; and `doctor`
masks the secrets of every section, the forward destinations' included."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch import doctor, sources
from scorefetch.config import SftpDestination
from scorefetch.core.answers import message_of
from scorefetch.core.errors import ScorefetchError
from scorefetch.core.logs import untrusted
from scorefetch.forward import ForwardError
from scorefetch.forward.sftp import SftpTarget
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.sshd import SshServer, sshd_binary

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
HOSTILE = "\x1b[2K\r\x1b[32mok\x1b[0m  all fine\x00\x07\x9b1A\u202egnp.exe \x1b]0;owned\x07"

# An SFTP server (run by a real sshd as its subsystem) that answers every request after
# INIT with a failure status whose message is TEXT (set by failing_sftp).
_SERVER = r"""
import struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
def packet():
    head = inp.read(4)
    if len(head) < 4:
        sys.exit(0)
    return inp.read(struct.unpack(">I", head)[0])
def send(body):
    out.write(struct.pack(">I", len(body)) + body); out.flush()
packet()
send(b"\x02" + struct.pack(">I", 3))
text = TEXT
while True:
    request = packet()
    send(b"\x65" + request[1:5] + struct.pack(">I", 4)
         + struct.pack(">I", len(text)) + text + struct.pack(">I", 0))
"""


def _clean(text: str) -> None:
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text), repr(text[:200])
    assert "\u202e" not in text


def test_untrusted_removes_escapes_controls_and_secrets_and_caps_length() -> None:
    """Escapes, C0/C1 controls (NUL), bidi overrides go; secrets are scrubbed; 300 chars."""
    cleaned = untrusted(HOSTILE + " password=hunter2 " + "x" * 100_000)
    _clean(cleaned)
    assert "owned" not in cleaned and "hunter2" not in cleaned
    assert cleaned.startswith("ok all fine") and len(cleaned) <= 300
    assert untrusted(b"\xff\x00abc") == "\ufffd abc"


def test_a_vendor_message_is_cleaned() -> None:
    """A vendor's JSON `message` with escapes is cleaned before it reaches an error."""
    _clean(message_of({"message": HOSTILE}, "Not Found"))


@contextlib.contextmanager
def failing_sftp(tmp_path: Path, text: bytes) -> Iterator[SshServer]:
    """A real sshd whose sftp subsystem fails every request with the status message
    `text` (any bytes: escapes, NUL, not UTF-8)."""
    if sshd_binary() is None:
        pytest.skip("sshd is not installed")
    script = tmp_path / "failing_sftp.py"
    script.write_text(f"TEXT = {text!r}\n" + _SERVER)
    server = SshServer(tmp_path / "sshd", sftp_subsystem=f"{sys.executable} {script}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def destination(server: SshServer, **extra: Any) -> SftpDestination:
    return SftpDestination.model_validate(
        {
            "type": "sftp",
            "host": server.host,
            "port": server.port,
            "username": server.username,
            "private_key": server.client_key,
            "host_key": server.host_key,
            "remote_dir": "/incoming",
            "timeout": "5s",
            **extra,
        }
    )


@pytest.fixture
def hostile_sftp(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd whose sftp subsystem fails every request with a hostile message."""
    with failing_sftp(tmp_path, b"\x1b[2K\rok \x00 password=hunter2 " + b"E" * 300_000) as server:
        yield server


def test_an_sftp_servers_error_text_is_cleaned(hostile_sftp: SshServer, tmp_path: Path) -> None:
    """forward.failed's error from a server that answers with escapes, NUL, a password and
    300 KB: one short clean line, nothing of the secret."""
    config = destination(hostile_sftp)
    landed = tmp_path / "4300_20261201_000001.csv"
    landed.write_bytes(b"a,b\r\n")
    with pytest.raises(ForwardError) as caught:
        SftpTarget("slate", config).upload(landed, landed.name, "collegeboard", None)
    error = str(caught.value)
    _clean(error)
    assert len(error) < 400 and "hunter2" not in error


@pytest.fixture
def enc_sim() -> Iterator[EncouraSimulator]:
    names = [HOSTILE, "\x1b[1A\x1b[2Kok    encoura  logged in"]
    orgs = [{"uid": f"org-{i}", "name": name, "fice": "00123"} for i, name in enumerate(names)]
    with EncouraSimulator(organizations=orgs) as sim:
        yield sim


@pytest.mark.e2e
def test_doctor_lines_are_clean_and_every_secret_is_masked(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    enc_sim: EncouraSimulator,
    pymap_server: PymapServer,
) -> None:
    """Organisation names with escapes stay on their FAIL line; a forward destination
    whose server echoes its password shows it masked."""
    path = write_config(tmp_path, cb_sim, pymap_server, encoura=enc_sim)
    (tmp_path / "credentials" / "slate_password").write_text("forward-PASSWORD-42\n")
    with path.open("a") as out:
        out.write(
            textwrap.dedent(f"""\
            forward:
              slate:
                type: sftp
                host: ft.technolutions.net
                username: "example@ft.technolutions.net"
                password_file: credentials/slate_password
                host_key: "{HOST_KEY}"
                remote_dir: /incoming/{{vendor}}
            """)
        )
    config = sources.load(path)

    class Echoing:
        name = "slate"

        def probe(self) -> str:
            raise ScorefetchError("server said: bad password forward-PASSWORD-42\x1b[2K")

    checks = {c.name: c for c in doctor.run(config, [Echoing()], sources=sources.SOURCES)}
    assert not checks["encoura"].ok
    assert "forward-PASSWORD-42" not in checks["forward.slate"].detail
    text = doctor.render(checks.values())
    _clean(text.replace("\n", " "))
    assert "forward-PASSWORD-42" not in text and "owned" not in text


@pytest.mark.e2e
def test_a_non_utf8_sftp_status_is_a_recorded_retried_failure(tmp_path: Path) -> None:
    """A server whose status message is not UTF-8 (paramiko raises UnicodeDecodeError):
    through the work engine it is forward.failed with a retry, recorded in the ledger —
    never a stalled row waiting for a restart."""
    from scorefetch.core.ledger import Ledger
    from scorefetch.forward.forwarder import Forwarder

    with failing_sftp(tmp_path, b"\xe9chec: disque \xff plein") as server:
        config = destination(server, remote_dir="/incoming/{vendor}", retry_schedule=["1h"])
        ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
        path = tmp_path / "4300_20261201_000002.csv"
        path.write_bytes(b"a,b\r\n")
        ledger.claim("collegeboard", path.name, path.name, "notification")
        ledger.downloaded("collegeboard", path.name, path, 5, "ab" * 32, ("slate",))
        forwarder = Forwarder([SftpTarget("slate", config)], ledger)
        forwarder.start()
        assert forwarder.wait_idle(30)
        forwarder.close(5)
        row = ledger.forwards.get("slate", "collegeboard", path.name)
        ledger.close()
    assert row is not None and row.state == "retrying" and row.due_at and row.lease is None
    assert row.error is not None and row.kind == "transient"
    _clean(row.error)
