"""Catching up by UID: every message above the last one handled, headers first.

For each new UID the server is asked for its size and the few headers a notification
is judged by. Only a candidate — a From that may be a notification (`screen`) — has
its structure fetched, and then only its `text/html` parts; other mail costs its
headers and nothing more. Fetches are batched by bytes, so memory stays flat
whatever the other mail weighs. Each message is then handed over in UID order and
the folder's position advances past it (persisted in the ledger with UIDVALIDITY).
"""

from __future__ import annotations

import imaplib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from scorefetch.config import ImapConfig
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox import messages
from scorefetch.mailbox.connection import Answer, Connection, describe
from scorefetch.mailbox.messages import Part

HEADER_BATCH = 200  # UIDs per header FETCH: at most 200 × 64 KiB of headers held
BODY_BATCH_BYTES = 4 * 1024 * 1024  # HTML parts held at once

# (uid, message as far as it was fetched, or None with a reason) -> whether acted on
Handler = Callable[[int, bytes | None, str], bool]
# header lines -> whether the message can be a notification (its body is worth fetching)
Screen = Callable[[bytes], bool]


def new_uids(found: list[int], last_uid: int) -> list[int]:
    """UIDs above `last_uid`, ascending. `UID SEARCH N:*` always returns the highest UID,
    even when it is below N, so the filter is ours."""
    return sorted(uid for uid in found if uid > last_uid)


@dataclass
class _Item:
    """One message on its way: its headers, and the HTML parts to fetch (candidates)."""

    uid: int
    headers: bytes | None
    parts: list[Part]
    refused: str = ""  # a reason not to read it at all (too_large, gone)


class CatchUp:
    """Hands each message above the folder's position to `handle`, in UID order."""

    def __init__(
        self,
        conn: Connection,
        config: ImapConfig,
        ledger: Ledger,
        handle: Handler,
        *,
        screen: Screen | None,
        stop: threading.Event,
        tick: Callable[[], None],
        log: Any,
    ) -> None:
        self.conn = conn
        self.config = config
        self.ledger = ledger
        self._handle = handle
        self._screen = screen
        self._stop = stop
        self._tick = tick
        self._log = log
        self._warned_no_expunge = False

    def starting_uid(self, validity: int) -> int:
        """The last handled UID; on a first start (or a new UIDVALIDITY) handle the
        messages of the last `lookback_days`, then go on from the top."""
        position = self.ledger.mailbox_position(self.config.folder)
        if position is not None and position[0] == validity:
            return position[1]
        if position is not None:
            self._log.warning(
                "imap.uidvalidity_changed",
                old=position[0],
                new=validity,
                lookback_days=self.config.lookback_days,
            )
        # The top first: anything arriving during the scan is above it and caught up after.
        top = max(self.conn.search(["ALL"]), default=0)
        since = date.today() - timedelta(days=self.config.lookback_days)
        recent = sorted(u for u in self.conn.search(["SINCE", since]) if u <= top)
        self._log.info("imap.first_scan", messages=len(recent), since=since.isoformat())
        self.process(validity, recent)
        if self._stop.is_set():
            return top
        self.ledger.save_mailbox_position(self.config.folder, validity, top)
        return top

    def catch_up(self, validity: int, last_uid: int) -> int:
        uids = new_uids(self.conn.search(["UID", f"{last_uid + 1}:*"]), last_uid)
        return max(self.process(validity, uids), last_uid)

    def process(self, validity: int, uids: list[int]) -> int:
        """Judge and hand over each message in UID order; the position advances per
        message. Returns the last UID handled (0 if none)."""
        last = 0
        for start in range(0, len(uids), HEADER_BATCH):
            items = self._envelopes(uids[start : start + HEADER_BATCH])
            pending: list[_Item] = []
            held = 0
            for item in items:
                size = sum(p.size for p in item.parts)
                if pending and held + size > BODY_BATCH_BYTES:
                    last = self._hand_over(validity, pending) or last
                    pending, held = [], 0
                    if self._stop.is_set():
                        return last
                pending.append(item)
                held += size
            last = self._hand_over(validity, pending) or last
            if self._stop.is_set():
                return last
        return last

    def _envelopes(self, uids: list[int]) -> list[_Item]:
        """Size and judged headers of every UID; then the structure of the candidates."""
        fields = " ".join(messages.HEADER_FIELDS)
        answer = self.conn.fetch(
            uids, [f"BODY.PEEK[HEADER.FIELDS ({fields})]<0.{messages.MAX_HEADER_BYTES}>"]
        )
        items = [self._item(uid, answer.get(uid)) for uid in uids]
        wanted = [i.uid for i in items if i.headers is not None and not i.refused and i.parts]
        structures = self.conn.fetch(wanted, ["BODYSTRUCTURE"]) if wanted else {}
        for item in items:
            if item.uid in wanted:
                self._structure(item, structures.get(item.uid, {}).get(b"BODYSTRUCTURE"))
        return items

    def _item(self, uid: int, found: dict[bytes, Any] | None) -> _Item:
        headers = messages.header_block(found) if found else None
        if headers is None:
            return _Item(uid, None, [], "gone")  # expunged meanwhile
        if len(headers) >= messages.MAX_HEADER_BYTES:
            return _Item(uid, None, [], "too_large")
        candidate = self._screen is None or self._screen(headers)
        # A placeholder part marks a candidate until its structure is known.
        return _Item(uid, headers, [Part(messages.TOP, 0)] if candidate else [])

    def _structure(self, item: _Item, structure: Any) -> None:
        parts = messages.html_parts(structure)
        if parts is None:
            item.parts = []  # not understood: read from the headers alone (no_filename)
            return
        if messages.too_large(parts) is not None:
            item.refused, item.parts = "too_large", []
            return
        item.parts = parts

    def _hand_over(self, validity: int, items: Sequence[_Item]) -> int:
        """Fetch the HTML parts of the candidates among `items`, then hand each over."""
        wanted = [i for i in items if i.parts]
        bodies: dict[int, Answer] = {}
        for item in wanted:
            bodies[item.uid] = self.conn.fetch([item.uid], messages.fetch_items(item.parts))
            self._tick()
        last = 0
        for item in items:
            if self._stop.is_set():
                break
            raw = self._message(item, bodies.get(item.uid, {}).get(item.uid))
            reason = "" if raw is not None else (item.refused or "gone")
            acted = self._handle(item.uid, raw, reason)
            self.ledger.save_mailbox_position(self.config.folder, validity, item.uid)
            last = item.uid
            self._tick()  # legitimate work: the watchdog hears of it message by message
            if acted and self.config.processed_folder is not None:
                self.move(item.uid, self.config.processed_folder)
        return last

    def _message(self, item: _Item, answer: dict[bytes, Any] | None) -> bytes | None:
        if item.headers is None or item.refused:
            return None
        parts = [messages.part_bytes(answer or {}, part) for part in item.parts]
        if any(p is None for p in parts):
            return None  # expunged between the fetches
        return messages.assemble(item.headers, [p for p in parts if p is not None])

    def move(self, uid: int, folder: str) -> None:
        """MOVE; or COPY + \\Deleted + UID EXPUNGE (UIDPLUS); or, with neither, COPY +
        \\Deleted and no EXPUNGE: a plain EXPUNGE would also remove every other message
        someone marked \\Deleted. The ledger already holds the files, so a failure here
        only leaves the message where it was."""
        try:
            if self.conn.has_capability("MOVE"):
                self.conn.move(uid, folder)
            else:
                self.conn.copy(uid, folder)
                self.conn.mark_deleted(uid)
                if self.conn.has_capability("UIDPLUS"):
                    self.conn.uid_expunge(uid)
                elif not self._warned_no_expunge:
                    self._warned_no_expunge = True
                    self._log.warning("imap.move_without_expunge", processed_folder=folder)
            self._log.debug("imap.moved", uid=uid, processed_folder=folder)
        except imaplib.IMAP4.error as exc:
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            self._log.warning(
                "imap.move_failed", uid=uid, processed_folder=folder, error=describe(exc)
            )
