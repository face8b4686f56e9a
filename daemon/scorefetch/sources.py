"""The registry of sources: a new vendor is a new folder plus one line here."""

from __future__ import annotations

from collections.abc import Callable

from scorefetch.collegeboard.source import CollegeBoardSource
from scorefetch.config import Config
from scorefetch.core.downloads import Progress
from scorefetch.core.engine import Engine
from scorefetch.core.events import Events
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.source import EncouraSource
from scorefetch.source import Source

Build = Callable[
    [Config, Ledger, Callable[[str], Progress | None] | None, Events | None, Engine | None],
    Source | None,
]

SOURCES: dict[str, Build] = {
    "collegeboard": CollegeBoardSource.build,
    "encoura": EncouraSource.build,
}


def enabled(
    config: Config,
    ledger: Ledger,
    progress: Callable[[str], Progress | None] | None = None,
    events: Events | None = None,
    engine: Engine | None = None,
) -> list[Source]:
    """A Source for each vendor the config enables, in registry order."""
    built = (build(config, ledger, progress, events, engine) for build in SOURCES.values())
    return [source for source in built if source is not None]
