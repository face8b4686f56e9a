"""College Board announcements → deliveries: which formats are wanted, duplicates, and
the one attempt that asks for a 15-second presigned URL right before using it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from scorefetch.collegeboard.client import URL_LIFETIME_S, CollegeBoard
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.deliveries import URL_MARGIN_S, Deliveries
from scorefetch.core.downloads import Landed, fetch_to_file
from scorefetch.core.errors import Failure, VendorError
from scorefetch.core.events import Skipped
from scorefetch.core.filenames import file_format


class CollegeBoardDeliveries(Deliveries[CollegeBoard]):
    """Announced College Board files → files on disk, each at most once."""

    vendor = "collegeboard"

    @property
    def config(self) -> CollegeBoardConfig:
        return self.client.config

    def _filename(self, key: str) -> str:
        return key

    def wants(self, name: str) -> bool:
        return file_format(name) in self.config.formats

    def announce(self, names: Sequence[str], source: str) -> None:
        """Queue each wanted, new name; log a `delivery.skipped` line for each other one."""
        for name in names:
            if not self.wants(name):
                self._log.info(
                    "delivery.skipped",
                    filename=name,
                    reason="format",
                    formats=list(self.config.formats),
                )
                self.events.publish(Skipped(self.vendor, name, "format"))
            elif not self.ledger.claim(self.vendor, name, name, source):
                state = self.ledger.get(self.vendor, name)
                if state is not None and state.state == "retrying":
                    # Announced again (mail, listing) while it waits on its schedule (a
                    # `fetch` before it was posted, say): posted now, so tried now.
                    self.rows.again((name,))
                    self._log.info("delivery.retry_now", filename=name, source=source)
                    self.queue(name)
                    continue
                self._log.info(
                    "delivery.skipped",
                    filename=name,
                    reason="duplicate",
                    state=state.state if state else None,
                )
                self.events.publish(Skipped(self.vendor, name, "duplicate"))
            else:
                self.queue(name)

    def still_wanted(self, key: str) -> bool:
        """An unfinished file of a format `formats:` no longer lists (csv and txt before,
        csv only now) is not downloaded and sent after the restart: closed, and said."""
        if self.wants(key):
            return True
        self.rows.failed((key,), "not downloaded: its format is no longer in formats:", None)
        self._log.info(
            "delivery.skipped", filename=key, reason="format", formats=list(self.config.formats)
        )
        return False

    def _attempt(self, name: str) -> Landed:
        asked = time.monotonic()
        url = self.client.file_url(name)
        if time.monotonic() - asked > URL_LIFETIME_S - URL_MARGIN_S:
            raise VendorError("the URL answer came too late to use", kind=Failure.EXPIRED)
        progress = self.progress_for(name)
        return fetch_to_file(
            self.client.session,
            url,
            self.folder,
            name,
            hosts=self.config.download_hosts,
            deadline_s=self.config.download_timeout,
            progress=progress,
            max_size=self.config.max_file_size,
            root=self.folder,
        )
