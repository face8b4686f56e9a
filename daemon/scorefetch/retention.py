"""Retention: student records should not pile up on a server forever. A landed file older
than `retention.keep_days` is deleted once every forward destination that took it on has it;
its ledger row stays (name, sha256, when), so the file is still never downloaded again."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from scorefetch.core import logs
from scorefetch.core.ledger import Ledger

if TYPE_CHECKING:
    from scorefetch.config import Config

SWEEP_INTERVAL_S = 3600.0
DAY_S = 86400.0


class Retention:
    """`sweep()` once at start and then hourly on its own thread, until `close()`."""

    def __init__(
        self,
        ledger: Ledger,
        keep_days: float | None,
        destinations: Mapping[str, tuple[str, ...]],
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.ledger = ledger
        self.keep_days = keep_days
        self.destinations = dict(destinations)  # name → the vendors it wants
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logs.get()

    @classmethod
    def from_config(cls, config: Config, ledger: Ledger) -> Retention:
        wanted = {name: tuple(dest.vendors) for name, dest in config.forward.items()}
        return cls(ledger, config.retention.keep_days, wanted)

    def wanted_by(self, vendor: str) -> list[str]:
        return [name for name, vendors in self.destinations.items() if vendor in vendors]

    def _everywhere(self, vendor: str, key: str, landed_at: str, since: dict[str, str]) -> bool:
        """Every destination that owes this file has confirmed it: each one configured
        when it landed (`since`: when each destination was first configured) or whose row
        exists, however it came, and any row of a destination no longer configured that
        was not finished (a person decides those)."""
        states = self.ledger.forwards.states(vendor, key)
        for name in self.wanted_by(vendor):
            owed = name in states or since.get(name, landed_at) <= landed_at
            if owed and states.get(name) != "uploaded":
                return False
        return all(state == "uploaded" for state in states.values())

    def sweep(self, now: float | None = None) -> list[Path]:
        """Delete what is due; returns the paths removed."""
        if self.keep_days is None:
            return []
        now = time.time() if now is None else now
        removed = []
        kept = self.ledger.kept()
        since = self.ledger.forwards.since()
        # Two rows may share one file (two exports of one name with the same bytes): it is
        # deleted only when every row of that path is done everywhere.
        owed = {
            r.path
            for r in kept
            if not self._everywhere(r.vendor, r.key, r.landed_at or r.updated_at, since)
        }
        for row in kept:
            path = Path(str(row.path))
            try:
                age_days = (now - path.stat().st_mtime) / DAY_S
            except FileNotFoundError:
                self.ledger.removed(row.vendor, row.key)  # gone by other hands: history only
                continue
            if age_days < self.keep_days:
                continue
            if row.path in owed:
                continue
            path.unlink(missing_ok=True)
            self.ledger.removed(row.vendor, row.key)
            removed.append(path)
            self._log.info(
                "retention.removed",
                vendor=row.vendor,
                filename=path.name,
                path=str(path),
                age_days=round(age_days, 1),
            )
        return removed

    def start(self) -> None:
        if self.keep_days is None:
            return
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a failed sweep is retried next hour
                self._log.error("retention.failed", exc_info=True)
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
