"""The vendor clients' readings one at a time (issue 17): Retry-After, stale tokens, refresh
failures, the login field, paging that never loops; real simulators over loopback HTTP."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core import interrupt
from scorefetch.core.answers import retry_after
from scorefetch.core.errors import Failure, VendorError
from scorefetch.core.http import build_session
from scorefetch.encoura import client as encoura_client
from scorefetch.encoura.client import (
    Encoura,
    login_field,
    parse_download_url,
    parse_exports,
    token_lifetime,
)
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.encoura import EncouraSimulator
from tests.standins.hostile import HostileEncoura
from tests.support import LogLines, encoura_config

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def enc_sim() -> Iterator[HostileEncoura]:
    with HostileEncoura() as sim:
        yield sim


def enc_client(sim: EncouraSimulator, waits: list[float] | None = None, **over: Any) -> Encoura:
    config = encoura_config(sim, **over)
    return Encoura(config, build_session(), sleep=(waits if waits is not None else []).append)


def cb_client(sim: CollegeBoardSimulator, waits: list[float]) -> CollegeBoard:
    config = CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "auth": "token",
            "download_hosts": [sim.download_host],
        }
    )
    return CollegeBoard(config, build_session(), sleep=waits.append)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After is delay-seconds or an HTTP-date (a past date is no wait); else unknown."""
    now = NOW.timestamp()
    assert retry_after("7", now) == 7.0
    assert retry_after(format_datetime(NOW + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), now) == 0.0
    for unreadable in (None, "", "soon", "-5", "1.5"):
        assert retry_after(unreadable, now) is None


def test_long_or_repeated_429_is_a_transient_failure(enc_sim: EncouraSimulator) -> None:
    """A Retry-After beyond 60 s is not slept on, nor a fourth 429 in a row: the call fails
    as transient and the listing's own schedule takes over."""
    waits: list[float] = []
    client = enc_client(enc_sim, waits)
    enc_sim.throttle.add("list", "3600")
    with pytest.raises(VendorError) as caught:
        client.list_exports("score-reporter", "Delivered")
    assert caught.value.kind is Failure.TRANSIENT and caught.value.status == 429
    assert waits == []
    enc_sim.throttle.add("list", "0", count=3)
    with pytest.raises(VendorError):
        client.list_exports("score-reporter", "Delivered")
    assert waits == [0.0, 0.0]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_after_a_fresh_login_is_auth(enc_sim: EncouraSimulator, status: int) -> None:
    """A token refused again right after a fresh login is the vendor's verdict: `auth`,
    after exactly one fresh login (never a loop of logins)."""
    enc_sim.with_dialect(expired_token_status=status).token_lifetime = 0.0
    client = enc_client(enc_sim)
    with pytest.raises(VendorError) as caught:
        client.list_exports("score-reporter", "Delivered")
    assert caught.value.kind is Failure.AUTH
    assert enc_sim.stats.login_calls == 2


@pytest.mark.parametrize("status", [401, 403])
def test_collegeboard_token_refused_twice_is_auth(status: int) -> None:
    """College Board token mode: a refused token means one new login and one retry; a
    refusal after that is `auth`."""
    with CollegeBoardSimulator() as sim:
        sim.with_dialect(expired_token_status=status).token_lifetime = 0.0
        with pytest.raises(VendorError) as caught:
            cb_client(sim, []).list_files(None)
        assert caught.value.kind is Failure.AUTH
        assert sim.stats.login_calls == 2


def test_wrong_password_is_auth_after_one_login(enc_sim: EncouraSimulator) -> None:
    """A refused /login is the credentials' fault at once: no second login."""
    with pytest.raises(VendorError) as caught:
        enc_client(enc_sim, password="wrong").list_exports("score-reporter", "Delivered")
    assert caught.value.kind is Failure.AUTH and enc_sim.stats.login_calls == 1


def test_failed_refresh_is_logged_then_a_fresh_login(
    enc_sim: EncouraSimulator, log_lines: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh that fails logs encoura.refresh_failed (error level, no token) and the call
    goes on after a fresh login."""
    client = enc_client(enc_sim)
    client.login()
    token = client.token
    monkeypatch.setattr(encoura_client, "REFRESH_AFTER_S", -1.0)  # every token is due
    enc_sim.inject("refresh", 500)
    assert client.list_exports("score-reporter", "Delivered") == []
    failed = log_lines.events("encoura.refresh_failed")
    assert len(failed) == 1 and failed[0]["level"] == "error" and "500" in failed[0]["error"]
    assert token is not None and token not in log_lines.getvalue()
    assert enc_sim.stats.login_calls == 2


@pytest.mark.parametrize(
    ("login_as", "username", "field"),
    [
        ("auto", "service-account@example.edu", "email"),
        ("auto", "sampleuniversity0", "userName"),
        ("userName", "service-account@example.edu", "userName"),
        ("email", "sampleuniversity0", "email"),
    ],
)
def test_login_field(login_as: str, username: str, field: str) -> None:
    """encoura.login_as picks the /login member; auto keeps the old rule (an @: email)."""
    assert login_field(login_as, username) == field


def test_login_as_reaches_a_server_that_takes_one_field(enc_sim: EncouraSimulator) -> None:
    """A server that accepts only userName refuses the auto choice for an address and
    accepts login_as: userName."""
    enc_sim.with_dialect(login_fields=frozenset({"userName"}))
    with pytest.raises(VendorError):
        enc_client(enc_sim).login()
    client = enc_client(enc_sim, login_as="userName")
    client.login()
    assert client.login_field == "userName"


def test_both_spellings_of_the_download_url() -> None:
    """downloadUrl (seed 000 line 304) and downloadURL (line 286) are both read."""
    assert parse_download_url({"downloadUrl": "https://a/x.csv"}) == "https://a/x.csv"
    assert parse_download_url({"downloadURL": "https://a/y.csv"}) == "https://a/y.csv"
    with pytest.raises(VendorError):
        parse_download_url({"downloadurl": "https://a/z.csv"})


def test_token_lifetime_from_the_jwt_claims(enc_sim: EncouraSimulator) -> None:
    """The session token's lifetime is read from its iat/exp claims; anything else: None."""
    client = enc_client(enc_sim)
    client.login()
    assert token_lifetime(client.token or "") == 1200.0
    assert token_lifetime("45B5B7E7-0000") is None and token_lifetime("a.b.c") is None


def test_a_server_repeating_a_full_page_is_walked_once(enc_sim: EncouraSimulator) -> None:
    """A server answering every request with the same page (paging ignored) costs two
    requests for Delivered and three for NotDelivered, whatever its size: never a loop."""
    uids = [enc_sim.add_export("score-reporter", f"{n}.csv", b"id\n1\n") for n in range(7)]
    enc_sim.with_dialect(ignore_paging=True, delivered_on="url")
    client = enc_client(enc_sim)
    client.page_limit = 2
    assert [e.uid for e in client.list_exports("score-reporter", "NotDelivered")] == uids
    assert enc_sim.stats.list_calls == 3 and client.paging.skip_ignored
    assert [e.uid for e in client.list_exports("score-reporter", "Delivered")] == []
    assert enc_sim.stats.list_calls == 4


def test_pages_are_handed_over_one_at_a_time(enc_sim: EncouraSimulator) -> None:
    """pages() yields each page before asking for the next (so each can be recorded before
    the vendor marks more Delivered)."""
    for n in range(5):
        enc_sim.add_export("score-reporter", f"{n}.csv", b"id\n1\n")
    client = enc_client(enc_sim)
    client.page_limit = 2
    walk = client.pages("score-reporter", "NotDelivered")
    assert len(next(walk)) == 2 and enc_sim.stats.list_calls == 1
    assert [len(page) for page in walk] == [2, 1]


def test_an_export_listed_expired_is_never_asked_for(enc_sim: EncouraSimulator) -> None:
    """isExpired in the listing: its URL is not requested; the failure is final (fatal) and
    names the uid, the product key, the creation date and what to do."""
    created = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
    uid = enc_sim.add_export("score-reporter", "old.csv", b"id\n1\n", created_at=created)
    enc_sim.expire_export(uid)
    client = enc_client(enc_sim)
    assert [e.expired for e in client.list_exports("score-reporter", "NotDelivered")] == [True]
    with pytest.raises(VendorError) as caught:
        client.download_url(uid)
    assert caught.value.kind is Failure.FATAL
    assert f"{uid} (score-reporter, created 2026-11-21)" in str(caught.value)
    assert "regenerate" in str(caught.value) and enc_sim.stats.download_url_calls == 0


def test_a_listed_entry_that_cannot_be_fetched_is_said_not_dropped(log_lines: LogLines) -> None:
    """Listing marks an export Delivered: one whose uid is not a plain string cannot be
    fetched, so it is said (`listing.unreadable`, how many, one cleaned example), not
    silently dropped; a uid sent as a number is read as its digits."""
    answer = [{"uid": 12345}, {"uid": "a/b\x1b[2J"}, {"name": "no uid"}, {"uid": "ok-1"}]
    found = parse_exports(answer, "score-reporter", [])
    assert [e.uid for e in found] == ["12345", "ok-1"]
    (said,) = log_lines.events("listing.unreadable")
    assert said["entries"] == 2 and said["product_key"] == "score-reporter"
    assert "\x1b" not in said["example"]


def test_a_ctrl_c_lost_between_pages_stops_the_walk(enc_sim: EncouraSimulator) -> None:
    """`sync` walks every page of a listing; a Ctrl-C lost meanwhile (raised in a
    finalizer) stops the walk before the next page is asked for, after the page in hand
    was handed over (and recorded)."""
    for n in range(5):
        enc_sim.add_export("score-reporter", f"{n}.csv", b"id\n1\n")
    client = enc_client(enc_sim)
    client.page_limit = 2
    walk = client.pages("score-reporter", "NotDelivered")
    assert len(next(walk)) == 2
    try:
        with contextlib.suppress(KeyboardInterrupt):  # lost, as in a finalizer
            interrupt._on_sigint(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            next(walk)
    finally:
        interrupt._asked = False
    assert enc_sim.stats.list_calls == 1
