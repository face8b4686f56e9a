"""Both vendor clients across every reading of the vendors' documents (issue 17): each
simulator switched to one dialect, the real client over loopback HTTP, a real ledger and
real files. A change that works in one reading and breaks another fails here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.reconciliation import Reconciler
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.doctor.checks import Clock
from scorefetch.encoura.client import Encoura
from scorefetch.encoura.doctor import check as check_encoura
from scorefetch.encoura.poller import EncouraDeliveries, locate, recover
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.encoura import EncouraSimulator
from tests.support import encoura_config, files_under, wait_until

# Each reading the Encoura document leaves open (seed 000), as simulator switches.
ENCOURA_DIALECTS: dict[str, dict[str, Any]] = {
    "as-modelled-before": {},
    "default-page-with-limit-skip": {"default_limit": 3},
    "limit-capped-below-ours": {"default_limit": 2, "max_limit": 2},
    "limit-skip-ignored": {"ignore_paging": True},
    "delivered-when-url-asked": {"delivered_on": "url"},
    "delivered-when-url-asked-no-paging": {"delivered_on": "url", "ignore_paging": True},
    "403-for-expired-token": {"expired_token_status": 403},
    "downloadURL": {"download_url_key": "downloadURL"},
    "email-login-only": {"login_fields": frozenset({"email"})},
    "userName-login-only": {"login_fields": frozenset({"userName"})},
    "isExpired": {"expire_every": 3},
    "list-generated-later": {"generated_after": 1},
    "quantity-disagrees": {"quantity_off": 5},
    "429-retry-after": {},
}
CB_DIALECTS: dict[str, dict[str, Any]] = {
    "as-modelled-before": {},
    "403-for-expired-token": {"expired_token_status": 403},
    "essay-files-listed": {"other_type_every": 2},
    "size-and-records-disagree": {"size_off": 7, "records_off": -1},
    "429-retry-after": {},
}
CONFIGURED = ("score-reporter", "prospect")
PAGE = 2  # the client's Limit here: every listing of 5 exports takes several pages


@pytest.fixture(params=sorted(ENCOURA_DIALECTS))
def enc_dialect(request: pytest.FixtureRequest) -> Iterator[tuple[str, EncouraSimulator]]:
    """An Encoura simulator switched to one reading of the document."""
    with EncouraSimulator() as sim:
        yield request.param, sim.with_dialect(**ENCOURA_DIALECTS[request.param])


def encoura(sim: EncouraSimulator, tmp_path: Path, dialect: str) -> EncouraDeliveries:
    login_as = "userName" if dialect == "userName-login-only" else "auto"
    config = encoura_config(
        sim, login_as=login_as, product_keys=list(CONFIGURED), retry_schedule=[0.1, 0.1]
    )
    client = Encoura(config, build_session(), sleep=_recorded_sleep)
    client.page_limit = PAGE
    return EncouraDeliveries(client, Ledger(tmp_path / "l.sqlite3"), tmp_path / "files")


WAITS: list[float] = []


def _recorded_sleep(seconds: float) -> None:
    """The clock the clients wait a Retry-After on: real, and written down."""
    WAITS.append(seconds)
    time.sleep(seconds)


def settled(deliveries: EncouraDeliveries, uids: list[str]) -> bool:
    """Every uid downloaded or given up (an expired export) in the ledger."""
    rows = [deliveries.ledger.get("encoura", uid) for uid in uids]
    return all(row is not None and row.state in ("downloaded", "failed") for row in rows)


def test_encoura_lands_every_configured_export_once_in_every_reading(
    enc_dialect: tuple[str, EncouraSimulator], tmp_path: Path
) -> None:
    """Whatever the reading (paging, token refusal, URL key, login field, 429, late or
    expired exports), every downloadable export of a configured product lands once with
    its bytes, an expired one never does, and an unconfigured product is never consumed."""
    dialect, sim = enc_dialect
    ours: dict[str, tuple[str, bytes]] = {}  # uid: (product-key/name, bytes)
    for key, count in (("score-reporter", 5), ("prospect", 2)):
        for n in range(count):
            data = f"id\n{key},{n}\n".encode()
            ours[sim.add_export(key, f"{key}-{n}.csv", data)] = (f"{key}/{key}-{n}.csv", data)
    theirs = sim.add_export("inquiry", "inquiry-0.csv", b"id\n1\n")
    deliveries = encoura(sim, tmp_path, dialect)
    deliveries.client.login()
    sim.expire_tokens()  # every reading also meets an expired token on its first listing
    WAITS.clear()
    if dialect == "429-retry-after":
        sim.throttle.add("list", "1")
        soon = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
        sim.throttle.add("download_url", soon)

    assert sorted(deliveries.poll()) == sorted(ours)
    wait_until(lambda: settled(deliveries, list(ours)), timeout=60)
    deliveries.close(5)

    expired = {uid for uid in ours if sim.export(uid)["isExpired"]}
    assert bool(expired) == (dialect == "isExpired")
    for uid in expired:  # given up at once, never asked for, with what to do
        row = deliveries.ledger.get("encoura", uid)
        assert row is not None and row.state == "failed" and "regenerate" in (row.error or "")
    assert not expired.intersection(sim.stats.download_url_uids)
    assert files_under(tmp_path / "files" / "encoura") == {
        path: data for uid, (path, data) in ours.items() if uid not in expired
    }
    assert sim.export(theirs)["status"] == "NotDelivered"
    stats = sim.stats
    assert stats.reused_url_rejections == 0 and stats.api_headers_on_download == 0
    assert stats.login_calls == 2  # the expired token: one fresh login, no auth failure
    if dialect == "429-retry-after":
        assert WAITS[0] == 1.0 and 0.0 <= WAITS[1] <= 3.0 and sim.throttle.answered == 2


def test_encoura_walks_delivered_listings_whole_in_every_reading(
    enc_dialect: tuple[str, EncouraSimulator], tmp_path: Path
) -> None:
    """`sync`'s recovery and `fetch UID` see every Delivered export, across pages, in
    every reading; `fetch` finds one through the Delivered listing and consumes nothing."""
    dialect, sim = enc_dialect
    uids = [sim.add_export("score-reporter", f"s-{n}.csv", b"id\n1\n") for n in range(5)]
    theirs = sim.add_export("inquiry", "inquiry-0.csv", b"id\n1\n")
    elsewhere = encoura(sim, tmp_path / "elsewhere", dialect)
    assert len(elsewhere.client.list_exports("score-reporter", "NotDelivered")) == 5  # consumed
    elsewhere.close(1)
    deliveries = encoura(sim, tmp_path, dialect)

    assert locate(deliveries, [uids[4]]) == [uids[4]]
    assert sim.export(theirs)["status"] == "NotDelivered"
    assert sorted(recover(deliveries, datetime.now(UTC) - timedelta(days=1))) == sorted(uids)
    deliveries.close(1)
    queries = sim.stats.list_queries
    assert all(q["Limit"] == str(PAGE) for q in queries)
    # Never a loop: a walk ends after one page with nothing new. At most 7 walks here
    # (elsewhere 1, locate 1 + 2, recover 4) of at most 3 pages of 2, a repeat and an end.
    assert len(queries) <= 7 * 5 and max(int(q["Skip"]) for q in queries) <= 6


def test_doctor_reports_what_encoura_showed(
    enc_dialect: tuple[str, EncouraSimulator], tmp_path: Path
) -> None:
    """doctor's encoura line names the login field, the listing's paging and the token's
    lifetime, in every reading."""
    dialect, sim = enc_dialect
    for n in range(3):
        sim.mark_delivered(sim.add_export("score-reporter", f"s-{n}.csv", b"id\n1\n"))
    login_as = "userName" if dialect == "userName-login-only" else "auto"
    config = encoura_config(sim, login_as=login_as)
    check = check_encoura(config, Clock())
    assert check.ok, check
    assert f"logged in with {'userName' if login_as == 'userName' else 'email'}" in check.detail
    assert "session token lives 20 min" in check.detail
    switches = ENCOURA_DIALECTS[dialect]
    expected = (
        "listing: Limit/Skip ignored (3 exports in every answer)"
        if switches.get("ignore_paging")
        else "listing: pages of at most 2 (fewer than Limit 100)"
        if switches.get("max_limit") == 2
        else "listing: one page (3 exports)"
    )
    assert expected in check.detail and "score-reporter: 3 delivered" in check.detail


@pytest.fixture(params=sorted(CB_DIALECTS))
def cb_dialect(request: pytest.FixtureRequest) -> Iterator[tuple[str, CollegeBoardSimulator]]:
    """A College Board simulator switched to one reading."""
    with CollegeBoardSimulator() as sim:
        yield request.param, sim.with_dialect(**CB_DIALECTS[request.param])


@pytest.mark.parametrize("auth", ["token", "one-step"])
def test_collegeboard_listing_lands_every_wanted_file_in_every_reading(
    cb_dialect: tuple[str, CollegeBoardSimulator], auth: str, tmp_path: Path
) -> None:
    """Whatever the reading (403 for an expired token, essay entries, sizes and counts that
    disagree, 429), a listing pass lands every wanted file with its bytes, and the listing's
    own figures are read as given."""
    dialect, sim = cb_dialect
    names = [f"4300_20261121_00000{n}.csv" for n in range(4)]
    for name in names:
        sim.publish(name, f"id\n{name}\n".encode())
    config = CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "auth": auth,
            "download_hosts": [sim.download_host],
            "retry_schedule": [0.1],
        }
    )
    client = CollegeBoard(config, build_session(), sleep=_recorded_sleep)
    deliveries = CollegeBoardDeliveries(client, Ledger(tmp_path / "l.sqlite3"), tmp_path / "files")
    listed = client.list_files(None)
    sim.expire_tokens()  # token mode meets an expired token on its next call
    WAITS.clear()
    if dialect == "429-retry-after":
        sim.throttle.add("list", "1")
        sim.throttle.add("file", format_datetime(datetime.now(UTC), usegmt=True))

    assert sorted(Reconciler(deliveries, lookback_days=1).run_once()) == names
    assert deliveries.wait_idle(30)
    deliveries.close(5)

    assert files_under(tmp_path / "files" / "collegeboard") == {
        name: f"id\n{name}\n".encode() for name in names
    }
    off = CB_DIALECTS[dialect]
    assert [f.size for f in listed] == [len(f"id\n{n}\n") + off.get("size_off", 0) for n in names]
    assert [f.records for f in listed] == [1 + off.get("records_off", 0)] * 4
    essays = [f.name for f in listed if f.file_type == "Essay File"]
    assert len(essays) == (2 if dialect == "essay-files-listed" else 0)
    assert sim.stats.login_calls == (2 if auth == "token" else 0)
    if dialect == "429-retry-after":
        assert WAITS == [1.0, 0.0] and sim.throttle.answered == 2
