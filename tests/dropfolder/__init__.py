"""A third vendor, for tests only: files left in a local "drop folder" (as an SFTP drop
box or a shared folder would leave them) are landed, exactly once, and forwarded like any
vendor's. It is built only on the public seam (`scorefetch.source`, and the config's
`SourceSettings`), and registered with one line (`__main__.py` here; in a deployment, one
line in scorefetch/sources.py): the proof that a vendor is one folder.

    dropfolder:
      path: /srv/drop          # where files appear
      poll_interval: 1s
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from scorefetch.config import Duration, SourceSettings
from scorefetch.source import (
    Check,
    Clock,
    Deliveries,
    Failure,
    Landed,
    Listing,
    Periodic,
    Say,
    ScorefetchError,
    SourceBase,
    VendorError,
    Wiring,
    again,
    land,
)

READ_CHUNK = 256 * 1024


class DropFolderSettings(SourceSettings):
    """`dropfolder:` in the config."""

    enabled: bool = True
    path: Path
    poll_interval: Duration = Field(60.0, gt=0)
    max_parallel: int = Field(2, ge=1, le=8)
    retry_schedule: tuple[Duration, ...] = (1.0, 5.0, 30.0)
    download_timeout: Duration = Field(600.0, gt=0)
    max_file_size: int = 1024**3


class DropFolder:
    """The "vendor": a folder to list and read."""

    def __init__(self, config: DropFolderSettings) -> None:
        self.config = config

    def names(self) -> list[str]:
        try:
            entries = sorted(os.scandir(self.config.path), key=lambda e: e.name)
        except OSError as exc:
            problem = f"cannot list {self.config.path}: {exc.strerror or exc}"
            raise VendorError(problem, kind=Failure.TRANSIENT) from None
        return [e.name for e in entries if e.is_file() and not e.name.startswith(".")]

    def chunks(self, name: str) -> tuple[int, Iterator[bytes]]:
        """The file's size now, and its bytes."""
        try:
            handle = (self.config.path / name).open("rb")
        except FileNotFoundError:
            raise VendorError(f"{name} is gone from the drop folder", kind=Failure.FATAL) from None
        size = os.fstat(handle.fileno()).st_size

        def read() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk

        return size, read()


class DropFolderDeliveries(Deliveries[DropFolder]):
    vendor = "dropfolder"

    def _filename(self, key: str) -> str:
        return key

    def poll(self) -> int:
        """Claim every file not seen before; how many were new."""
        new = 0
        for name in self.client.names():
            if self.ledger.claim(self.vendor, name, name, "listing"):
                self.queue(name)
                new += 1
        return new

    def _attempt(self, key: str) -> Landed:
        size, chunks = self.client.chunks(key)
        return land(
            chunks,
            self.folder,
            key,
            expected=size,
            max_size=self.client.config.max_file_size,
            progress=self.progress_for(key),
            deadline_s=self.client.config.download_timeout,
        )


class DropFolderSource(SourceBase[DropFolderDeliveries]):
    vendor = "dropfolder"
    settings = DropFolderSettings
    title = "Drop folder"
    LAST_POLL: ClassVar[str] = "dropfolder.last_poll"

    @classmethod
    def create(cls, section: SourceSettings, wiring: Wiring) -> DropFolderSource:
        assert isinstance(section, DropFolderSettings)
        return cls(wiring.lane(DropFolderDeliveries, DropFolder(section)))

    def start(self, stop: threading.Event, running: threading.Event) -> threading.Event:
        def failed(exc: ScorefetchError, failures: int) -> float:
            self._log.warning("listing.failed", error=str(exc), retry_in_s=1.0)
            return 1.0

        def work() -> None:
            self.deliveries.poll()
            self.deliveries.ledger.set_position(
                self.LAST_POLL, datetime.now().astimezone().isoformat()
            )

        interval = self.deliveries.client.config.poll_interval
        poller = Periodic("dropfolder", work, stop, interval=interval, failed=failed, after=running)
        self._loops.append(poller.start().thread)
        watching = threading.Event()
        watching.set()
        return watching

    def fetch(self, keys: list[str], say: Say, *, force: bool = False) -> list[str]:
        ready = []
        for key in keys:
            if self.deliveries.ledger.claim(self.vendor, key, key, "fetch") or again(
                self.deliveries.ledger, self.vendor, key, "fetch", force, say
            ):
                ready.append(key)
        return ready

    def sync(self, since: datetime, say: Say) -> list[str]:
        new = [
            n
            for n in self.deliveries.client.names()
            if self.deliveries.ledger.get(self.vendor, n) is None
        ]
        return self.fetch(new, say)

    @classmethod
    def doctor(cls, section: SourceSettings, clock: Clock) -> Check | None:
        assert isinstance(section, DropFolderSettings)
        try:
            names = DropFolder(section).names()
        except VendorError as exc:
            return Check(cls.vendor, False, str(exc), f"make {section.path} readable")
        return Check(cls.vendor, True, f"{section.path}: {len(names)} files waiting")

    @classmethod
    def listings(cls, positions: Mapping[str, Mapping[str, str]]) -> dict[str, Listing]:
        if cls.LAST_POLL not in positions:
            return {}
        started = positions[cls.LAST_POLL]["value"]
        return {cls.vendor: Listing("", started, started)}
