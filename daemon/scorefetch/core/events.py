"""What the delivery engine tells the rest of the daemon: typed outcomes, and the listeners
(forwarding, hooks, metrics) that act on them. A listener that raises is logged and
never fails the delivery that published the event."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scorefetch.core import logs
from scorefetch.core.errors import Failure


@dataclass(frozen=True)
class Downloaded:
    """A file landed under its final name (`delivery.downloaded`)."""

    vendor: str
    key: str  # College Board: the file name; Encoura: the export uid
    path: Path
    size: int
    sha256: str
    elapsed_s: float
    product_key: str | None = None  # Encoura's product key, the folder the file is in


@dataclass(frozen=True)
class DeliveryFailed:
    """One round of attempts failed (`delivery.failed`)."""

    vendor: str
    key: str
    filename: str
    attempt: int
    error: str
    kind: Failure
    will_retry: bool


@dataclass(frozen=True)
class Skipped:
    """An announced file was not wanted (`delivery.skipped`): reason `format` or `duplicate`."""

    vendor: str
    filename: str
    reason: str


@dataclass(frozen=True)
class ForwardUploaded:
    """A landed file reached a forward destination under its final name (`forward.uploaded`)."""

    destination: str
    vendor: str
    filename: str
    path: Path
    remote_path: str
    bytes: int
    sha256: str
    elapsed_s: float


@dataclass(frozen=True)
class ForwardFailed:
    """One upload to a forward destination failed (`forward.failed`)."""

    destination: str
    vendor: str
    filename: str
    path: Path
    attempt: int
    error: str
    will_retry: bool
    kind: Failure = Failure.TRANSIENT


@dataclass(frozen=True)
class CredentialsRefused:
    """A party (`imap`, or a vendor outside a delivery: Encoura's listing) refused our
    credentials; the alarm turns the first of a run into `auth.failing`."""

    party: str
    error: str


@dataclass(frozen=True)
class CredentialsAccepted:
    """A party took our credentials again (a session selected the folder, a pass listed)."""

    party: str


@dataclass(frozen=True)
class AuthFailing:
    """A vendor refused the credentials, the first time in a run of such failures
    (`auth.failing`): people hear of it once, not once per file."""

    vendor: str
    error: str
    filename: str


@dataclass(frozen=True)
class AuthRecovered:
    """The credentials work again: a file landed after an `auth.failing` (`auth.recovered`)."""

    vendor: str


@dataclass(frozen=True)
class LedgerFailing:
    """The ledger cannot be written (its disk full, an I/O error): nothing is recorded and
    nothing moves on until it can (`ledger.failing`, once per run of failures)."""

    error: str
    since: str  # ISO time of the first failure


@dataclass(frozen=True)
class LedgerRecovered:
    """The ledger takes writes again after a `ledger.failing` (`ledger.recovered`)."""

    down_s: float


@dataclass(frozen=True)
class Overdue:
    """A file announced `announced_at` is not at every destination yet (`delivery.overdue`):
    `stage` is `download` or the destination it waits for. `key` names the file in the
    ledger from its announcement on (an Encoura export's uid: its file name comes with the
    download), so `delivery.recovered` says the same `key` for it."""

    vendor: str
    key: str
    filename: str
    announced_at: str
    stage: str
    error: str


@dataclass(frozen=True)
class Recovered:
    """A file that was overdue reached every destination (`delivery.recovered`)."""

    vendor: str
    key: str
    filename: str
    late_s: float


@dataclass(frozen=True)
class Suspect:
    """A landed file disagrees with the vendor's own figures (`delivery.suspect`): kept, not
    retried (the vendor may count differently), and a person is told."""

    vendor: str
    filename: str
    path: Path
    bytes: int
    expected_bytes: int | None
    rows: int | None
    expected_rows: int | None


@dataclass(frozen=True)
class Quiet:
    """A vendor announced nothing for longer than alerts.quiet_after (`source.quiet`)."""

    vendor: str
    since: str


@dataclass(frozen=True)
class Digest:
    """The daily summary (`daemon.digest`): per vendor, what the last 24 hours did."""

    summary: str
    counts: dict[str, dict[str, int]]


Event = (
    Downloaded
    | DeliveryFailed
    | Skipped
    | ForwardUploaded
    | ForwardFailed
    | AuthFailing
    | LedgerFailing
    | LedgerRecovered
    | AuthRecovered
    | CredentialsRefused
    | CredentialsAccepted
    | Overdue
    | Suspect
    | Recovered
    | Quiet
    | Digest
)
Listener = Callable[[Event], None]


class Events:
    """Publish/subscribe within the process; listeners run on the publisher's thread and
    must be quick (anything slow hands the work to its own thread)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def publish(self, event: Event) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener never fails a delivery
                logs.get().exception(
                    "events.listener_failed", listener=getattr(listener, "__qualname__", "?")
                )
