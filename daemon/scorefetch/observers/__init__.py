"""What listens to the delivery events besides the log: the credential alarm, hooks and
metrics, built from the config and subscribed in one place (service.py calls `attach`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scorefetch.config import Config
from scorefetch.core.events import Events
from scorefetch.core.ledger import Ledger
from scorefetch.observers.alarms import AuthAlarm
from scorefetch.observers.hooks import Hooks

if TYPE_CHECKING:
    from scorefetch.observers.metrics import Metrics

HOOKS_GRACE_S = 10.0  # hooks still queued or running at shutdown get this long


@dataclass
class Observers:
    alarm: AuthAlarm
    hooks: Hooks | None = None
    metrics: Metrics | None = None

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.start()

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.close(min(HOOKS_GRACE_S, self.hooks.config.timeout))
        if self.metrics is not None:
            self.metrics.close()


def attach(config: Config, events: Events, ledger: Ledger, vendors: list[str]) -> Observers:
    """Subscribe the alarm, and hooks and metrics when configured, to `events`."""
    observers = Observers(AuthAlarm(events, ledger))
    events.subscribe(observers.alarm)
    if config.hooks.on_delivery or config.hooks.on_failure or config.hooks.on_digest:
        observers.hooks = Hooks(config.hooks)
        events.subscribe(observers.hooks)
    if config.metrics is not None:
        from scorefetch.observers.metrics import Metrics  # only when configured

        metrics = Metrics(
            config.metrics,
            ledger,
            vendors,
            imap=config.imap is not None,
            destinations=list(config.forward),
            backlog=lambda: _backlog(config, ledger),
        )
        events.subscribe(metrics)
        observers.metrics = metrics
    return observers


def _backlog(config: Config, ledger: Ledger) -> dict[str, int]:
    """Landed files not yet uploaded, per configured forward destination."""
    report = ledger.forwards.report()
    return {name: int(report.get(name, {}).get("backlog", 0)) for name in config.forward}
