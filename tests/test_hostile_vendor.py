"""The real clients against the simulators in hostile mode: redirects, odd URLs, listings
that lie, malformed, wrongly-typed and huge JSON. Credentials go nowhere else, nothing a
vendor says chooses a path, and every answer ends as a value or a VendorError."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.errors import ConfigError, Failure, RefusedError, VendorError
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.client import Encoura
from scorefetch.encoura.poller import EncouraDeliveries, locate
from scorefetch.encoura.settings import EncouraConfig
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.encoura import EncouraSimulator
from tests.standins.hostile import HostileEncoura
from tests.standins.recorder import Recorder

REDIRECTS = [301, 302, 303, 307, 308]


@pytest.fixture
def enc_sim() -> Iterator[HostileEncoura]:
    with HostileEncoura() as sim:
        yield sim


@pytest.fixture
def evil() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


def cb_client(sim: CollegeBoardSimulator, **overrides: Any) -> CollegeBoard:
    config = CollegeBoardConfig(
        base_url=sim.base_url,
        username=sim.username,
        password=sim.password,
        download_hosts=(sim.download_host,),
        **overrides,
    )
    return CollegeBoard(config, build_session())


def enc_config(sim: EncouraSimulator, **overrides: Any) -> EncouraConfig:
    return EncouraConfig.model_validate(
        {
            "enabled": True,
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "username": sim.username,
            "password": sim.password,
            "product_keys": ["score-reporter"],
            "download_hosts": [sim.download_host],
            "retry_schedule": [0.2],
            **overrides,
        }
    )


def enc_deliveries(sim: EncouraSimulator, tmp_path: Path) -> EncouraDeliveries:
    client = Encoura(enc_config(sim), build_session())
    return EncouraDeliveries(client, Ledger(tmp_path / "l.sqlite3"), tmp_path / "files")


def assert_nothing_reached(evil: Recorder, *secrets: str) -> None:
    assert evil.connections == 0, f"a redirect was followed: {evil.everything()[:300]!r}"
    for secret in secrets:
        assert secret.encode() not in evil.everything()


# 1. Credentials go only where they are meant to go


@pytest.mark.parametrize("status", REDIRECTS)
@pytest.mark.parametrize("endpoint", ["file", "list"])
def test_collegeboard_redirect_is_refused_not_followed(
    cb_sim: CollegeBoardSimulator, evil: Recorder, endpoint: str, status: int
) -> None:
    """A 3xx from College Board's API is a transient VendorError naming the status and the
    host only; the username and password never reach the redirect's target."""
    cb_sim.publish("a.csv", b"1\n")
    cb_sim.hostile.redirect[endpoint] = (status, f"{evil.url}/steal?sig=SECRETQUERY")
    client = cb_client(cb_sim)
    with pytest.raises(VendorError) as caught:
        client.file_url("a.csv") if endpoint == "file" else client.list_files(None)
    assert caught.value.kind == Failure.TRANSIENT and caught.value.status == status
    assert f"HTTP {status}" in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert "SECRETQUERY" not in str(caught.value) and "/steal" not in str(caught.value)
    assert_nothing_reached(evil, cb_sim.password, cb_sim.username)


@pytest.mark.parametrize("status", [307, 308, 302])
def test_collegeboard_token_login_redirect_is_refused(
    cb_sim: CollegeBoardSimulator, evil: Recorder, status: int
) -> None:
    """`auth: token`: a redirected login sends the password nowhere else."""
    cb_sim.hostile.redirect["login"] = (status, f"{evil.url}/login")
    with pytest.raises(VendorError):
        cb_client(cb_sim, auth="token").list_files(None)
    assert_nothing_reached(evil, cb_sim.password)


@pytest.mark.parametrize("status", REDIRECTS)
@pytest.mark.parametrize("endpoint", ["login", "list", "download_url"])
def test_encoura_redirect_is_refused_not_followed(
    enc_sim: EncouraSimulator, evil: Recorder, endpoint: str, status: int
) -> None:
    """A 3xx from Encoura's API never carries the x-api-key, password or session token on."""
    uid = enc_sim.add_export("score-reporter", "a.csv", b"1\n")
    enc_sim.hostile.redirect[endpoint] = (status, f"{evil.url}/steal")
    client = Encoura(enc_config(enc_sim), build_session())
    with pytest.raises(VendorError) as caught:
        client.download_url(uid) if endpoint == "download_url" else client.list_exports(
            "score-reporter", "NotDelivered"
        )
    assert caught.value.kind == Failure.TRANSIENT
    assert_nothing_reached(evil, enc_sim.api_key, enc_sim.password)


def test_encoura_refresh_redirect_falls_back_to_login(
    enc_sim: EncouraSimulator, evil: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redirected /refresh-token is not followed: the client logs in afresh instead."""
    from scorefetch.encoura import client as module

    client = Encoura(enc_config(enc_sim), build_session())
    client.login()
    monkeypatch.setattr(module, "REFRESH_AFTER_S", -1.0)
    enc_sim.hostile.redirect["refresh"] = (307, f"{evil.url}/refresh")
    assert client.list_exports("score-reporter", "NotDelivered") == []
    assert enc_sim.stats.login_calls == 2
    assert_nothing_reached(evil, enc_sim.api_key)


@pytest.mark.parametrize("status", REDIRECTS)
def test_download_redirect_is_not_followed(
    cb_sim: CollegeBoardSimulator, evil: Recorder, tmp_path: Path, status: int
) -> None:
    """The bucket answering 3xx is a transient failure; nothing is fetched from elsewhere."""
    cb_sim.publish("a.csv", b"1\n")
    cb_sim.hostile.redirect["download"] = (status, f"{evil.url}/a.csv?X-Amz-Signature=s")
    deliveries = CollegeBoardDeliveries(
        cb_client(cb_sim), Ledger(tmp_path / "l.sqlite3"), tmp_path / "files"
    )
    deliveries.ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    try:
        assert deliveries.deliver("a.csv") is None
        row = deliveries.ledger.get("collegeboard", "a.csv")
        assert row is not None and row.state == "retrying"
        assert f"HTTP {status}" in (row.error or "") and "X-Amz" not in (row.error or "")
    finally:
        deliveries.close(5)
    assert_nothing_reached(evil)


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1\\.s3.amazonaws.com",  # the reported differential
        "127.0.0.1\\@bucket.s3.amazonaws.com",
        "bucket.s3.amazonaws.com:443@127.0.0.1",
    ],
)
def test_presigned_url_to_a_differential_host_never_connects(
    cb_sim: CollegeBoardSimulator, evil: Recorder, tmp_path: Path, spelling: str
) -> None:
    """A fileUrl whose host one parser reads as S3 and the connection as 127.0.0.1 is
    refused (never retried) before any connection is made."""
    cb_sim.publish("a.csv", b"1\n")
    cb_sim.hostile.rewrite_url = lambda url: (
        f"https://{spelling}:{evil.port}/a.csv?" + url.split("?", 1)[1]
    )
    config = CollegeBoardConfig(
        base_url=cb_sim.base_url,
        username=cb_sim.username,
        password=cb_sim.password,
        download_hosts=("s3.amazonaws.com", "*.s3.amazonaws.com"),
    )
    deliveries = CollegeBoardDeliveries(
        CollegeBoard(config, build_session()), Ledger(tmp_path / "l.sqlite3"), tmp_path / "f"
    )
    deliveries.ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    try:
        assert deliveries.deliver("a.csv") is None
        row = deliveries.ledger.get("collegeboard", "a.csv")
        assert row is not None and row.state == "failed"  # refused: never retried
    finally:
        deliveries.close(5)
    assert evil.connections == 0


# 2. Nothing a vendor says chooses a path


@pytest.mark.parametrize(
    "key", ["../../escaped", "/tmp/abs", "..", "a/../../b", "score-reporter/.."]
)
def test_listing_product_key_never_chooses_the_folder(
    enc_sim: EncouraSimulator, tmp_path: Path, key: str
) -> None:
    """The export lands under the configured key, whatever productKey the listing claims."""
    uid = enc_sim.add_export("score-reporter", "scores.csv", b"1,2\r\n")
    enc_sim.hostile.listing_patch = {"productKey": key}
    deliveries = enc_deliveries(enc_sim, tmp_path)
    try:
        assert deliveries.poll() == [uid]
        assert deliveries.wait_idle(20)
    finally:
        deliveries.close(5)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".csv")
    assert files == [tmp_path / "files" / "encoura" / "score-reporter" / "scores.csv"]


def test_fetch_by_uid_listing_every_product_never_chooses_the_folder(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """`fetch encoura UID` lists the Delivered exports of every product: a productKey that is
    none of ours lands the export under `unknown`, inside the Encoura folder."""
    uid = enc_sim.add_export("score-reporter", "scores.csv", b"1\r\n")
    enc_sim.mark_delivered(uid)
    enc_sim.hostile.listing_patch = {"productKey": "../../escaped"}
    deliveries = enc_deliveries(enc_sim, tmp_path)
    try:
        assert locate(deliveries, [uid]) == [uid]
        landed = deliveries.deliver(uid)
    finally:
        deliveries.close(5)
    assert landed is not None
    assert landed.path == tmp_path / "files" / "encoura" / "unknown" / "scores.csv"


def test_an_older_ledger_row_with_a_hostile_product_key_is_refused(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """A row a previous version stored with the listing's productKey is not downloaded
    to that path: it is refused, not retried."""
    uid = enc_sim.add_export("score-reporter", "scores.csv", b"1\r\n")
    deliveries = enc_deliveries(enc_sim, tmp_path)
    deliveries.ledger.claim_all("encoura", [(uid, "../../escaped")], "listing")
    try:
        assert deliveries.deliver(uid) is None
    finally:
        deliveries.close(5)
    row = deliveries.ledger.get("encoura", uid)
    assert row is not None and row.state == "failed"
    assert not any(p.is_file() for p in tmp_path.rglob("scores.csv"))


@pytest.mark.parametrize(
    "segment", ["%ff.csv", "a%2f..%2fb.csv", "..", "%2e%2e", "x" * 300 + ".csv", "a%00.csv", ""]
)
def test_names_from_url_paths_are_refused_cleanly(
    enc_sim: EncouraSimulator, tmp_path: Path, segment: str
) -> None:
    """A download URL whose last segment is no plain name is a refused delivery (never an
    internal error), and nothing is written anywhere."""
    uid = enc_sim.add_export("score-reporter", "scores.csv", b"1\r\n")
    enc_sim.hostile.rewrite_url = lambda url: url.replace("/scores.csv?", f"/{segment}?")
    deliveries = enc_deliveries(enc_sim, tmp_path)
    deliveries.remember(
        Encoura(enc_config(enc_sim), build_session()).list_exports(
            "score-reporter", "NotDelivered"
        ),
        "listing",
    )
    try:
        assert deliveries.deliver(uid) is None
    finally:
        deliveries.close(5)
    row = deliveries.ledger.get("encoura", uid)
    assert row is not None and row.state == "failed" and row.error
    assert enc_sim.stats.downloads_started == 0
    assert not (tmp_path / "files").exists() or not any((tmp_path / "files").rglob("*.csv"))


@pytest.mark.parametrize("uid", ["../etc", "a/b", "", "x" * 200, "a\nb", "%2e%2e"])
def test_listed_uids_that_are_not_plain_are_left_out(enc_sim: EncouraSimulator, uid: str) -> None:
    """A listing entry whose uid is no plain identifier is not remembered or requested."""
    enc_sim.add_export("score-reporter", "scores.csv", b"1\r\n")
    enc_sim.hostile.listing_patch = {"uid": uid}
    client = Encoura(enc_config(enc_sim), build_session())
    assert client.list_exports("score-reporter", "NotDelivered") == []


# 7. Malformed, wrongly-typed and huge JSON through the real clients

CB_BODIES = [
    b'{"files": 1}',
    b'{"files": "a.csv"}',
    b'{"files": {"fileName": "a.csv"}}',
    b'{"files": [1, "a", null, {"fileName": 5}]}',
    b"[]",
    b'"files"',
    b"1e999999",
    b"not json",
    b'{"fileUrl": 5}',
    b'{"fileUrl": ["http://x"]}',
    b"\xff\xfe",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"files": [{"fileName": "a.csv", "fileSize": 1' + b"0" * 5000 + b"}]}",
]


@pytest.mark.parametrize("body", CB_BODIES, ids=lambda b: repr(b[:24]))
@pytest.mark.parametrize("endpoint", ["file", "list", "login"])
def test_collegeboard_odd_answers_are_vendor_errors(
    cb_sim: CollegeBoardSimulator, endpoint: str, body: bytes
) -> None:
    """Any 200 body is a typed answer or a VendorError; never TypeError, RecursionError…"""
    cb_sim.hostile.answers[endpoint] = body
    client = cb_client(cb_sim, auth="token")
    try:
        result: Any = client.file_url("a.csv") if endpoint == "file" else client.list_files(None)
    except VendorError:
        return
    assert isinstance(result, str | list)


ENC_BODIES = [
    b'{"sessionToken": "t", "user": {"organizations": 1}}',
    b'{"sessionToken": "t", "user": []}',
    b'{"sessionToken": "t", "user": {"organizations": [{"uid": 5}, "x", null]}}',
    b'{"sessionToken": 5}',
    b'{"sessionToken": ["a"]}',
    b'{"downloadUrl": 7}',
    b'[{"uid": 5}, {"uid": "a", "created": 1, "date": [1]}, 3]',
    b'{"uid": "a"}',
    b"null",
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("body", ENC_BODIES, ids=lambda b: repr(b[:24]))
@pytest.mark.parametrize("endpoint", ["login", "list", "download_url"])
def test_encoura_odd_answers_are_vendor_errors(
    enc_sim: EncouraSimulator, endpoint: str, body: bytes
) -> None:
    """Any 200 body is a typed answer, a VendorError, or (login) the ConfigError that
    says the account has no organization; never another exception."""
    enc_sim.hostile.answers[endpoint] = body
    client = Encoura(enc_config(enc_sim), build_session())
    try:
        if endpoint == "download_url":
            result: Any = client.download_url("uid-1")
        else:
            result = client.list_exports("score-reporter", "NotDelivered")
    except (VendorError, ConfigError):
        return
    assert isinstance(result, str | list)


def test_huge_json_answer_is_refused_in_bounded_memory(cb_sim: CollegeBoardSimulator) -> None:
    """A listing larger than the answer limit is a transient VendorError, not parsed."""
    entry = json.dumps({"fileName": "4300_20261121_101544.csv", "fileSize": 1}).encode()
    cb_sim.hostile.answers["list"] = b'{"files": [' + b",".join([entry] * 400_000) + b"]}"
    with pytest.raises(VendorError) as caught:
        cb_client(cb_sim).list_files(None)
    assert caught.value.kind == Failure.TRANSIENT and "larger than" in str(caught.value)


def test_gzip_bomb_answer_is_refused(cb_sim: CollegeBoardSimulator) -> None:
    """A gzip-encoded answer that inflates past the limit is refused while inflating."""
    cb_sim.hostile.answers["list"] = b'{"files": null' + b" " * (200 * 1024 * 1024) + b"}"
    cb_sim.hostile.api_gzip = True
    with pytest.raises(VendorError) as caught:
        cb_client(cb_sim).list_files(None)
    assert "larger than" in str(caught.value)


def test_gzip_answer_within_limit_is_read(cb_sim: CollegeBoardSimulator) -> None:
    """An API answer gzip-encoded (as servers may) is still read: only downloads are raw."""
    cb_sim.publish("a.csv", b"1\n")
    cb_sim.hostile.api_gzip = True
    assert [f.name for f in cb_client(cb_sim).list_files(None)] == ["a.csv"]


def test_lying_listing_sizes_and_dates_are_typed(cb_sim: CollegeBoardSimulator) -> None:
    """fileSize true, negative or text and deliveryDate non-text come back as None."""
    cb_sim.hostile.answers["list"] = json.dumps(
        {
            "files": [
                {"fileName": " a.csv ", "fileSize": True, "deliveryDate": 5},
                {"fileName": "b.csv", "fileSize": -1, "deliveryDate": ["x"]},
                {"fileName": "c.csv", "fileSize": "12"},
            ]
        }
    ).encode()
    listed = cb_client(cb_sim).list_files(None)
    assert [(f.name, f.size, f.delivered) for f in listed] == [
        ("a.csv", None, None),
        ("b.csv", None, None),
        ("c.csv", None, None),
    ]


def test_refused_error_is_what_a_bad_url_raises() -> None:
    """RefusedError (never retried) is what check_url raises for a hostile fileUrl."""
    from scorefetch.core.downloads import check_url

    with pytest.raises(RefusedError):
        check_url("https://127.0.0.1\\.s3.amazonaws.com/x", ["*.s3.amazonaws.com"])


def test_vendor_message_reaches_the_error_printable_and_short(
    cb_sim: CollegeBoardSimulator,
) -> None:
    """A 404's JSON message with escape sequences and newlines is cut to one printable
    line: nothing a vendor writes can drive the terminal that shows `status`."""
    cb_sim.hostile.answers.clear()
    message = "\x1b[2J\x1b]0;owned\x07line1\nline2 " + "x" * 500
    from scorefetch.sandbox import collegeboard as module

    original = module.CollegeBoardSimulator._file_url
    module.CollegeBoardSimulator._file_url = (  # type: ignore[method-assign]
        lambda self, name: (404, {"message": message})
    )
    try:
        with pytest.raises(VendorError) as caught:
            cb_client(cb_sim).file_url("a.csv")
    finally:
        module.CollegeBoardSimulator._file_url = original  # type: ignore[method-assign]
    text = str(caught.value)
    assert caught.value.kind == Failure.NOT_FOUND
    assert text.isprintable() and "\x1b" not in text and len(text) < 300
