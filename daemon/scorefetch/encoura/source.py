"""Encoura as a source: the poller lists each product key and lands the new exports;
`fetch` by export uid, `sync` also lists Delivered exports."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from scorefetch.config import Config
from scorefetch.core.downloads import Progress
from scorefetch.core.engine import Engine
from scorefetch.core.errors import VendorError
from scorefetch.core.events import Events
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.core.sources import Say, SourceBase, again
from scorefetch.encoura.client import Encoura
from scorefetch.encoura.poller import (
    KNOWN_PRODUCT_KEYS,
    EncouraDeliveries,
    locate,
    recover,
    start_poller,
)


class EncouraSource(SourceBase[EncouraDeliveries]):
    vendor = "encoura"

    @classmethod
    def create(
        cls,
        config: Config,
        ledger: Ledger,
        progress: Callable[[str], Progress | None] | None,
        events: Events | None,
        engine: Engine | None = None,
    ) -> EncouraSource:
        assert config.encoura is not None
        client = Encoura(config.encoura, build_session())
        wiring = cls.wiring(config, progress, events, engine)
        return cls(EncouraDeliveries(client, ledger, config.download_dir, **wiring))

    def start(self, stop: threading.Event, running: threading.Event) -> threading.Event:
        """Log in now so that an ambiguous organization stops the start (exit 78); a vendor
        outage does not: the poller logs in again on its first pass."""
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
        uids = recover(self.deliveries, since)
        say(f"encoura: {len(uids)} exports since {since.date().isoformat()} to download")
        return uids
