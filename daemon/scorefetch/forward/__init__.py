"""Forwarding: a copy of each landed file to the places the office imports from (Slate's
SFTP server). `forwarder.py` keeps the ledger rows and the retries; a destination type
(`sftp.py`) knows only how to put one file there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scorefetch.core.errors import Failure, ScorefetchError


@dataclass(frozen=True)
class Placed:
    """Where one file ended up; `already` when it was there from an earlier attempt."""

    remote_path: str
    size: int
    already: bool = False


class ForwardError(ScorefetchError):
    """One upload failed. `kind` decides the retry (see core.deliveries.retry_delay); the
    message is safe to log: class, host and reason, never key material or passwords."""

    def __init__(self, message: str, *, kind: Failure, reason: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason  # a word for alerts: `conflict`, `host_key`


class Destination(Protocol):
    """A place that gets a copy of landed files."""

    name: str
    retry_schedule: tuple[float, ...]

    def wants(self, vendor: str) -> bool: ...

    def remote_dir(self, vendor: str, product_key: str | None) -> str: ...

    def upload(
        self,
        local: Path,
        filename: str,
        vendor: str,
        product_key: str | None,
        *,
        sha256: str | None = None,
        ours: str | None = None,
        renaming: Callable[[str], None] | None = None,
    ) -> Placed:
        """Put `local` there as `filename`. A file already at that name is ours only when
        `ours` names it (our rename was sent) and it holds `sha256`; any other is a
        conflict. `renaming(final)` is called just before the rename is sent."""
        ...

    def probe(self) -> str: ...
