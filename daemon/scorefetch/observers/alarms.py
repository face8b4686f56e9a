"""Credential failures as one alarm per run, not one per file.

College Board's password expires periodically; then every call fails. The same goes
for the mailbox's login and Encoura's account. The first failure of a run is
`auth.failing` (logged, published for hooks and metrics, kept in
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
    CredentialsAccepted,
    CredentialsRefused,
    DeliveryFailed,
    Downloaded,
    Event,
    Events,
    ForwardFailed,
    ForwardUploaded,
)
from scorefetch.core.ledger import Ledger

FAILING = "failing"


def watcher_key(vendor: str) -> str:
    """The ledger's watcher-table name of a vendor's credential state."""
    return f"auth.{vendor}"


class AuthAlarm:
    """An events listener: DeliveryFailed / ForwardFailed (kind=auth) or CredentialsRefused →
    one AuthFailing per party and run; Downloaded, ForwardUploaded or CredentialsAccepted
    after it → AuthRecovered."""

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
        match event:
            case DeliveryFailed(kind=Failure.AUTH):
                self._refused(event.vendor, event.error, event.filename)
            case CredentialsRefused():
                self._refused(event.party, event.error, "")
            case ForwardFailed(kind=Failure.AUTH):
                # A refused login or a host key that is not pinned: alerted at once; the
                # retries go on (a person may fix it within the schedule).
                self._refused(f"forward.{event.destination}", event.error, event.filename)
            case ForwardUploaded():
                self._accepted(f"forward.{event.destination}")
            case Downloaded():
                self._accepted(event.vendor)
            case CredentialsAccepted():
                self._accepted(event.party)

    def _refused(self, party: str, error: str, filename: str) -> None:
        with self._lock:
            if party in self._failing:
                return
            self._failing.add(party)
        # said, then kept: a kill between pages again after the restart, never not at all
        self._log.error("auth.failing", vendor=party, error=error, filename=filename or None)
        self._events.publish(AuthFailing(party, error, filename))
        self._ledger.set_watcher(watcher_key(party), f"{FAILING}: {error}")

    def _accepted(self, party: str) -> None:
        with self._lock:
            if party not in self._failing:
                return
            self._failing.discard(party)
        self._log.info("auth.recovered", vendor=party)
        self._events.publish(AuthRecovered(party))
        self._ledger.set_watcher(watcher_key(party), "ok")
