"""The registry of sources: a new vendor is a new folder plus one line in SOURCES.

Everything else learns the vendors from here: the Config gets a section per vendor (its
model, `Source.settings`), and through `Config.vendors()` the forwarder, retention, alerts,
status and metrics know their names."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scorefetch import config as config_module
from scorefetch.collegeboard.source import CollegeBoardSource
from scorefetch.config import Config
from scorefetch.core.downloads import Progress
from scorefetch.core.engine import Engine
from scorefetch.core.events import Events
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.source import EncouraSource
from scorefetch.source import Source, SourceBase

SOURCES: tuple[type[SourceBase[Any]], ...] = (
    CollegeBoardSource,
    EncouraSource,
)


def config_model() -> type[Config]:
    """The Config with a section for each registered vendor."""
    return _model(SOURCES)


@functools.cache
def _model(sources: tuple[type[SourceBase[Any]], ...]) -> type[Config]:
    return config_module.schema({source.vendor: source.settings for source in sources})


def load(path: Path, environ: dict[str, str] | None = None) -> Config:
    """The config at `path`, every registered vendor's section included (ConfigError)."""
    return config_module.load(path, environ, model=config_model())


def enabled(
    config: Config,
    ledger: Ledger,
    progress: Callable[[str], Progress | None] | None = None,
    events: Events | None = None,
    engine: Engine | None = None,
) -> list[Source]:
    """A Source for each vendor the config enables, in registry order."""
    built: list[Source] = []
    for cls in SOURCES:
        source = cls.build(config, ledger, progress, events, engine)
        if source is not None:
            built.append(source)
    return built
