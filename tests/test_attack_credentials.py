"""Credentials only where meant: what the process environment may add to a vendor call.

requests' `trust_env` (the daemon's HTTP layer once) reads ~/.netrc: a `default` entry
there (or one naming a vendor's host) became `Authorization: Basic` on every call, a
presigned URL to a bucket the vendor chose included, and replaced Encoura's
`Authorization: JWT`. Proxies and a CA bundle set
in the environment on purpose still apply."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from scorefetch.core.errors import LocalError
from scorefetch.core.http import HttpError, build_session
from tests.standins.recorder import Recorder

NETRC_PASSWORD = "N3trcPassw0rd"


@pytest.fixture
def netrc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.netrc has logins for every host (`default`) and for loopback."""
    netrc = tmp_path / ".netrc"
    netrc.write_text(
        f"machine 127.0.0.1 login office password {NETRC_PASSWORD}\n"
        f"default login office password {NETRC_PASSWORD}\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    return netrc


def _no_netrc_login(sent: bytes) -> None:
    basic = base64.b64encode(f"office:{NETRC_PASSWORD}".encode())
    assert basic not in sent
    assert b"Basic " not in sent


def test_netrc_logins_are_never_sent(netrc_home: Path) -> None:
    """A ~/.netrc login never rides along with a vendor call, and the caller's header stays."""
    session = build_session(2.0, 2.0)
    with Recorder() as server:
        session.get(f"{server.url}/v1/datacenter/exports", headers={"Authorization": "JWT t0k"})
        session.post(f"{server.url}/pascoredwnld/file?filename=a.csv", json={"username": "u"})
        session.get(f"{server.url}/bucket/a.csv?X-Amz-Signature=s")
    sent = server.everything()
    _no_netrc_login(sent)
    assert b"Authorization: JWT t0k" in sent  # the caller's header is what goes out


def test_the_environments_proxy_is_still_used_and_no_proxy_honoured(
    netrc_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY is still used (a CONNECT tunnel) and NO_PROXY honoured."""
    with Recorder() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "bypassed.example")
        session = build_session(2.0, 2.0)
        with pytest.raises(HttpError):
            session.get("https://scoresdownload.collegeboard.org/pascoredwnld/files/list")
        assert b"CONNECT scoresdownload.collegeboard.org:443" in proxy.everything()
        with pytest.raises(HttpError):
            session.get("https://bypassed.example.invalid.bypassed.example/x")
    assert b"bypassed.example" not in proxy.everything()
    _no_netrc_login(proxy.everything())


def test_an_environment_ca_bundle_is_still_what_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE (documented) still reaches the TLS layer: a missing file is a
    local fault that names it."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    with Recorder() as server, pytest.raises(LocalError, match=r"no-such-bundle.*ENOENT"):
        build_session(2.0, 2.0).get(server.url.replace("http://", "https://"))
