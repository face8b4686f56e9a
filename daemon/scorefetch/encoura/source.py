"""Encoura as a source: the poller lists each product key and lands the new exports;
`fetch` by export uid, `sync` also lists Delivered exports.

The client, the poller and the doctor check are imported when Encoura is enabled (or
its doctor check runs): a College-Board-only daemon does not carry them."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from scorefetch.config import SourceSettings
from scorefetch.core.errors import VendorError
from scorefetch.core.http import build_session
from scorefetch.encoura.settings import EncouraConfig
from scorefetch.source import Listing, Say, SourceBase, Wiring, again

if TYPE_CHECKING:
    from scorefetch.doctor.checks import Check, Clock
    from scorefetch.encoura.poller import EncouraDeliveries  # noqa: F401 - the base's type

LISTING_PASS = "encoura.pass"  # noqa: S105 - not a password: the poller's ledger positions


class EncouraSource(SourceBase["EncouraDeliveries"]):
    vendor = "encoura"
    settings = EncouraConfig
    title = "Encoura"

    @classmethod
    def create(cls, section: SourceSettings, wiring: Wiring) -> EncouraSource:
        assert isinstance(section, EncouraConfig)
        from scorefetch.encoura.client import Encoura
        from scorefetch.encoura.poller import EncouraDeliveries

        return cls(wiring.lane(EncouraDeliveries, Encoura(section, build_session())))

    @classmethod
    def doctor(cls, section: SourceSettings, clock: Clock) -> Check | None:
        assert isinstance(section, EncouraConfig)
        from scorefetch.encoura.doctor import check

        return check(section, clock)

    @classmethod
    def listings(cls, positions: Mapping[str, Mapping[str, str]]) -> dict[str, Listing]:
        """One per product key: positions `encoura.pass.<key>.started` / `.completed`."""
        passes: dict[str, dict[str, str]] = {}
        prefix = f"{LISTING_PASS}."
        for key, item in positions.items():
            if key.startswith(prefix):
                product, _, which = key[len(prefix) :].rpartition(".")
                passes.setdefault(product, {})[which] = item["value"]
        return {
            f"{cls.vendor}.{product}": Listing(
                product, moments["started"], moments.get("completed")
            )
            for product, moments in sorted(passes.items())
            if "started" in moments
        }

    def start(self, stop: threading.Event, running: threading.Event) -> threading.Event:
        """Log in now so that an ambiguous organization stops the start (exit 78); a vendor
        outage does not: the poller logs in again on its first pass."""
        from scorefetch.encoura.poller import KNOWN_PRODUCT_KEYS, start_poller

        for key in self.deliveries.config.product_keys:
            if key not in KNOWN_PRODUCT_KEYS:
                self._log.warning(
                    "encoura.unknown_product_key", product_key=key, known=sorted(KNOWN_PRODUCT_KEYS)
                )
        try:
            organization = self.deliveries.client.login()
            self._log.info("encoura.logged_in", organization=organization)
        except VendorError as exc:
            self._log.error("encoura.login_failed", error=str(exc))
        self._loops.append(start_poller(self.deliveries, stop, running).thread)
        watching = threading.Event()
        watching.set()
        return watching

    def fetch(self, keys: list[str], say: Say, *, force: bool = False) -> list[str]:
        from scorefetch.encoura.poller import locate

        ready = locate(self.deliveries, keys)
        for uid in keys:
            row = self.deliveries.ledger.get(self.vendor, uid)
            if uid in ready or row is None:
                continue
            if again(self.deliveries.ledger, self.vendor, uid, "fetch", force, say):
                ready.append(uid)
            else:
                say(f"{uid}: already downloaded at {row.path} (--force downloads it again)")
        return ready

    def sync(self, since: datetime, say: Say) -> list[str]:
        from scorefetch.encoura.poller import recover

        uids = recover(self.deliveries, since)
        say(f"encoura: {len(uids)} exports since {since.date().isoformat()} to download")
        return uids
