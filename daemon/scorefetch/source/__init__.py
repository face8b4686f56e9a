"""The seam every vendor is built on: what the service, `status` and the CLI know of a
vendor (a `Source`), the base that does what every vendor's does (`SourceBase`), and what a
vendor's folder uses to land its files (`land`, `Deliveries`, `Landed`).

A new vendor is a new folder — its config section (a `SourceSettings` model), its client,
its `Deliveries` (how one attempt lands one file: `land` for any bytes, `fetch_to_file`
for a URL) and its `SourceBase` — plus one line in scorefetch/sources.py. The forwarder,
retention, alerts, status and metrics learn its name from the Config (`Config.vendors()`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar

from scorefetch.config import Config, SourceSettings
from scorefetch.core import logs
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import Landed, Progress, fetch_to_file, land
from scorefetch.core.engine import Engine
from scorefetch.core.errors import Failure, ScorefetchError, VendorError
from scorefetch.core.events import Events
from scorefetch.core.ledger import Ledger
from scorefetch.core.loops import Periodic, Supervised

if TYPE_CHECKING:  # doctor's; the daemon never loads it
    from scorefetch.doctor.checks import Check, Clock

D = TypeVar("D", bound=Deliveries[Any])
Say = Callable[[str], None]  # a line for the person at the terminal (fetch, sync)


__all__ = [  # what a vendor's folder builds on
    "Check",
    "Clock",
    "Deliveries",
    "Engine",
    "Events",
    "Failure",
    "Landed",
    "Ledger",
    "Listing",
    "Periodic",
    "Progress",
    "Say",
    "ScorefetchError",
    "Source",
    "SourceBase",
    "Supervised",
    "VendorError",
    "Wiring",
    "again",
    "fetch_to_file",
    "forward_to",
    "land",
    "stop_all",
]


def __getattr__(name: str) -> Any:
    """`Check` and `Clock` are doctor's: loaded when a vendor's doctor check asks for them,
    never by the daemon."""
    if name in ("Check", "Clock"):
        from scorefetch.doctor import checks

        return getattr(checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Source(Protocol):
    vendor: ClassVar[str]

    @property
    def deliveries(self) -> Deliveries[Any]: ...

    def resume(self) -> int:
        """Queue what a previous run left unfinished; how many."""
        ...

    def start(self, stop: threading.Event, running: threading.Event) -> threading.Event:
        """Check what must stop the start (ConfigError), start watching; return an event set
        once watching. Periodic work waits for `running` (set after READY=1)."""
        ...

    def loops(self) -> list[Supervised]:
        """The threads that must stay alive for the service to be healthy."""
        ...

    def stop(self, timeout: float) -> bool:
        """Join the loops, let running downloads finish for up to `timeout` seconds."""
        ...

    def fetch(self, keys: list[str], say: Say, *, force: bool = False) -> list[str]:
        """Claim `keys` for a one-off download; the keys to download now. A landed key is
        downloaded again when its file is gone from disk, or with `force`."""
        ...

    def sync(self, since: datetime, say: Say) -> list[str]:
        """One listing-based catch-up since `since`; the keys to download now."""
        ...


def forward_to(config: Config, vendor: str) -> tuple[str, ...]:
    """The forward destinations that want `vendor`'s files."""
    return tuple(name for name, dest in config.forward.items() if vendor in dest.vendors)


def again(ledger: Ledger, vendor: str, key: str, source: str, force: bool, say: Say) -> bool:
    """Make a downloaded row pending again when its file is gone from disk (the CRM import
    moved it, say) or with `force`; says which. False when the row stays as it is."""
    row = ledger.get(vendor, key)
    if row is None or row.state != "downloaded":
        return False
    gone = not row.path or not Path(row.path).is_file()
    if not (gone or force) or not ledger.redo(vendor, key, source):
        return False
    say(f"{key}: {'no longer at ' + str(row.path) if gone else 'forced'}; downloading again")
    return True


L = TypeVar("L")


@dataclass(frozen=True)
class Wiring:
    """What the service (or a command) hands a vendor's source when it builds it."""

    config: Config
    ledger: Ledger
    vendor: str
    progress: Callable[[str], Progress | None] | None = None
    events: Events | None = None
    engine: Engine | None = None

    def lane(self, deliveries: Callable[..., L], client: Any) -> L:
        """The vendor's Deliveries (class `deliveries`) for `client`: its download lane
        in the engine, its folder under download_dir, the destinations that want it."""
        return deliveries(
            client,
            self.ledger,
            self.config.download_dir,
            progress=self.progress,
            events=self.events,
            engine=self.engine,
            forward_to=forward_to(self.config, self.vendor),
        )


@dataclass(frozen=True)
class Listing:
    """One listing pass of a vendor, for `status`: what it lists (`label`, after the
    vendor's title), when the last one started, and when one last finished."""

    label: str
    started: str
    completed: str | None = None


class SourceBase(Generic[D]):
    """What every Source shares: building it when its config section is enabled, its
    deliveries (`D`), the supervised loops it starts, resuming and stopping."""

    vendor: ClassVar[str] = ""  # also the name of its config section and of its folder
    settings: ClassVar[type[SourceSettings]] = SourceSettings  # its config section's model
    title: ClassVar[str] = ""  # its name for a person (status): "College Board"

    def __init__(self, deliveries: D) -> None:
        self.deliveries = deliveries
        self._loops: list[Supervised] = []
        self._log = logs.get(vendor=self.vendor)

    @classmethod
    def build(
        cls,
        config: Config,
        ledger: Ledger,
        progress: Callable[[str], Progress | None] | None = None,
        events: Events | None = None,
        engine: Engine | None = None,
    ) -> Self | None:
        section = config.sections().get(cls.vendor)
        if section is None:  # not configured, or enabled: false
            return None
        return cls.create(section, Wiring(config, ledger, cls.vendor, progress, events, engine))

    @classmethod
    def create(cls, section: SourceSettings, wiring: Wiring) -> Self:
        """The source for its config `section` (an instance of `settings`); its
        Deliveries come from `wiring.lane(...)`."""
        raise NotImplementedError

    @classmethod
    def doctor(cls, section: SourceSettings, clock: Clock) -> Check | None:
        """`scorefetch doctor`'s check of this vendor with its `section` (the harmless
        calls only: nothing may be marked delivered); None when it has none."""
        return None

    @classmethod
    def listings(cls, positions: Mapping[str, Mapping[str, str]]) -> dict[str, Listing]:
        """Its listing passes as the ledger's positions record them, by a key of its own
        (`encoura.score-reporter`), for `status`; none for a vendor that does not list."""
        return {}

    def resume(self) -> int:
        return self.deliveries.resume()

    def start(self, stop: threading.Event, running: threading.Event) -> threading.Event:
        raise NotImplementedError

    def fetch(self, keys: list[str], say: Say, *, force: bool = False) -> list[str]:
        raise NotImplementedError

    def sync(self, since: datetime, say: Say) -> list[str]:
        raise NotImplementedError

    def loops(self) -> list[Supervised]:
        return list(self._loops)

    def stop(self, timeout: float) -> bool:
        return stop_all(self._loops, self.deliveries, timeout)


def stop_all(loops: list[Supervised], deliveries: Deliveries[Any], timeout: float) -> bool:
    """The usual `Source.stop`: loops first (a pass in progress ends and is remembered),
    then the downloads."""
    joined = all([loop.join(min(timeout, 10.0)) for loop in loops])
    return deliveries.close(timeout) and joined
