"""Forwarding: a copy of each landed file to the places the office imports from (Slate's
SFTP server). `forwarder.py` keeps the ledger rows and the retries; a destination type
(`sftp.py`) knows only how to put one file there."""

from __future__ import annotations

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

    def __init__(self, message: str, *, kind: Failure) -> None:
        super().__init__(message)
        self.kind = kind


class Destination(Protocol):
    """A place that gets a copy of landed files."""

    name: str
    retry_schedule: tuple[float, ...]

    def wants(self, vendor: str) -> bool: ...

    def remote_dir(self, vendor: str, product_key: str | None) -> str: ...

    def upload(
        self, local: Path, filename: str, vendor: str, product_key: str | None
    ) -> Placed: ...

    def probe(self) -> str: ...
