"""`scorefetch doctor`'s imap check and the daemon take one way into the mailbox (the
daemon's Connector): against a real Dovecot serving TLS from a throw-away CA, with a
password that LOGIN cannot carry, doctor passes where the daemon logs in, and where the
daemon is refused (a wrong password, a certificate it does not trust) doctor fails with
the daemon's own words."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch import doctor, sources
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from tests.conftest import dovecot_or_skip
from tests.standins.tls import LoopbackTls, make_loopback_tls

pytestmark = pytest.mark.e2e

PASSWORD = "pässwörd-ü€-secret"  # not ASCII: LOGIN cannot carry it, AUTHENTICATE PLAIN can
Start = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def loopback_tls(tmp_path_factory: pytest.TempPathFactory) -> LoopbackTls:
    return make_loopback_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def imap_server(
    tmp_path_factory: pytest.TempPathFactory, loopback_tls: LoopbackTls
) -> Iterator[Any]:
    """Overrides conftest's: one Dovecot for this module, with a certificate and a
    non-ASCII password."""
    server = dovecot_or_skip(tmp_path_factory.mktemp("dovecot-doctor"))
    server.tls = loopback_tls
    server.password = PASSWORD
    with server:
        yield server


@pytest.fixture
def imap_folder() -> str:
    """Overrides conftest's (which logs in with LOGIN): no mail is delivered here."""
    return "INBOX"


def address(server: Any, security: str) -> tuple[str, int]:
    return server.host, int(server.tls_port if security == "tls" else server.port)


def doctor_imap(config: Path, monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> doctor.Check:
    """doctor's imap check, as `scorefetch doctor` runs it (secrets masked), trusting
    `ca_file` as the daemon started beside it does (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    checks = {
        c.name: c
        for c in doctor.run(sources.load(config), destinations=[], sources=sources.SOURCES)
    }
    return checks["imap"]


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_a_non_ascii_password_passes_doctor_as_it_logs_the_daemon_in(
    start_daemon: Start,
    imap_server: Any,
    loopback_tls: LoopbackTls,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    security: str,
) -> None:
    """The daemon logs in (AUTHENTICATE PLAIN, TLS verified), and so does doctor with the
    same config file; doctor's own IMAP code (LOGIN only) used to fail here."""
    daemon = start_daemon(
        env={"SSL_CERT_FILE": str(loopback_tls.ca_file)},
        imap_address=address(imap_server, security),
        imap_security=security,
    )
    check = doctor_imap(tmp_path / "config.yaml", monkeypatch, loopback_tls.ca_file)
    assert daemon.stop() == 0
    assert check.ok, check.detail
    assert "TLS verified" in check.detail and f"logged in as {imap_server.username}" in check.detail
    assert PASSWORD not in check.detail + check.advice
    assert not daemon.named("imap.auth_failed")


@pytest.mark.parametrize("wrong", ["Wr0ng-secret-123", "wröng-sécret-123"])  # LOGIN, PLAIN
def test_a_wrong_password_fails_doctor_with_the_daemons_words(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    loopback_tls: LoopbackTls,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wrong: str,
) -> None:
    """The daemon logs imap.auth_failed; doctor's FAIL line says the same thing, and
    neither shows the password."""
    config = write_config(
        tmp_path,
        cb_sim,
        imap_server,
        imap_folder=imap_folder,
        imap_address=address(imap_server, "tls"),
        imap_security="tls",
    )
    (tmp_path / "credentials" / "imap_password").write_text(wrong + "\n")
    daemon = start_daemon(wait_ready=False, env={"SSL_CERT_FILE": str(loopback_tls.ca_file)})
    refused = daemon.wait_event("imap.auth_failed")
    check = doctor_imap(config, monkeypatch, loopback_tls.ca_file)
    assert daemon.stop() == 0
    assert not check.ok
    assert refused["error"].startswith(f"login refused for {imap_server.username}: ")
    assert check.detail.endswith(f"TLS verified; {refused['error']}")
    assert "check imap.username and the password" in check.advice
    assert all(wrong not in line for line in [*daemon.lines, check.detail, check.advice])


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_an_untrusted_certificate_fails_doctor_as_it_stops_the_daemon(
    start_daemon: Start,
    imap_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    security: str,
) -> None:
    """Neither trusts the throw-away CA here: the daemon's connection ends at the
    certificate, and doctor names the same reason OpenSSL gave it."""
    daemon = start_daemon(
        wait_ready=False,
        env={"SSL_CERT_FILE": "/nonexistent"},
        imap_address=address(imap_server, security),
        imap_security=security,
    )
    dropped = daemon.wait_event("imap.disconnected")
    check = doctor_imap(tmp_path / "config.yaml", monkeypatch, Path("/nonexistent"))
    assert daemon.stop() == 0
    assert "CERTIFICATE_VERIFY_FAILED" in dropped["error"]
    reason = dropped["error"].rsplit("(", 1)[1].rstrip(")")  # OpenSSL's verify message
    assert not check.ok
    assert f"the TLS certificate does not verify ({reason})" in check.detail
    assert "imap.host must be the name on the server's certificate" in check.advice
