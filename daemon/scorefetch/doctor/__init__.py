"""`scorefetch doctor`: prove a deployment works before the first real file.

Each check is a function returning a `Check` (its name, ok or not, what it found, what
to do). Doctor changes nothing but probe files (and folders it made for them) that it
removes again; the vendor calls are the harmless ones (College Board's listing, Encoura's
login and a listing of exports already Delivered). No secret is ever shown: every secret
of the config is masked in every line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, SecretStr

from scorefetch.config import Config, HooksConfig, SourceSettings
from scorefetch.core.errors import ConfigError
from scorefetch.core.logs import untrusted
from scorefetch.doctor.checks import (
    Check,
    Clock,
    Destination,
    check_clock,
    check_disk,
    check_folders,
    check_forward,
    check_hooks,
    check_imap,
    check_ledger,
    check_metrics_port,
)

__all__ = ["Check", "Clock", "Destination", "as_json", "config_check", "render", "run"]


class VendorDoctor(Protocol):
    """A registered source (scorefetch/sources.py) as doctor sees it."""

    vendor: ClassVar[str]

    @classmethod
    def doctor(cls, section: SourceSettings, clock: Clock) -> Check | None: ...


def run(
    config: Config,
    destinations: Sequence[Destination] | None = None,
    clock: Clock | None = None,
    *,
    sources: Sequence[type[VendorDoctor]],
    test_alert: bool = False,
) -> list[Check]:
    """Every check that applies to `config`, in order (the config itself was valid):
    each enabled vendor's own (`sources`: the registry); `destinations` default to the
    ones under `forward:`; `test_alert` runs on_failure once."""
    clock = clock or Clock()
    if destinations is None:
        from scorefetch.forward.sftp import SftpTarget

        destinations = [SftpTarget(name, dest) for name, dest in config.forward.items()]
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("folders", lambda: check_folders(config)),
        ("ledger", lambda: check_ledger(config.ledger_path)),
        ("disk", lambda: check_disk(config)),
    ]
    metrics = config.metrics.address if config.metrics is not None else None
    if metrics is not None:
        steps.append(("metrics", lambda: check_metrics_port(metrics)))
    imap = config.imap
    if imap is not None:
        steps.append(("imap", lambda: check_imap(imap)))
    sections = config.sections()
    for source in sources:
        if source.vendor in sections:
            steps.append((source.vendor, partial(_vendor, source, sections[source.vendor], clock)))
    for destination in destinations:
        steps.append((f"forward.{destination.name}", partial(check_forward, destination)))
    if config.hooks.on_delivery or config.hooks.on_failure:
        steps.append(("hooks", lambda: check_hooks(config.hooks)))
    if test_alert:
        steps.append(("test-alert", lambda: send_test_alert(config.hooks)))
    checks = [_guarded(name, step) for name, step in steps]
    if clock.samples:
        checks.append(check_clock(clock))
    secrets = list(_secrets(config))
    return [_masked(check, secrets) for check in checks]


def send_test_alert(hooks: HooksConfig) -> Check:
    """hooks.on_failure run once, as the daemon runs it, with SCOREFETCH_EVENT=test."""
    from scorefetch.observers.hooks import Hooks

    if not hooks.on_failure:
        return Check("test-alert", False, "hooks.on_failure is not set", "set it (README, Hooks)")
    runner = Hooks(hooks)
    try:
        sent = runner.run(hooks.on_failure, {"EVENT": "test"})
    finally:
        runner.close(timeout=0)
    if sent:
        return Check("test-alert", True, f"{hooks.on_failure[0]} ran with SCOREFETCH_EVENT=test")
    return Check(
        "test-alert",
        False,
        f"{hooks.on_failure[0]} failed with SCOREFETCH_EVENT=test",
        "run it by hand with that variable set to see why",
    )


def _vendor(source: type[VendorDoctor], section: SourceSettings, clock: Clock) -> Check:
    found = source.doctor(section, clock)
    return found if found is not None else Check(source.vendor, True, "nothing to check")


def _guarded(name: str, step: Callable[[], Check]) -> Check:
    try:
        return step()
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        return Check(name, False, f"internal error: {exc!r}", "report this as a bug")


def render(checks: Iterable[Check]) -> str:
    """One line per check: `ok`/`FAIL`, its name, what was found, and → what to do."""
    lines = []
    for check in checks:
        advice = f" → {check.advice}" if check.advice and not check.ok else ""
        lines.append(f"{'ok' if check.ok else 'FAIL':<4}  {check.name:<14} {check.detail}{advice}")
    return "\n".join(lines)


def as_json(checks: Sequence[Check]) -> dict[str, Any]:
    return {"ok": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}


def config_check(path: Path, error: ConfigError | None) -> Check:
    if error is None:
        return Check("config", True, f"{path} is valid")
    detail = str(error).replace("\n", "; ")
    return Check("config", False, detail, "fix the key it names, then run doctor again")


# --- secrets stay off the screen ---


def _secrets(config: Config) -> Iterable[str]:
    def walk(node: Any) -> Iterable[str]:
        if isinstance(node, SecretStr):
            yield node.get_secret_value()
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                yield from walk(getattr(node, name))
        elif isinstance(node, tuple | list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):  # forward destinations, by name
            for item in node.values():
                yield from walk(item)

    return (s for s in walk(config) if s)


def _masked(check: Check, secrets: list[str]) -> Check:
    """Every secret masked (longest first: one may contain another), then the line cleaned
    as untrusted text: a server's words must not rewrite what the terminal shows."""
    ordered = sorted(set(secrets), key=len, reverse=True)

    def mask(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, "********")
        return untrusted(text, 2000)

    return Check(check.name, check.ok, mask(check.detail), mask(check.advice))
