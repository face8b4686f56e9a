"""IMAP over TLS, with verification on: implicit TLS and STARTTLS against a Dovecot that
serves a certificate from a throw-away CA, through a FaultProxy that splits every TLS
record mid-way or goes silent. The daemon trusts that CA through SSL_CERT_FILE only;
without it the connection is refused before any credential is sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from tests.conftest import dovecot_or_skip
from tests.standins.proxy import FaultProxy
from tests.standins.tls import LoopbackTls, make_loopback_tls
from tests.support import wait_until
from tests.test_faults import (
    FAST,
    READ_TIMEOUT_S,
    SLACK_S,
    Start,
    assert_each_once,
    deliver,
    post,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def loopback_tls(tmp_path_factory: pytest.TempPathFactory) -> LoopbackTls:
    return make_loopback_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def imap_server(
    tmp_path_factory: pytest.TempPathFactory, loopback_tls: LoopbackTls
) -> Iterator[Any]:
    """Overrides conftest's: one Dovecot with a certificate for this module."""
    server = dovecot_or_skip(tmp_path_factory.mktemp("dovecot-tls"))
    server.tls = loopback_tls
    with server:
        yield server


def port_for(server: Any, security: str) -> int:
    return int(server.tls_port if security == "tls" else server.port)


def start_through(
    start_daemon: Start, proxy: FaultProxy, security: str, tls: LoopbackTls | None, **kw: Any
) -> Any:
    env = (
        {"SSL_CERT_FILE": str(tls.ca_file)}
        if tls is not None
        else {"SSL_CERT_FILE": "/nonexistent"}
    )
    return start_daemon(
        env=env,
        imap_address=(proxy.host, proxy.port),
        imap_security=security,
        extra_imap=FAST,
        **kw,
    )


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_with_records_split_mid_way_lands_every_file_on_one_connection(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    loopback_tls: LoopbackTls,
    security: str,
) -> None:
    """Every TLS record from the server reaches the daemon in two parts: IDLE pushes are
    still read whole (decrypted bytes buffered in the TLS layer count as pending), and the
    one verified connection stays up."""
    with FaultProxy(imap_server.host, port_for(imap_server, security)) as proxy:
        proxy.split_gap_s = 0.02
        daemon = start_through(start_daemon, proxy, security, loopback_tls)
        files = {}
        for name in ("4300_20261121_110000.csv", "4300_20261121_111500.csv"):
            files[name] = post(cb_sim, name)
            deliver(imap_server, imap_folder, name)
            daemon.wait_event("delivery.downloaded", filename=name)
            wait_until(imap_server.idling)  # the next mail is an IDLE push
        assert daemon.stop() == 0
    assert not daemon.named("imap.disconnected")
    assert len(daemon.named("imap.connected")) == 1
    assert_each_once([daemon], cb_sim, tmp_path, files)


def test_blackhole_over_tls_is_noticed_within_read_timeout(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    loopback_tls: LoopbackTls,
) -> None:
    """The TLS connection goes silent mid-IDLE: dropped within read_timeout, replaced by a
    new verified connection, and the mail sent into the silence lands once."""
    with FaultProxy(imap_server.host, imap_server.tls_port) as proxy:
        daemon = start_through(start_daemon, proxy, "tls", loopback_tls)
        first = "4300_20261121_112000.csv"
        files = {first: post(cb_sim, first)}
        deliver(imap_server, imap_folder, first)
        daemon.wait_event("delivery.downloaded", filename=first)
        wait_until(imap_server.idling)  # silence falls mid-IDLE
        silenced = time.monotonic()
        proxy.blackhole()
        name = "4300_20261121_113000.csv"
        files[name] = post(cb_sim, name)
        deliver(imap_server, imap_folder, name)
        event = daemon.wait_event("imap.disconnected", timeout=READ_TIMEOUT_S + 10)
        assert event["_at"] - silenced < READ_TIMEOUT_S + SLACK_S
        assert "read_timeout" in event["error"]
        daemon.wait_event("delivery.downloaded", filename=name, timeout=20)
        assert daemon.stop() == 0
    assert len(daemon.named("imap.connected")) == 2
    assert_each_once([daemon], cb_sim, tmp_path, files)


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_untrusted_certificate_is_refused_before_login(
    start_daemon: Start,
    imap_server: Any,
    security: str,
) -> None:
    """A certificate the daemon does not trust ends the connection with a clear error
    before the password is sent, and the daemon keeps retrying (never downgrading)."""
    with FaultProxy(imap_server.host, port_for(imap_server, security), transcript=True) as proxy:
        daemon = start_through(start_daemon, proxy, security, None, wait_ready=False)
        first = daemon.wait_event("imap.disconnected", timeout=20)
        daemon.wait_event("imap.reconnecting", timeout=5)
        sent = bytes(proxy.sent)
        assert daemon.stop() == 0
    assert "CERTIFICATE_VERIFY_FAILED" in first["error"]
    assert not daemon.named("imap.connected")
    assert imap_server.password.encode() not in sent
    assert b"LOGIN" not in sent.upper() and b"AUTHENTICATE" not in sent.upper()
