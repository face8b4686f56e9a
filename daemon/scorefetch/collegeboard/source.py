"""College Board as a source: notification emails (the mailbox watcher) and the listing
(reconciliation) trigger deliveries; `fetch` by file name, `sync` by listing."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.notifications import (
    Notification,
    may_be_notification,
    read_notification,
)
from scorefetch.collegeboard.reconciliation import CURSOR, Reconciler, expect, missing
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.config import ImapConfig, SourceSettings
from scorefetch.core.errors import LedgerError
from scorefetch.core.http import build_session
from scorefetch.core.loops import Periodic, Supervised
from scorefetch.mailbox.watcher import MailboxWatcher, Refusal
from scorefetch.source import Listing, Say, SourceBase, Wiring, again

if TYPE_CHECKING:
    from scorefetch.doctor.checks import Check, Clock


class CollegeBoardSource(SourceBase[CollegeBoardDeliveries]):
    vendor = "collegeboard"
    settings = CollegeBoardConfig
    title = "College Board"

    def __init__(self, deliveries: CollegeBoardDeliveries, imap: ImapConfig | None) -> None:
        super().__init__(deliveries)
        self._imap = imap
        self._lookback = imap.lookback_days if imap else 14

    @classmethod
    def create(cls, section: SourceSettings, wiring: Wiring) -> CollegeBoardSource:
        assert isinstance(section, CollegeBoardConfig)
        client = CollegeBoard(section, build_session())
        return cls(wiring.lane(CollegeBoardDeliveries, client), wiring.config.imap)

    @classmethod
    def doctor(cls, section: SourceSettings, clock: Clock) -> Check | None:
        assert isinstance(section, CollegeBoardConfig)
        from scorefetch.collegeboard.doctor import check  # doctor's, not the daemon's

        return check(section, clock)

    @classmethod
    def listings(cls, positions: Mapping[str, Mapping[str, str]]) -> dict[str, Listing]:
        if CURSOR not in positions:
            return {}
        started = positions[CURSOR]["value"]
        return {cls.vendor: Listing("", started, started)}

    def start(self, stop: threading.Event, running: threading.Event) -> threading.Event:
        watching = threading.Event()
        if self._imap is not None:
            imap = self._imap
            holder: list[MailboxWatcher] = []
            # The watcher ticks at least every read_timeout / 2 (IDLE), per message (catch-up)
            # and while it backs off; a connect and a command are bounded by the timeouts.
            stale = 2 * (imap.connect_timeout + imap.read_timeout) + 30
            loop = Supervised("mailbox", lambda: holder[0].run(), stop, stale_after=stale)
            holder.append(
                MailboxWatcher(
                    imap,
                    self.deliveries.ledger,
                    self.handle_message,
                    stop,
                    watching.set,
                    loop.tick,
                    screen=self.may_be_notification,
                    events=self.deliveries.events,
                )
            )
            self._loops.append(loop.start())
        else:
            watching.set()
        if self.deliveries.config.poll_interval > 0:
            reconciler: Periodic = Reconciler(self.deliveries, self._lookback).start(stop, running)
            self._loops.append(reconciler.thread)
        return watching

    def may_be_notification(self, headers: bytes) -> bool:
        """Whether a message with these header lines is worth fetching the HTML of."""
        cb = self.deliveries.config
        trust = cb.require_authentication_results
        return may_be_notification(headers, cb.senders, trust.authserv_id if trust else None)

    def handle_message(self, uid: int, raw: bytes | None, refused: Refusal | None) -> bool:
        """One email: announce its files (True once the ledger holds them), or say in one
        line why not (False). Never raises."""
        log = self._log.bind(uid=uid)
        if raw is None:
            refused = refused or Refusal("disabled")
            log.warning(
                "notification.rejected",
                message_id=refused.message_id,
                reason=refused.reason,
                detail=refused.detail,
            )
            return False
        try:
            cb = self.deliveries.config
            trust = cb.require_authentication_results
            found = read_notification(raw, cb.senders, trust.authserv_id if trust else None)
            if not isinstance(found, Notification):
                log.info(
                    "notification.rejected",
                    message_id=found.message_id,
                    reason=found.reason,
                    detail=found.detail,
                )
                return False
            log.info(
                "notification.received",
                vendor=self.vendor,
                message_id=found.message_id,
                filenames=list(found.filenames),
            )
            self.deliveries.announce(found.filenames, source="notification")
            return True
        except LedgerError:
            raise  # not this message's fault: nothing recorded, it is read again (ledger.failing)
        except Exception:
            log.exception("notification.rejected", message_id=None, reason="internal_error")
            return False

    def fetch(self, keys: list[str], say: Say, *, force: bool = False) -> list[str]:
        return self._claim(keys, "fetch", say, force=force)

    def sync(self, since: datetime, say: Say) -> list[str]:
        listed = self.deliveries.client.list_files(since)
        names = missing(self.deliveries, listed)
        say(
            f"collegeboard: {len(listed)} files listed since {since.date().isoformat()}, "
            f"{len(names)} to download"
        )
        claimed = self._claim(names, "listing", say)
        expect(self.deliveries, listed)  # once every listed file has its row
        return claimed

    def _now_not_later(self, name: str, say: Say) -> bool:
        """A file asked for by hand that is still under way (waiting for its next retry, or
        being downloaded by the daemon): tried now, not at its due time."""
        row = self.deliveries.ledger.get(self.vendor, name)
        if row is None or row.state not in ("pending", "retrying"):
            return False
        self.deliveries.rows.again((name,))
        say(f"{name}: {row.state}" + (f" ({row.error})" if row.error else "") + "; trying now")
        return True

    def _claim(self, names: list[str], source: str, say: Say, force: bool = False) -> list[str]:
        """The names to download now; says why each other one is left."""
        deliveries, claimed = self.deliveries, []
        for name in names:
            if not deliveries.wants(name):
                say(f"{name}: skipped, not one of the formats {list(deliveries.config.formats)}")
            elif deliveries.ledger.claim(deliveries.vendor, name, name, source) or (
                source == "fetch"
                and (
                    again(deliveries.ledger, self.vendor, name, source, force, say)
                    or self._now_not_later(name, say)
                )
            ):
                claimed.append(name)
            else:
                row = deliveries.ledger.get(deliveries.vendor, name)
                say(
                    f"{name}: already {row.state if row else 'known'}"
                    + (f" at {row.path}" if row and row.path else "")
                    + (" (--force downloads it again)" if row and row.state == "downloaded" else "")
                )
        return claimed
