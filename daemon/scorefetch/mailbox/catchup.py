"""Catching up by UID: every message above the last one handled, headers first.

For each new UID the server is asked for its size and the few headers a notification
is judged by; other mail costs its headers and nothing more. A candidate — a From that
may be a notification (`screen`) — as small as a notification is read whole, in one FETCH
with the other small candidates of its run (two round trips for a burst of notifications,
as for one). A larger candidate has its structure fetched (one message at a time), and
then only its `text/html` parts, each with its own headers in a partial range. Bodies are
fetched in runs bounded by bytes, so memory stays flat whatever the other mail weighs.
Each message is then handed over in UID order and the folder's position advances past
it (persisted in the ledger with UIDVALIDITY).

One message never stops the others. A FETCH that fails (the server's NO or BAD, an
answer imapclient cannot parse, a line over imaplib's 1,000,000-byte limit) is tried
again message by message; the one that fails alone is handed over refused
(`unreadable`, with the server's words) and the position moves past it. A line over
the limit loses the connection: the messages not yet handed over are remembered as
suspects and, after the reconnect, read one by one. A lone message at which the
connection drops MAX_STRIKES times is refused too.

Limits: MAX_HEADER_BYTES of judged headers, MAX_WHOLE_BYTES of a message read whole,
one BODYSTRUCTURE line (imaplib's limit), MAX_HTML_PARTS parts of MAX_HTML_BYTES each
with MAX_PART_HEADER_BYTES of part headers (messages.py); BODY_BATCH_BYTES of bodies
held at once.
"""

from __future__ import annotations

import imaplib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from scorefetch.config import ImapConfig
from scorefetch.core.errors import MailboxError
from scorefetch.core.ledger import Ledger
from scorefetch.mailbox import messages
from scorefetch.mailbox.connection import Answer, Connection, FetchFailed, describe
from scorefetch.mailbox.messages import Part

HEADER_BATCH = 200  # UIDs per header FETCH: at most 200 × 64 KiB of headers held
BODY_BATCH_BYTES = 4 * 1024 * 1024  # HTML parts (and their header bounds) held at once
MAX_STRIKES = 2  # connections lost at one lone message before it is refused


@dataclass(frozen=True)
class Refusal:
    """Why a message is handed over unread: a short `reason` people grep, and a `detail`."""

    reason: str  # too_large, unreadable, gone
    detail: str = ""
    message_id: str | None = None


# (uid, message as far as it was fetched, or None with a refusal) -> whether acted on
Handler = Callable[[int, bytes | None, Refusal | None], bool]
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
    refused: Refusal | None = None  # a reason not to read it at all


class CatchUp:
    """Hands each message above the folder's position to `handle`, in UID order.

    `suspects` (uid -> connections lost at it alone) outlives a session: the watcher
    keeps it, so the messages of a run that lost the connection are read one by one."""

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
        suspects: dict[int, int] | None = None,
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
        self.suspects = suspects if suspects is not None else {}
        self._handed = 0  # the last UID handed over by process()

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
            self.suspects.clear()  # other messages now
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
        self._handed = 0
        work = deque(self._runs(uids))
        while work and not self._stop.is_set():
            run = work.popleft()
            try:
                self._run(validity, run)
            except FetchFailed as exc:
                left = [u for u in run if u > self._handed]
                if len(left) > 1:  # whose doing? each alone will tell
                    for uid in left:
                        self.suspects.setdefault(uid, 0)
                    work.extendleft([uid] for uid in reversed(left))
                elif left:
                    self._refuse(validity, left[0], Refusal("unreadable", exc.detail))
                if not exc.in_sync:
                    raise MailboxError(f"connection lost in a FETCH: {exc.detail}") from None
            except (imaplib.IMAP4.abort, OSError):
                self._strike([u for u in run if u > self._handed], validity)
                raise
        return self._handed

    def _runs(self, uids: list[int]) -> Iterator[list[int]]:
        """Runs of at most HEADER_BATCH UIDs; a suspect is a run of its own."""
        run: list[int] = []
        for uid in uids:
            if uid in self.suspects or len(run) >= HEADER_BATCH:
                if run:
                    yield run
                run = []
            if uid in self.suspects:
                yield [uid]
            else:
                run.append(uid)
        if run:
            yield run

    def _strike(self, left: list[int], validity: int) -> None:
        """The connection was lost while reading `left`: remember them as suspects; one
        alone at which this happened MAX_STRIKES times is refused."""
        if len(left) != 1:
            for uid in left:
                self.suspects.setdefault(uid, 0)
            return
        uid = left[0]
        self.suspects[uid] = self.suspects.get(uid, 0) + 1
        if self.suspects[uid] >= MAX_STRIKES:
            detail = f"the connection was lost {MAX_STRIKES} times reading this message"
            self._refuse(validity, uid, Refusal("unreadable", detail))

    def _refuse(self, validity: int, uid: int, refusal: Refusal) -> None:
        self._hand_over(validity, [_Item(uid, None, [], refusal)])

    def _run(self, validity: int, uids: list[int]) -> None:
        """One run: headers, then per candidate its structure; bodies in byte-bounded
        batches, each handed over before the next is fetched."""
        items = self._envelopes(uids)
        pending: list[_Item] = []
        held = 0
        for item in items:
            if item.parts and not messages.is_whole(item.parts):
                self._structure(item)
            size = messages.fetch_cost(item.parts)
            if pending and held + size > BODY_BATCH_BYTES:
                self._hand_over(validity, pending)
                pending, held = [], 0
                if self._stop.is_set():
                    return
            pending.append(item)
            held += size
        self._hand_over(validity, pending)

    def _envelopes(self, uids: list[int]) -> list[_Item]:
        """The size and judged headers of every UID (a partial range each)."""
        fields = " ".join(messages.HEADER_FIELDS)
        answer = self.conn.fetch(
            uids,
            ["RFC822.SIZE", f"BODY.PEEK[HEADER.FIELDS ({fields})]<0.{messages.MAX_HEADER_BYTES}>"],
        )
        return [self._item(uid, answer.get(uid)) for uid in uids]

    def _item(self, uid: int, found: dict[bytes, Any] | None) -> _Item:
        headers = messages.header_block(found) if found else None
        if headers is None:
            return _Item(uid, None, [], Refusal("gone", "expunged while being read"))
        if len(headers) >= messages.MAX_HEADER_BYTES:
            detail = f"over {messages.MAX_HEADER_BYTES} bytes of From/Message-ID headers"
            refusal = Refusal("too_large", detail, messages.message_id(headers))
            return _Item(uid, None, [], refusal)
        if self._screen is not None and not self._screen(headers):
            return _Item(uid, headers, [])
        size = messages.rfc822_size(found)
        if size is not None and size <= messages.MAX_WHOLE_BYTES:
            return _Item(uid, headers, [Part(messages.WHOLE, size)])
        # A placeholder part marks a candidate until its structure is known.
        return _Item(uid, headers, [Part(messages.TOP, 0)])

    def _structure(self, item: _Item) -> None:
        """A candidate's BODYSTRUCTURE, alone: one line, bounded by imaplib's limit."""
        assert item.headers is not None
        try:
            answer = self.conn.fetch([item.uid], ["BODYSTRUCTURE"])
        except FetchFailed as exc:
            if not exc.in_sync:
                raise
            item.parts = []
            item.refused = self._refusal(item, "unreadable", exc.detail)
            return
        finally:
            self._tick()
        parts = messages.html_parts(answer.get(item.uid, {}).get(b"BODYSTRUCTURE"))
        if parts is None:
            item.parts = []  # not understood: read from the headers alone (no_filename)
            return
        why = messages.too_large(parts)
        if why is not None:
            item.refused, item.parts = self._refusal(item, "too_large", why), []
            return
        item.parts = parts

    @staticmethod
    def _refusal(item: _Item, reason: str, detail: str) -> Refusal:
        return Refusal(reason, detail, messages.message_id(item.headers or b""))

    def _hand_over(self, validity: int, items: Sequence[_Item]) -> None:
        """Fetch the bodies of the candidates among `items` (the small ones whole, in one
        FETCH; the others' HTML parts), then hand each over."""
        wanted = [item for item in items if item.parts and item.refused is None]
        large = [item for item in wanted if not messages.is_whole(item.parts)]
        bodies = self._wholes([item for item in wanted if messages.is_whole(item.parts)])
        for item in large:
            bodies[item.uid] = self._bodies(item)
            self._tick()
        for item in items:
            if self._stop.is_set():
                break
            raw = self._message(item, bodies.get(item.uid, {}).get(item.uid))
            refusal = None if raw is not None else item.refused or Refusal("gone", "expunged")
            acted = self._handle(item.uid, raw, refusal)
            self.ledger.save_mailbox_position(self.config.folder, validity, item.uid)
            self.suspects.pop(item.uid, None)
            self._handed = item.uid
            self._tick()  # legitimate work: the watchdog hears of it message by message
            if acted and self.config.processed_folder is not None:
                self.move(item.uid, self.config.processed_folder)

    def _wholes(self, items: list[_Item]) -> dict[int, Answer]:
        """The small candidates read whole, in one FETCH. A FETCH the server refuses is
        tried again message by message (only the culprit is refused); a message over
        the bound after all (the server's size was wrong) is read by its structure."""
        if not items:
            return {}
        bodies: dict[int, Answer] = {}
        if len(items) == 1:
            bodies[items[0].uid] = self._bodies(items[0])
        else:
            try:
                uids = [item.uid for item in items]
                answer = self.conn.fetch(uids, messages.fetch_items(items[0].parts))
            except FetchFailed as exc:
                if not exc.in_sync:
                    raise
                bodies = {item.uid: self._bodies(item) for item in items}
            else:
                for item in items:
                    bodies[item.uid] = {item.uid: answer[item.uid]} if item.uid in answer else {}
                    if messages.oversized_head(answer.get(item.uid, {})):
                        detail = f"its headers are over {messages.MAX_PART_HEADER_BYTES} bytes"
                        item.refused = self._refusal(item, "too_large", detail)
        self._tick()
        for item in items:
            if item.refused is None and messages.over_whole(bodies[item.uid].get(item.uid, {})):
                item.parts = [Part(messages.TOP, 0)]
                self._structure(item)
                bodies.pop(item.uid)
                if item.parts and item.refused is None:
                    bodies[item.uid] = self._bodies(item)
        return bodies

    def _bodies(self, item: _Item) -> Answer:
        try:
            answer = self.conn.fetch([item.uid], messages.fetch_items(item.parts))
        except FetchFailed as exc:
            if not exc.in_sync:
                raise
            item.refused = self._refusal(item, "unreadable", exc.detail)
            return {}
        if messages.oversized_head(answer.get(item.uid, {})):
            detail = f"a part's headers are over {messages.MAX_PART_HEADER_BYTES} bytes"
            item.refused = self._refusal(item, "too_large", detail)
            return {}
        return answer

    def _message(self, item: _Item, answer: dict[bytes, Any] | None) -> bytes | None:
        if item.headers is None or item.refused is not None:
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
