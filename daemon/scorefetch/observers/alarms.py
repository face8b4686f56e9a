"""Credential failures as one alarm per run, not one per file.

College Board's password expires periodically; then every call fails. The first
failure of a run is `auth.failing` (logged, published for hooks and metrics, kept in
the ledger for `scorefetch status`); the next file that lands is `auth.recovered`.
The state survives a restart, so a daemon restarted with the same stale password
does not page again.
"""

from __future__ import annotations

import threading

from scorefetch.core import logs
from scorefetch.core.errors import Failure
from scorefetch.core.events import (
    AuthFailing,
    AuthRecovered,
    DeliveryFailed,
    Downloaded,
    Event,
    Events,
)
from scorefetch.core.ledger import Ledger

FAILING = "failing"


def watcher_key(vendor: str) -> str:
    """The ledger's watcher-table name of a vendor's credential state."""
    return f"auth.{vendor}"


class AuthAlarm:
    """An events listener: DeliveryFailed(kind=auth) → one AuthFailing; Downloaded after it →
    AuthRecovered."""

    def __init__(self, events: Events, ledger: Ledger) -> None:
        self._events = events
        self._ledger = ledger
        self._lock = threading.Lock()
        self._failing = {
            name.removeprefix("auth.")
            for name, (value, _) in ledger.watcher().items()
            if name.startswith("auth.") and value.startswith(FAILING)
        }
        self._log = logs.get()

    def failing(self, vendor: str) -> bool:
        with self._lock:
            return vendor in self._failing

    def __call__(self, event: Event) -> None:
        if isinstance(event, DeliveryFailed) and event.kind is Failure.AUTH:
            with self._lock:
                if event.vendor in self._failing:
                    return
                self._failing.add(event.vendor)
            self._ledger.set_watcher(watcher_key(event.vendor), f"{FAILING}: {event.error}")
            self._log.error(
                "auth.failing", vendor=event.vendor, error=event.error, filename=event.filename
            )
            self._events.publish(AuthFailing(event.vendor, event.error, event.filename))
        elif isinstance(event, Downloaded):
            with self._lock:
                if event.vendor not in self._failing:
                    return
                self._failing.discard(event.vendor)
            self._ledger.set_watcher(watcher_key(event.vendor), "ok")
            self._log.info("auth.recovered", vendor=event.vendor)
            self._events.publish(AuthRecovered(event.vendor))
