"""Encoura passes: one product key whose listing fails holds back no other, each key's new
exports are queued as soon as the ledger holds them, and a pass cut off between the
vendor's answer (which marks exports Delivered) and the ledger's commit is recovered on
the next pass without a manual `sync`. Real simulator over loopback, real ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scorefetch.core.errors import Failure, VendorError
from scorefetch.encoura.poller import LISTING_PASS, EncouraDeliveries, ListingFailed
from scorefetch.sandbox.encoura import EncouraSimulator
from tests.support import wait_until
from tests.test_exports import exports, landed


class FailingKey(EncouraSimulator):
    """Answers the listing of product key `broken` with a 500 (or a 403)."""

    broken = "prospect"
    status = 500

    def _listing(self, org: str, query: dict[str, str]) -> tuple[int, object]:
        if query.get("productKey") == self.broken:
            return self.status, {"message": "Service error"}
        return super()._listing(org, query)


@pytest.fixture
def failing() -> Iterator[FailingKey]:
    with FailingKey() as sim:
        yield sim


def keys(
    sim: EncouraSimulator, tmp_path: Path, *product_keys: str, **more: Any
) -> EncouraDeliveries:
    return exports(sim, tmp_path, product_keys=list(product_keys), **more)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_one_failing_key_holds_back_no_other(
    failing: FailingKey, tmp_path: Path, position: str
) -> None:
    """Wherever the failing key stands, every other key is listed and its exports land."""
    order = {
        "first": ["prospect", "score-reporter", "inquiry"],
        "middle": ["score-reporter", "prospect", "inquiry"],
        "last": ["score-reporter", "inquiry", "prospect"],
    }[position]
    a = failing.add_export("score-reporter", "a.csv", b"a\r\n")
    b = failing.add_export("inquiry", "b.csv", b"b\r\n")
    failing.add_export("prospect", "p.csv", b"p\r\n")
    deliveries = keys(failing, tmp_path, *order)
    with pytest.raises(ListingFailed) as caught:
        deliveries.poll()
    assert [key for key, _ in caught.value.failures] == ["prospect"]
    assert caught.value.kind == Failure.TRANSIENT
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    assert landed(tmp_path) == {"score-reporter/a.csv": b"a\r\n", "inquiry/b.csv": b"b\r\n"}
    assert {a, b} <= set(failing.stats.download_url_uids)


def test_exports_of_a_key_are_queued_before_the_next_key_is_listed(
    failing: FailingKey, tmp_path: Path
) -> None:
    """A key's new exports are downloading while a later key's listing is still pending."""
    uid = failing.add_export("score-reporter", "early.csv", b"early\r\n")
    deliveries = keys(failing, tmp_path, "score-reporter", "prospect")
    seen_before_second: list[bool] = []
    original = deliveries.client.pages

    def watching(product_key: str | None, status: str) -> Any:
        if product_key == "prospect":
            wait_until(lambda: uid in failing.stats.download_url_uids, timeout=10)
            seen_before_second.append(True)
        return original(product_key, status)

    deliveries.client.pages = watching  # type: ignore[method-assign]
    with pytest.raises(ListingFailed):
        deliveries.poll()
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    assert seen_before_second == [True]
    assert landed(tmp_path) == {"score-reporter/early.csv": b"early\r\n"}


def test_refused_account_stops_the_pass_at_once(failing: FailingKey, tmp_path: Path) -> None:
    """A refused API key is the account's, not a key's: one login, one failure, no hammering."""
    deliveries = keys(failing, tmp_path, "score-reporter", "inquiry", api_key="wrong-key-123")
    with pytest.raises(VendorError) as caught:
        deliveries.poll()
    deliveries.close(1)
    assert caught.value.kind == Failure.AUTH
    assert failing.stats.login_calls == 1


def test_pass_cut_off_after_the_vendor_answered_is_recovered(
    failing: FailingKey, tmp_path: Path
) -> None:
    """A pass started and never completed (SIGKILL after the listing marked the exports
    Delivered): the next pass lists Delivered exports since the last completed pass and
    lands them; exports from before that are left alone."""
    old = failing.add_export(
        "score-reporter", "old.csv", b"old\r\n", created_at=datetime.now(UTC) - timedelta(days=9)
    )
    uid = failing.add_export("score-reporter", "cut.csv", b"cut\r\n")
    deliveries = keys(failing, tmp_path, "score-reporter")
    ledger = deliveries.ledger
    completed = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    ledger.set_position(f"{LISTING_PASS}.score-reporter.completed", completed)
    ledger.set_position(f"{LISTING_PASS}.score-reporter.started", datetime.now(UTC).isoformat())
    deliveries.client.list_exports("score-reporter", "NotDelivered")  # the answer that was lost
    assert failing.export(uid)["status"] == failing.export(old)["status"] == "Delivered"
    assert deliveries.poll() == [uid]
    assert deliveries.wait_idle(30)
    assert deliveries.poll() == []  # the pass completed: nothing to recover any more
    deliveries.close(5)
    assert landed(tmp_path) == {"score-reporter/cut.csv": b"cut\r\n"}


def test_completed_passes_recover_nothing(failing: FailingKey, tmp_path: Path) -> None:
    """After a pass that completed, Delivered exports (another tool's) are not fetched."""
    deliveries = keys(failing, tmp_path, "score-reporter")
    assert deliveries.poll() == []
    uid = failing.add_export("score-reporter", "theirs.csv", b"t\r\n")
    deliveries.client.list_exports("score-reporter", "NotDelivered")  # another tool took it
    assert deliveries.poll() == []
    deliveries.close(1)
    assert failing.export(uid)["status"] == "Delivered" and not landed(tmp_path)
