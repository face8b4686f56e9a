"""What the service, `status` and the CLI know of a vendor: a `Source`. A new vendor is a
new folder with one Source class, plus one line in scorefetch/sources.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from scorefetch.config import Config
from scorefetch.core import logs
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import Progress
from scorefetch.core.engine import Engine
from scorefetch.core.events import Events
from scorefetch.core.ledger import Ledger
from scorefetch.core.loops import Supervised

D = TypeVar("D", bound=Deliveries[Any])
Say = Callable[[str], None]  # a line for the person at the terminal (fetch, sync)


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


class SourceBase(Generic[D]):
    """What every Source shares: building it when its config section is enabled, its
    deliveries (`D`), the supervised loops it starts, resuming and stopping."""

    vendor: ClassVar[str] = ""  # also the name of its config section

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
        section = getattr(config, cls.vendor, None)
        if section is None or not section.enabled:
            return None
        return cls.create(config, ledger, progress, events, engine)

    @classmethod
    def create(
        cls,
        config: Config,
        ledger: Ledger,
        progress: Callable[[str], Progress | None] | None,
        events: Events | None,
        engine: Engine | None,
    ) -> Self:
        raise NotImplementedError

    @classmethod
    def wiring(
        cls,
        config: Config,
        progress: Callable[[str], Progress | None] | None,
        events: Events | None,
        engine: Engine | None,
    ) -> dict[str, Any]:
        """The keyword arguments every vendor's Deliveries takes besides its client."""
        return {
            "progress": progress,
            "events": events,
            "engine": engine,
            "forward_to": forward_to(config, cls.vendor),
        }

    def resume(self) -> int:
        return self.deliveries.resume()

    def loops(self) -> list[Supervised]:
        return list(self._loops)

    def stop(self, timeout: float) -> bool:
        return stop_all(self._loops, self.deliveries, timeout)


def stop_all(loops: list[Supervised], deliveries: Deliveries[Any], timeout: float) -> bool:
    """The usual `Source.stop`: loops first (a pass in progress ends and is remembered),
    then the downloads."""
    joined = all([loop.join(min(timeout, 10.0)) for loop in loops])
    return deliveries.close(timeout) and joined
