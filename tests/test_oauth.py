"""XOAUTH2 end to end: the real daemon, a real Dovecot validating tokens through RFC 7662
introspection, and the sandbox OAuth2 authority (Microsoft- and Google-style grants)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch import doctor, sources
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess
from tests.conftest import dovecot_or_skip
from tests.standins.oauth import OAuthAuthority, Stats
from tests.standins.proxy import FaultProxy
from tests.standins.tls import make_client_certificate
from tests.support import wait_until

pytestmark = pytest.mark.e2e
Start = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def authority_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthAuthority]:
    with OAuthAuthority(tmp_path_factory.mktemp("authority")) as server:
        yield server


@pytest.fixture
def authority(authority_server: OAuthAuthority) -> OAuthAuthority:
    """The module's authority with fresh counters and hour-long tokens."""
    authority_server.stats = Stats()
    authority_server.token_lifetime = 3600.0
    return authority_server


@pytest.fixture(scope="module")
def oauth_dovecot(
    tmp_path_factory: pytest.TempPathFactory, authority_server: OAuthAuthority
) -> Iterator[Any]:
    server = dovecot_or_skip(tmp_path_factory.mktemp("dovecot-oauth"))
    server.introspection_url = f"{authority_server.http_url}/introspect"
    with server:
        yield server


@pytest.fixture
def imap_server(oauth_dovecot: Any) -> Any:
    """Overrides conftest's pymap/dovecot pair: only Dovecot validates tokens."""
    return oauth_dovecot


@pytest.fixture
def log_secrets(authority_server: OAuthAuthority) -> Iterable[str]:
    """The app's secrets and every token issued, read when the daemons' output is checked."""

    class Lazy:
        def __iter__(self) -> Iterator[str]:
            yield authority_server.client_secret
            yield authority_server.refresh_token
            yield "wrong-secret-value"
            yield authority_server.certificate_pem.splitlines()[1]  # a line of the private key
            yield from authority_server.issued_tokens()

    return Lazy()


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    folder = tmp_path / "credentials"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / name).write_text(value + "\n")
    (folder / name).chmod(0o600)
    return f"credentials/{name}"


def microsoft_auth(tmp_path: Path, authority: OAuthAuthority, secret: str | None = None) -> str:
    path = secret_file(tmp_path, "entra_client_secret", secret or authority.client_secret)
    return f"""\
  auth:
    method: xoauth2
    provider: microsoft
    authority: {authority.https_url}
    tenant_id: {authority.tenant}
    client_id: {authority.client_id}
    client_secret_file: {path}
"""


def microsoft_certificate_auth(
    tmp_path: Path, authority: OAuthAuthority, pem: str, thumbprint: str
) -> str:
    return f"""\
  auth:
    method: xoauth2
    provider: microsoft
    authority: {authority.https_url}
    tenant_id: {authority.tenant}
    client_id: {authority.client_id}
    certificate_file: {secret_file(tmp_path, "entra_certificate.pem", pem)}
    thumbprint: {thumbprint}
"""


def google_auth(tmp_path: Path, authority: OAuthAuthority) -> str:
    return f"""\
  auth:
    method: xoauth2
    provider: google
    token_url: {authority.http_url}/token
    client_id: {authority.client_id}
    client_secret_file: {secret_file(tmp_path, "google_client_secret", authority.client_secret)}
    refresh_token_file: {secret_file(tmp_path, "google_refresh_token", authority.refresh_token)}
"""


def ca_env(authority: OAuthAuthority) -> dict[str, str]:
    """msal accepts only https authorities: the daemon trusts the sandbox CA like any CA."""
    return {"REQUESTS_CA_BUNDLE": str(authority.ca_file)}


def deliver_and_wait(
    daemon: DaemonProcess, server: Any, folder: str, sim: CollegeBoardSimulator, stem: str
) -> bytes:
    data = f"Last,First,Total\r\nDoe,{stem},1400\r\n".encode()
    sim.publish(f"{stem}.csv", data)
    with server.client() as client:
        client.append(folder, mail.notification(f"{stem}.csv"))
    daemon.wait_event("delivery.downloaded", filename=f"{stem}.csv", timeout=30)
    return data


def landed(tmp_path: Path, name: str) -> bytes:
    return (tmp_path / "files" / "collegeboard" / name).read_bytes()


def test_microsoft_client_credentials_land_a_file(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """msal gets an app-only token over https; Dovecot accepts it by XOAUTH2; a file lands."""
    daemon = start_daemon(imap_auth=microsoft_auth(tmp_path, authority), env=ca_env(authority))
    data = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_080000")
    assert daemon.stop() == 0
    assert landed(tmp_path, "4300_20261122_080000.csv") == data
    assert daemon.named("imap.token_obtained", provider="microsoft")
    assert authority.stats.client_credentials == 1
    assert authority.stats.active_answers >= 1  # Dovecot really asked about the token
    assert not daemon.named("imap.auth_failed")


def test_microsoft_certificate_credential_lands_a_file(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """msal signs a client assertion with the app's certificate; the authority checks its
    signature, thumbprint, audience and issuer, issues a token, and a file lands."""
    auth = microsoft_certificate_auth(
        tmp_path, authority, authority.certificate_pem, authority.thumbprint
    )
    daemon = start_daemon(imap_auth=auth, env=ca_env(authority))
    data = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_083000")
    assert daemon.stop() == 0
    assert landed(tmp_path, "4300_20261122_083000.csv") == data
    assert authority.stats.assertions_accepted == authority.stats.client_credentials == 1
    assert not daemon.named("imap.auth_failed")


def test_unregistered_certificate_is_an_auth_failure(
    start_daemon: Start,
    imap_server: Any,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """A certificate the app registration does not hold is refused by the authority: one
    loud imap.auth_failed naming Entra's error, no login attempt, no retry storm."""
    pem, thumbprint, _ = make_client_certificate("another-app")
    auth = microsoft_certificate_auth(tmp_path, authority, pem, thumbprint)
    daemon = start_daemon(imap_auth=auth, env=ca_env(authority), wait_ready=False)
    failed = daemon.wait_event("imap.auth_failed", timeout=30)
    daemon.wait_event("imap.reconnecting", delay_s=300.0)  # in the slow retry's wait now
    assert daemon.stop() == 0
    assert "AADSTS700027" in failed["error"]
    assert len(daemon.named("imap.auth_failed")) == 1
    assert authority.stats.client_credentials == 1 and authority.stats.assertions_accepted == 0
    assert pem.splitlines()[1] not in "\n".join(daemon.lines)


def test_short_lived_tokens_are_renewed_before_they_expire(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """With 5-second tokens each session ends before its token expires and the daemon logs
    in again with a new one; mail arriving after several expiries still lands."""
    authority.token_lifetime = 5.0
    daemon = start_daemon(imap_auth=google_auth(tmp_path, authority))
    first = daemon.wait_event("imap.token_renewal")
    daemon.wait_for(  # the second token comes to its end too
        lambda e: e.get("event") == "imap.token_renewal", start=daemon.events.index(first) + 1
    )
    data = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_090000")
    assert daemon.stop() == 0
    assert landed(tmp_path, "4300_20261122_090000.csv") == data

    obtained = [e["_at"] for e in daemon.named("imap.token_obtained", provider="google")]
    renewals = [e["_at"] for e in daemon.named("imap.token_renewal")]
    assert len(obtained) >= 3 and len(renewals) >= 2
    for got, renewed in zip(obtained, renewals, strict=False):
        assert renewed - got < 5.0, "a session outlived its token"
    assert len(daemon.named("imap.connected")) == len(obtained)
    assert not daemon.named("imap.disconnected")  # every renewal was a clean logout
    assert not daemon.named("imap.auth_failed")
    assert authority.stats.refresh_grants == len(obtained)


def test_refused_cached_token_is_replaced_at_once(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """A cached token the server refuses (revoked, or expired early) is dropped and a new one
    tried in the same connect: no auth_failed, no slow retry."""
    daemon = start_daemon(imap_auth=microsoft_auth(tmp_path, authority), env=ca_env(authority))
    authority.revoke_all()
    imap_server.stop()  # the session drops; the next login presents the revoked token
    imap_server.start()
    refused = daemon.wait_event("imap.token_refused", timeout=30)
    daemon.wait_for(
        lambda e: e.get("event") == "imap.connected" and e["_at"] > refused["_at"], timeout=30
    )
    data = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_100000")
    assert daemon.stop() == 0
    assert landed(tmp_path, "4300_20261122_100000.csv") == data
    assert len(daemon.named("imap.connected")) == 2
    assert authority.stats.client_credentials == 2
    assert not daemon.named("imap.auth_failed")


def test_bye_access_token_expired_gets_a_new_token_and_session_at_once(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """Microsoft ends a session whose token it considers expired with `BYE Session
    invalidated - AccessTokenExpired`: the daemon drops its cached token and logs in again
    with a new one at once (no backoff, no refused login); mail sent meanwhile lands."""
    with FaultProxy(imap_server.host, imap_server.port, transcript=True) as proxy:
        daemon = start_daemon(
            imap_auth=microsoft_auth(tmp_path, authority),
            env=ca_env(authority),
            imap_address=(proxy.host, proxy.port),
        )
        first = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_103000")
        wait_until(proxy.idling)
        proxy.say_bye(b"* BYE Session invalidated - AccessTokenExpired\r\n")
        daemon.wait_event("imap.token_renewal", reason="expired", timeout=10)
        second = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_104500")
        assert daemon.stop() == 0
    assert len(daemon.named("imap.connected")) == 2
    assert authority.stats.client_credentials == 2
    assert not daemon.named("imap.token_refused") and not daemon.named("imap.reconnecting")
    assert not daemon.named("imap.disconnected") and not daemon.named("imap.auth_failed")
    assert landed(tmp_path, "4300_20261122_103000.csv") == first
    assert landed(tmp_path, "4300_20261122_104500.csv") == second


def test_wrong_client_secret_is_an_auth_failure_retried_slowly(
    start_daemon: Start, authority: OAuthAuthority, tmp_path: Path
) -> None:
    """An app secret the authority refuses logs imap.auth_failed and waits the slow retry:
    one token request, not a stream of them; READY all the same (the other triggers run),
    never connected."""
    auth = microsoft_auth(tmp_path, authority, secret="wrong-secret-value")
    daemon = start_daemon(wait_ready=False, imap_auth=auth, env=ca_env(authority))
    failed = daemon.wait_event("imap.auth_failed", timeout=30)
    assert "invalid_client" in failed["error"]
    assert failed["retry_in_s"] == 300.0
    daemon.wait_event("imap.reconnecting", delay_s=300.0)  # in the slow retry's wait now
    assert authority.stats.client_credentials == 1
    assert daemon.named("daemon.ready") and not daemon.named("imap.connected")
    assert daemon.stop() == 0


TOKEN_HELPER = """\
import json, sys, urllib.parse, urllib.request
url, client_id, secret_path, refresh_path = sys.argv[1:]
form = urllib.parse.urlencode({
    "grant_type": "refresh_token", "client_id": client_id,
    "client_secret": open(secret_path).read().strip(),
    "refresh_token": open(refresh_path).read().strip(),
}).encode()
print(json.load(urllib.request.urlopen(url, form))["access_token"])
"""


def test_token_command_supplies_the_token(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    authority: OAuthAuthority,
    tmp_path: Path,
) -> None:
    """A helper program prints the token; the daemon logs in with it and a file lands."""
    helper = tmp_path / "token_helper.py"
    helper.write_text(TOKEN_HELPER)
    secret = tmp_path / secret_file(tmp_path, "helper_secret", authority.client_secret)
    refresh = tmp_path / secret_file(tmp_path, "helper_refresh", authority.refresh_token)
    argv = [sys.executable, helper, f"{authority.http_url}/token", authority.client_id]
    argv += [secret, refresh]
    auth = f"""\
  auth:
    method: xoauth2
    provider: command
    token_command: [{", ".join(f'"{a}"' for a in argv)}]
    command_timeout: 20s
"""
    daemon = start_daemon(imap_auth=auth)
    data = deliver_and_wait(daemon, imap_server, imap_folder, cb_sim, "4300_20261122_110000")
    assert daemon.stop() == 0
    assert landed(tmp_path, "4300_20261122_110000.csv") == data
    assert daemon.named("imap.token_obtained", provider="command")
    assert authority.stats.refresh_grants == 1


def test_failing_token_command_is_reported_without_its_output(
    start_daemon: Start, tmp_path: Path
) -> None:
    """A helper exiting non-zero: the error names it, its status and stderr tail, and never
    what it printed on stdout."""
    helper = tmp_path / "broken_helper.py"
    helper.write_text(
        "import sys\nprint('half-a-token-VALUE')\n"
        "print('helper: no refresh token for scores@example.edu', file=sys.stderr)\nsys.exit(3)\n"
    )
    auth = f"""\
  auth:
    method: xoauth2
    provider: command
    token_command: ["{sys.executable}", "{helper}"]
"""
    daemon = start_daemon(wait_ready=False, imap_auth=auth)
    event = daemon.wait_event("imap.disconnected", timeout=30)
    assert "exited with status 3" in event["error"]
    assert "no refresh token for scores@example.edu" in event["error"]
    assert daemon.stop() == 0
    assert not any("half-a-token-VALUE" in line for line in daemon.lines)


@pytest.mark.parametrize("secret", [None, "wrong-secret-value"])
def test_doctor_takes_the_daemons_token_path(
    start_daemon: Start,
    authority: OAuthAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secret: str | None,
) -> None:
    """`scorefetch doctor` gets its token from the same provider code and logs in by
    XOAUTH2 as the daemon does: ok where the daemon connects, and where the authority
    refuses the app's secret, a FAIL line with the daemon's own words."""
    auth = microsoft_auth(tmp_path, authority, secret=secret)
    daemon = start_daemon(wait_ready=secret is None, imap_auth=auth, env=ca_env(authority))
    failed = daemon.wait_event("imap.auth_failed") if secret else None
    for name, value in ca_env(authority).items():
        monkeypatch.setenv(name, value)
    config = sources.load(tmp_path / "config.yaml")
    check = {c.name: c for c in doctor.run(config, destinations=[], sources=sources.SOURCES)}[
        "imap"
    ]
    assert daemon.stop() == 0
    assert authority.stats.client_credentials == 2  # one token request each
    if failed is None:
        assert check.ok, check.detail
        assert "logged in as" in check.detail
    else:
        assert not check.ok and check.detail.endswith(f"; {failed['error']}")
    for token in [*authority.issued_tokens(), authority.client_secret, "wrong-secret-value"]:
        assert token not in check.detail + check.advice
