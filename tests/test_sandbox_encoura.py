"""The Encoura sandbox behaves like the real File Export API and its S3 bucket."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from scorefetch.sandbox.encoura import DEFAULT_ORG_UID, EncouraSimulator
from tests.standins.hostile import HostileEncoura
from tests.support import wait_until

KEY = "sandbox-encoura-key"
USER, PASSWORD = "service-account@example.edu", "sandbox-encoura"
OTHER_ORG = {"uid": "other-org", "name": "Other College", "fice": "009999", "stateCode": "CA"}
CSV = b"id,name\n1,Ada\n2,Grace\n"


@pytest.fixture
def sim() -> Iterator[EncouraSimulator]:
    with EncouraSimulator() as simulator:
        yield simulator


def login(sim: EncouraSimulator, **fields: Any) -> requests.Response:
    body = {"userName": USER, "password": PASSWORD, "acceptedTerms": True} | fields
    body = {k: v for k, v in body.items() if v is not None}
    return requests.post(f"{sim.base_url}/login", json=body, headers={"x-api-key": KEY}, timeout=10)


def token_of(sim: EncouraSimulator) -> str:
    resp = login(sim)
    assert resp.status_code == 200
    token: str = resp.json()["sessionToken"]
    return token.strip('"')


def call(
    sim: EncouraSimulator, path: str, token: str, org: str | None = DEFAULT_ORG_UID, **params: str
) -> requests.Response:
    headers = {"x-api-key": KEY, "Authorization": f"JWT {token}"}
    if org is not None:
        headers["Organization"] = org
    return requests.get(f"{sim.base_url}{path}", headers=headers, params=params, timeout=10)


def listing(sim: EncouraSimulator, token: str, **params: str) -> list[str]:
    resp = call(sim, "/datacenter/exports", token, **params)
    assert resp.status_code == 200
    return [row["uid"] for row in resp.json()]


def download_url(sim: EncouraSimulator, token: str, uid: str) -> str:
    resp = call(sim, f"/datacenter/exports/{uid}/download", token)
    assert resp.status_code == 200
    url: str = resp.json()["downloadUrl"]
    return url


def test_login_with_username_or_email_and_quoted_tokens(sim: EncouraSimulator) -> None:
    """userName and email both log in; every other login wraps the JWT in extra quotes."""
    first, second = login(sim), login(sim, userName=None, email=USER)
    assert first.status_code == second.status_code == 200
    user = first.json()["user"]
    assert user["organizations"][0] == {
        "uid": DEFAULT_ORG_UID,
        "name": "Sandbox University",
        "fice": "001234",
        "stateCode": "NY",
    }
    tokens = [first.json()["sessionToken"], second.json()["sessionToken"]]
    assert sum(t.startswith('"') and t.endswith('"') for t in tokens) == 1
    for token in tokens:
        assert len(token.strip('"').split(".")) == 3
        assert call(sim, "/datacenter/exports", token.strip('"')).status_code == 200
    assert call(sim, "/datacenter/exports", tokens[1]).status_code == 401  # quotes not stripped
    assert sim.stats.login_calls == 2


def test_api_key_required(sim: EncouraSimulator) -> None:
    """A missing or wrong x-api-key gets API Gateway's 403 Forbidden on every call."""
    body = {"userName": USER, "password": PASSWORD, "acceptedTerms": True}
    for headers in ({}, {"x-api-key": "wrong"}):
        resp = requests.post(f"{sim.base_url}/login", json=body, headers=headers, timeout=10)
        assert resp.status_code == 403 and resp.json() == {"message": "Forbidden"}
    token = token_of(sim)
    resp = requests.get(
        f"{sim.base_url}/datacenter/exports",
        headers={"Authorization": f"JWT {token}", "Organization": DEFAULT_ORG_UID},
        timeout=10,
    )
    assert resp.status_code == 403


def test_bad_credentials_and_terms(sim: EncouraSimulator) -> None:
    """A wrong password is 401 with a message; acceptedTerms missing or false is 400."""
    resp = login(sim, password="nope")
    assert resp.status_code == 401 and resp.json()["message"]
    assert login(sim, acceptedTerms=None).status_code == 400
    assert login(sim, acceptedTerms=False).status_code == 400
    assert sim.stats.auth_failures == 1


def test_token_expiry_and_refresh(sim: EncouraSimulator) -> None:
    """Tokens die after token_lifetime; a refresh before then gives a fresh, longer-lived one."""
    # Tokens age by the simulator's clock, here one the test moves: a busy machine's
    # pauses between two calls cannot age a token.
    now = [1000.0]
    sim.clock = lambda: now[0]
    sim.token_lifetime = 1.0
    token = token_of(sim)
    now[0] += 0.5
    resp = call(sim, "/refresh-token", token, org=None)
    assert resp.status_code == 200
    fresh = resp.json()["sessionToken"]
    assert fresh != token and len(fresh.split(".")) == 3
    now[0] += 0.6  # past the first token's lifetime, within the fresh one's
    assert call(sim, "/datacenter/exports", token).status_code == 401
    assert call(sim, "/datacenter/exports", fresh).status_code == 200
    now[0] += 0.5  # past the fresh one's lifetime too
    assert call(sim, "/datacenter/exports", fresh).status_code == 401
    assert call(sim, "/refresh-token", fresh, org=None).status_code == 401
    assert call(sim, "/datacenter/exports", "garbage").status_code == 401
    assert sim.stats.refresh_calls == 2


def test_expire_tokens(sim: EncouraSimulator) -> None:
    """expire_tokens() makes a live session token get 401 mid-session."""
    token = token_of(sim)
    assert call(sim, "/datacenter/exports", token).status_code == 200
    sim.expire_tokens()
    assert call(sim, "/datacenter/exports", token).status_code == 401


def test_listing_marks_delivered(sim: EncouraSimulator) -> None:
    """Listing NotDelivered marks those exports Delivered; status=Delivered still lists them."""
    uid = sim.add_export("score-reporter", "SANDBOX-UNIVERSITY-04102026-1.csv", CSV)
    token = token_of(sim)
    resp = call(
        sim, "/datacenter/exports", token, productKey="score-reporter", status="NotDelivered"
    )
    (row,) = resp.json()
    assert row["uid"] == uid and row["status"] == "NotDelivered" and "fileName" not in row
    assert row["organizationUid"] == DEFAULT_ORG_UID and row["fice"] == "001234"
    assert row["quantity"] == 2 and row["isExpired"] is False
    assert isinstance(row["date"], int) and row["created"]["createdAt"] == row["date"]
    assert sim.export(uid)["status"] == "Delivered"
    assert listing(sim, token, status="NotDelivered") == []
    assert listing(sim, token, status="Delivered") == [uid]
    assert listing(sim, token) == [uid]
    assert call(sim, "/datacenter/exports", token, status="Bogus").status_code == 400


def test_product_key_filter_is_case_sensitive(sim: EncouraSimulator) -> None:
    """productKey filters; `productkey` is ignored; an unknown key lists nothing."""
    scores = sim.add_export("score-reporter", "scores.csv", CSV)
    inquiry = sim.add_export("inquiry", "inquiry.csv", CSV)
    token = token_of(sim)
    assert listing(sim, token, productKey="no-such-product") == []
    assert listing(sim, token, productKey="score-reporter", status="Delivered") == []
    assert listing(sim, token, productkey="inquiry", status="Delivered") == []
    assert listing(sim, token, productKey="score-reporter") == [scores]
    assert listing(sim, token, productkey="inquiry", status="NotDelivered") == [inquiry]
    assert listing(sim, token) == [scores, inquiry]  # both now Delivered, all statuses
    assert sim.export(inquiry)["status"] == "Delivered"


def test_organization_header_required() -> None:
    """Organization must be one of the user's; other organizations' exports are 404."""
    with EncouraSimulator(organizations=[{"uid": DEFAULT_ORG_UID, "fice": "001234"}]) as sim:
        uid = sim.add_export("inquiry", "x.csv", CSV, organization_uid=OTHER_ORG["uid"])
        token = token_of(sim)
        assert call(sim, "/datacenter/exports", token, org=None).status_code == 403
        assert call(sim, "/datacenter/exports", token, org="not-mine").status_code == 403
        assert listing(sim, token) == []
        assert call(sim, f"/datacenter/exports/{uid}/download", token).status_code == 404
        assert call(sim, "/datacenter/exports/nope/download", token).status_code == 404
        assert sim.export(uid)["status"] == "NotDelivered"


def test_download_url_is_one_time(sim: EncouraSimulator) -> None:
    """The signed URL names the file, serves the bytes without headers once, then 403s."""
    uid = sim.add_export("score-reporter", "SANDBOX UNIV 04-10-2026.csv", CSV)
    token = token_of(sim)
    url = download_url(sim, token, uid)
    parts = urlsplit(url)
    assert parts.hostname == sim.download_host and parts.port == sim.download_port
    assert unquote(parts.path).endswith(
        f"/{DEFAULT_ORG_UID}/score-reporter/SANDBOX UNIV 04-10-2026.csv"
    )
    assert "X-Amz-Signature=" in parts.query
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == CSV
    again = requests.get(url, timeout=10)
    assert again.status_code == 403 and b"AccessDenied" in again.content
    fresh = download_url(sim, token, uid)  # a Delivered export still gets new URLs
    assert requests.get(fresh, timeout=10).content == CSV
    tampered = fresh.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert requests.get(tampered, timeout=10).status_code == 403
    wait_until(lambda: sim.stats.downloads_completed == 2)
    stats = sim.stats
    assert stats.reused_url_rejections == 1 and stats.bad_signature_rejections == 1
    assert stats.downloads_started == 2
    assert stats.download_url_uids == [uid, uid] and stats.download_url_calls == 2
    assert 0 <= stats.max_url_age() < sim.url_lifetime


def test_expired_url_403(sim: EncouraSimulator) -> None:
    """A URL used after url_lifetime gets 403 AccessDenied, checked server-side."""
    sim.url_lifetime = 0.2
    url = download_url(sim, token_of(sim), sim.add_export("inquiry", "late.csv", CSV))
    time.sleep(0.3)  # the behaviour: the simulator's URLs expire by its real clock
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 403 and b"expired" in resp.content
    assert sim.stats.expired_rejections == 1 and sim.stats.downloads_started == 0


@pytest.mark.parametrize("header", ["x-api-key", "Authorization", "Organization"])
def test_api_headers_on_download_refused(sim: EncouraSimulator, header: str) -> None:
    """Sending an API header to the bucket is 400 InvalidArgument, counted, URL not consumed."""
    url = download_url(sim, token_of(sim), sim.add_export("inquiry", "h.csv", CSV))
    resp = requests.get(url, headers={header: "x"}, timeout=10)
    assert resp.status_code == 400 and b"InvalidArgument" in resp.content
    assert sim.stats.api_headers_on_download == 1
    assert requests.get(url, timeout=10).content == CSV


def test_generated_export_sha256(sim: EncouraSimulator) -> None:
    """A generated export streams the bytes whose sha256 sha256_of() reports."""
    uid = sim.add_generated_export("score-reporter", "big.csv", 3 * 1024 * 1024 + 7, seed=4)
    resp = requests.get(download_url(sim, token_of(sim), uid), timeout=30)
    assert len(resp.content) == 3 * 1024 * 1024 + 7
    assert hashlib.sha256(resp.content).hexdigest() == sim.sha256_of(uid)


def test_injected_503_then_success() -> None:
    """inject() (tests/standins/hostile.py) fails the next calls to an endpoint with the
    status, then service resumes."""
    with HostileEncoura() as sim:
        uid = sim.add_export("inquiry", "i.csv", CSV)
        sim.inject("login", 503)
        sim.inject("list", 503, count=2)
        sim.inject("download", 503)
        assert login(sim).status_code == 503
        token = token_of(sim)
        assert call(sim, "/datacenter/exports", token).status_code == 503
        assert call(sim, "/datacenter/exports", token).status_code == 503
        assert sim.export(uid)["status"] == "NotDelivered"
        assert listing(sim, token) == [uid]
        url = download_url(sim, token, uid)
        assert requests.get(url, timeout=10).status_code == 503
        assert requests.get(url, timeout=10).content == CSV
        with pytest.raises(ValueError, match="unknown endpoint"):
            sim.inject("bogus", 500)


def test_unknown_paths_and_methods(sim: EncouraSimulator) -> None:
    """Unknown API paths are 404, wrong methods 405, non-GET on the bucket 405."""
    headers = {"x-api-key": KEY}
    assert requests.get(f"{sim.base_url}/nope", headers=headers, timeout=10).status_code == 404
    assert requests.get(f"{sim.base_url}/login", headers=headers, timeout=10).status_code == 405
    resp = requests.post(f"{sim.base_url}/datacenter/exports", headers=headers, timeout=10)
    assert resp.status_code == 405
    url = download_url(sim, token_of(sim), sim.add_export("inquiry", "m.csv", CSV))
    assert requests.put(url, timeout=10).status_code == 405
