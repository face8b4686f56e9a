"""The College Board sandbox behaves like the real score download service and its S3 bucket."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests

from scorefetch.sandbox.collegeboard import (
    CollegeBoardSimulator,
    generated_bytes,
    generated_sha256,
)
from tests.standins.hostile import HostileCollegeBoard
from tests.support import wait_until

CREDS = {"username": "scores@example.edu", "password": "sandbox-collegeboard"}
CSV = b"id,score\n1,1400\n2,1510\n"


@pytest.fixture
def sim() -> Iterator[CollegeBoardSimulator]:
    with CollegeBoardSimulator() as simulator:
        simulator.publish("4300_20260410_111604.csv", CSV)
        yield simulator


def file_url(sim: CollegeBoardSimulator, name: str, body: dict[str, str]) -> requests.Response:
    url = f"{sim.base_url}/pascoredwnld/file"
    return requests.post(url, params={"filename": name}, json=body, timeout=10)


def login(sim: CollegeBoardSimulator) -> str:
    resp = requests.post(f"{sim.base_url}/pascoredwnld/login", json=CREDS, timeout=10)
    assert resp.status_code == 200
    token: str = resp.json()["token"]
    return token


def listing(sim: CollegeBoardSimulator, token: str, from_date: str | None) -> requests.Response:
    params = {"fromDate": from_date} if from_date is not None else {}
    url = f"{sim.base_url}/pascoredwnld/files/list"
    return requests.post(url, params=params, json={"token": token}, timeout=10)


def test_one_step_url_downloads_exact_bytes(sim: CollegeBoardSimulator) -> None:
    """Credentials + name in one call give a URL on another host:port serving the bytes."""
    resp = file_url(sim, "4300_20260410_111604.csv", CREDS)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["filePath"] == body["fileName"] == "4300_20260410_111604.csv"
    assert body["fileSize"] == len(CSV)
    assert urlsplit(body["fileUrl"]).netloc != urlsplit(sim.base_url).netloc
    assert urlsplit(body["fileUrl"]).hostname == sim.download_host
    assert "Expires=" in body["fileUrl"] and "X-Amz-Signature=" in body["fileUrl"]
    got = requests.get(body["fileUrl"], timeout=10)
    assert got.status_code == 200 and got.content == CSV
    wait_until(lambda: sim.stats.downloads_completed == 1)
    stats = sim.stats
    assert stats.downloads_started == 1
    assert stats.file_url_names == ["4300_20260410_111604.csv"]
    assert stats.expired_rejections == 0 and 0 <= stats.max_url_age() < sim.url_lifetime


def test_token_flow_and_legacy_get(sim: CollegeBoardSimulator) -> None:
    """An uppercase GUID token from /login works in a POST body and the older GET ?tok=."""
    token = login(sim)
    assert len(token) == 36 and token == token.upper() and token.count("-") == 4
    assert (
        requests.get(
            file_url(sim, "4300_20260410_111604.csv", {"token": token}).json()["fileUrl"],
            timeout=10,
        ).content
        == CSV
    )
    legacy = requests.get(
        f"{sim.base_url}/pascoredwnld/file",
        params={"tok": token, "filename": "4300_20260410_111604.csv"},
        timeout=10,
    )
    assert legacy.status_code == 200 and "fileUrl" in legacy.json()
    assert file_url(sim, "4300_20260410_111604.csv", {"token": "BOGUS"}).status_code == 401


def test_bad_credentials_get_401(sim: CollegeBoardSimulator) -> None:
    """Wrong passwords are refused with 401 and a JSON message on login, file and list."""
    bad = {"username": CREDS["username"], "password": "wrong"}
    assert (
        requests.post(f"{sim.base_url}/pascoredwnld/login", json=bad, timeout=10).status_code == 401
    )
    resp = file_url(sim, "no-such-file.csv", bad)
    assert resp.status_code == 401 and "message" in resp.json()
    url = f"{sim.base_url}/pascoredwnld/files/list"
    assert requests.post(url, json=bad, timeout=10).status_code == 401
    assert sim.stats.auth_failures == 3


def test_unknown_name_404_with_message(sim: CollegeBoardSimulator) -> None:
    """An unknown file name answers 404 with a JSON message naming it; a missing filename is 400."""
    resp = file_url(sim, "4300_20990101_000000.csv", CREDS)
    assert resp.status_code == 404
    assert resp.json() == {"message": "File not found: 4300_20990101_000000.csv"}
    assert file_url(sim, "", CREDS).status_code == 400


def test_url_expiry_enforced_server_side(sim: CollegeBoardSimulator) -> None:
    """A presigned URL gets 403 AccessDenied once its (sub-second) lifetime has passed."""
    sim.url_lifetime = 0.3
    url = file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]
    time.sleep(0.5)  # the behaviour: the simulator's URLs expire by its real clock
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 403
    assert "<Code>AccessDenied</Code>" in resp.text and "Request has expired" in resp.text
    assert sim.stats.expired_rejections == 1 and sim.stats.downloads_started == 0
    sim.url_lifetime = 0
    url = file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]
    assert requests.get(url, timeout=10).status_code == 403


def test_tampered_signature_403(sim: CollegeBoardSimulator) -> None:
    """Changing the signature, the Expires value or the object path yields 403 AccessDenied."""
    url = file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]
    sig = url.rsplit("X-Amz-Signature=", 1)[1]
    flipped = url[: -len(sig)] + ("0" if sig[0] != "0" else "1") + sig[1:]
    expires = url.split("Expires=")[-1].split("&")[0]
    for bad in (
        flipped,
        url.replace(f"&Expires={expires}", f"&Expires={int(expires) + 3600}"),
        url.replace("4300_20260410_111604.csv", "4300_20260410_111604.txt"),
        url.split("?")[0],
    ):
        resp = requests.get(bad, timeout=10)
        assert resp.status_code == 403 and "<Code>AccessDenied</Code>" in resp.text
    assert sim.stats.bad_signature_rejections == 4
    assert requests.get(url, timeout=10).content == CSV


def test_listing_filters_by_from_date(sim: CollegeBoardSimulator) -> None:
    """fromDate keeps files posted at or after it, and an empty result is `files: null`."""
    sim.publish("old.txt", b"x", posted_at=datetime(2026, 1, 1, 12, tzinfo=UTC))
    sim.publish("new.txt", b"y", posted_at=datetime(2026, 11, 21, 5, 0, tzinfo=UTC))
    token = login(sim)
    every = listing(sim, token, None).json()["files"]
    assert {f["fileName"] for f in every} == {"old.txt", "new.txt", "4300_20260410_111604.csv"}
    rows = listing(sim, token, "2026-11-21T00:00:00-0500").json()["files"]
    names = [f["fileName"] for f in rows]
    assert "new.txt" in names and "old.txt" not in names
    new = next(f for f in rows if f["fileName"] == "new.txt")
    assert new["deliveryDate"] == "2026-11-21T05:00:00+0000"
    assert new["fileSize"] == 1 and new["fileType"] == "Scores File"
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert listing(sim, token, future).json() == {"files": None}


@pytest.mark.parametrize(
    "bad",
    ["2026-11-21T00:00:00Z", "2026-11-21T00:00:00-05:00", "2026-11-21", "2026-13-01T00:00:00+0000"],
)
def test_listing_rejects_z_and_colon_offsets(sim: CollegeBoardSimulator, bad: str) -> None:
    """fromDate in Z form, with a colon offset or otherwise malformed is refused with 400."""
    resp = listing(sim, login(sim), bad)
    assert resp.status_code == 400 and "message" in resp.json()


def test_injected_fault_then_success() -> None:
    """inject() (tests/standins/hostile.py) makes the next calls fail with the given status,
    after which service resumes."""
    with HostileCollegeBoard() as sim:
        sim.publish("4300_20260410_111604.csv", CSV)
        sim.inject("file", 503, count=2)
        sim.inject("download", 500)
        assert file_url(sim, "4300_20260410_111604.csv", CREDS).status_code == 503
        assert file_url(sim, "4300_20260410_111604.csv", CREDS).status_code == 503
        url = file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]
        failed = requests.get(url, timeout=10)
        assert failed.status_code == 500 and "<Code>InternalError</Code>" in failed.text
        assert requests.get(url, timeout=10).content == CSV
        assert sim.stats.file_url_calls == 3
        with pytest.raises(ValueError, match="unknown endpoint"):
            sim.inject("bogus", 500)


def test_generated_file_streams_deterministic_bytes(sim: CollegeBoardSimulator) -> None:
    """A generated file streams the bytes generated_bytes/generated_sha256 compute."""
    size = 3 * (1 << 20) + 12345
    sim.publish_generated("big.csv", size, seed=7)
    url = file_url(sim, "big.csv", CREDS).json()["fileUrl"]
    with requests.get(url, stream=True, timeout=10) as resp:
        assert int(resp.headers["Content-Length"]) == size
        digest = hashlib.sha256()
        for piece in resp.iter_content(1 << 16):
            digest.update(piece)
    assert digest.hexdigest() == generated_sha256(size, 7) == sim.sha256_of("big.csv")
    data = generated_bytes(size, 7)
    assert len(data) == size and hashlib.sha256(data).hexdigest() == digest.hexdigest()
    assert data[: 1 << 20] != data[1 << 20 : 2 << 20]
    assert generated_sha256(size, 8) != digest.hexdigest()


@pytest.mark.parametrize("header", [{"Authorization": "Bearer 45B5B7E7"}, {"x-api-key": "secret"}])
def test_api_headers_on_download_refused(
    sim: CollegeBoardSimulator, header: dict[str, str]
) -> None:
    """S3 refuses a presigned GET that also carries Authorization or x-api-key with 400."""
    url = file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]
    resp = requests.get(url, headers=header, timeout=10)
    assert resp.status_code == 400 and "<Code>InvalidArgument</Code>" in resp.text
    assert requests.get(url, timeout=10).content == CSV


def test_unknown_paths_and_methods(sim: CollegeBoardSimulator) -> None:
    """The API answers 404 JSON for unknown paths and 405 for wrong methods."""
    resp = requests.get(f"{sim.base_url}/pascoredwnld/nope", timeout=10)
    assert resp.status_code == 404 and "message" in resp.json()
    resp = requests.get(f"{sim.base_url}/pascoredwnld/login", timeout=10)
    assert resp.status_code == 405 and "message" in resp.json()


def test_url_host_override_and_unpublish(sim: CollegeBoardSimulator) -> None:
    """url_host_override sets the URL host; an unpublished file's URL gives 404 NoSuchKey."""
    sim.url_host_override = "evil.example"
    assert (
        urlsplit(file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]).hostname
        == "evil.example"
    )
    sim.url_host_override = None
    url = file_url(sim, "4300_20260410_111604.csv", CREDS).json()["fileUrl"]
    sim.unpublish("4300_20260410_111604.csv")
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 404 and "<Code>NoSuchKey</Code>" in resp.text
    assert file_url(sim, "4300_20260410_111604.csv", CREDS).status_code == 404
