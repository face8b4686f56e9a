"""An in-memory `Connection` for the watcher's unit tests (catch-up, moves, backoff).

It answers FETCH for the items the watcher asks for (`RFC822.SIZE`,
`BODY.PEEK[HEADER.FIELDS (…)]<0.N>`, `BODYSTRUCTURE`,
`BODY.PEEK[<section>.MIME]`, `BODY.PEEK[<section>]`, `BODY.PEEK[TEXT]`) from real
RFC 5322 bytes, parsed with the email package, in imapclient's shapes, and records
every command and the bytes it answered with. The real-server tests
(test_mailbox.py, test_e2e.py) check the same paths against pymap and Dovecot.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from email import message_from_bytes
from email.message import Message
from typing import Any

from scorefetch.mailbox.connection import FetchFailed

_HEADER_FIELDS = re.compile(r"BODY\.PEEK\[HEADER\.FIELDS \(([^)]*)\)\](?:<0\.(\d+)>)?")
_SECTION = re.compile(r"BODY\.PEEK\[([\d.]+|TEXT)(\.MIME)?\](?:<0\.(\d+)>)?")


def _header_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    return (head + b"\r\n", body) if sep else (raw, b"")


def header_fields(raw: bytes, names: set[str]) -> bytes:
    head, _ = _header_and_body(raw)
    kept: list[bytes] = []
    keep = False
    for line in head.splitlines(keepends=True):
        if line[:1] not in (b" ", b"\t"):
            keep = line.split(b":", 1)[0].decode("ascii", "replace").strip().upper() in names
        if keep:
            kept.append(line)
    return b"".join(kept) + b"\r\n"


def _params(part: Message) -> tuple[bytes, ...] | None:
    params = [(k, v) for k, v in part.get_params(failobj=[])[1:]]
    flat = tuple(x.encode() for kv in params for x in (kv[0], str(kv[1])))
    return flat or None


def _disposition(part: Message) -> tuple[Any, ...] | None:
    value = part.get_content_disposition()
    return (value.encode(), None) if value else None


def structure(part: Message, raw_body: bytes) -> tuple[Any, ...]:
    """imapclient's BODYSTRUCTURE shape for a parsed part whose encoded body is `raw_body`."""
    if part.is_multipart():
        children = [structure(c, _encoded(c)) for c in part.get_payload()]  # type: ignore[union-attr]
        return (children, part.get_content_subtype().encode(), _params(part), _disposition(part))
    maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
    encoding = str(part.get("Content-Transfer-Encoding", "7bit")).encode()
    base = (maintype.encode(), subtype.encode(), _params(part), None, None, encoding)
    if maintype == "text":
        lines = raw_body.count(b"\n")
        return (*base, len(raw_body), lines, None, _disposition(part), None, None)
    return (*base, len(raw_body), None, _disposition(part), None, None)


def _encoded(part: Message) -> bytes:
    """A leaf's body as it is in the message. Not get_payload(): that decodes 8-bit bytes
    with the part's charset (real mail has them, tests/corpus/)."""
    payload = getattr(part, "_payload", None)
    if isinstance(payload, str):  # the bytes, surrogate-escaped by the bytes parser
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _mime_header(part: Message) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in part.items()) + b"\r\n"


class FakeConnection:
    """A selected folder of `messages` (uid -> raw bytes) with the given capabilities."""

    def __init__(
        self,
        messages: dict[int, bytes],
        capabilities: Sequence[str] = ("IDLE", "MOVE", "UIDPLUS"),
        uidvalidity: int = 7,
    ) -> None:
        self.messages = dict(messages)
        self.capabilities = {c.upper() for c in capabilities}
        self.uidvalidity = uidvalidity
        self.heard = time.monotonic()
        self.commands: list[tuple[str, Any]] = []  # (name, arguments), in order
        self.answered = 0  # bytes of message data sent back by FETCH
        self.folders: dict[str, list[int]] = {}
        self.deleted: set[int] = set()
        self.fail_on: dict[str, BaseException] = {}  # command name -> raised when called
        self.sizes: dict[int, int] = {}  # RFC822.SIZE said instead of the true one (a liar)

    def _call(self, name: str, args: Any = None) -> None:
        self.commands.append((name, args))
        self.heard = time.monotonic()
        if name in self.fail_on:
            raise self.fail_on[name]

    def select(self, folder: str, readonly: bool) -> int:
        self._call("select", (folder, readonly))
        return self.uidvalidity

    def has_capability(self, name: str) -> bool:
        return name.upper() in self.capabilities

    def folder_exists(self, folder: str) -> bool:
        return folder in self.folders

    def create_folder(self, folder: str) -> None:
        self._call("create", folder)
        self.folders[folder] = []

    def search(self, criteria: list[Any]) -> list[int]:
        self._call("search", criteria)
        uids = sorted(self.messages)
        if criteria[:1] == ["UID"]:
            low = int(str(criteria[1]).split(":")[0])
            return [u for u in uids if u >= low] or uids[-1:]  # `N:*` includes the top
        return uids

    def fetch(self, uids: Sequence[int], items: Sequence[str]) -> dict[int, dict[bytes, Any]]:
        self._call("fetch", (list(uids), list(items)))
        if not items:  # as a real server answers `FETCH 1 ()`
            raise FetchFailed("fetch failed: BAD [PARSE] no items", in_sync=True)
        answer: dict[int, dict[bytes, Any]] = {}
        for uid in uids:
            if uid in self.messages:
                answer[uid] = {k: v for item in items for k, v in self._item(uid, item).items()}
        return answer

    def _item(self, uid: int, item: str) -> dict[bytes, Any]:
        raw = self.messages[uid]
        fields = _HEADER_FIELDS.fullmatch(item)
        if fields:
            data = header_fields(raw, set(fields.group(1).split()))
            if fields.group(2):
                data = data[: int(fields.group(2))]
            key = item.replace(".PEEK", "").split("<")[0] + ("<0>" if fields.group(2) else "")
            self.answered += len(data)
            return {key.encode(): data}
        if item == "RFC822.SIZE":
            return {b"RFC822.SIZE": self.sizes.get(uid, len(raw))}
        if item == "BODYSTRUCTURE":
            return {b"BODYSTRUCTURE": structure(message_from_bytes(raw), _header_and_body(raw)[1])}
        section = _SECTION.fullmatch(item)
        assert section, f"the fake does not answer {item}"
        data = self._section(raw, section.group(1), bool(section.group(2)))
        if section.group(3):
            data = data[: int(section.group(3))]
        self.answered += len(data)
        key = item.replace(".PEEK", "").split("<")[0] + ("<0>" if section.group(3) else "")
        return {key.encode(): data}

    def _section(self, raw: bytes, section: str, mime: bool) -> bytes:
        if section == "TEXT":
            return _header_and_body(raw)[1]
        part: Message = message_from_bytes(raw)
        for n in section.split("."):
            part = part.get_payload()[int(n) - 1]  # type: ignore[index]
        return _mime_header(part) if mime else _encoded(part)

    def move(self, uid: int, folder: str) -> None:
        self._call("move", (uid, folder))
        self.folders.setdefault(folder, []).append(uid)
        self.messages.pop(uid, None)

    def copy(self, uid: int, folder: str) -> None:
        self._call("copy", (uid, folder))
        self.folders.setdefault(folder, []).append(uid)

    def mark_deleted(self, uid: int) -> None:
        self._call("mark_deleted", uid)
        self.deleted.add(uid)

    def uid_expunge(self, uid: int) -> None:
        self._call("uid_expunge", uid)
        assert "UIDPLUS" in self.capabilities, "UID EXPUNGE without UIDPLUS"
        self.messages.pop(uid, None)
        self.deleted.discard(uid)

    def noop(self) -> None:
        self._call("noop")

    def take_new_mail_signals(self) -> bool:
        return False

    def idle(self) -> None:
        self._call("idle")

    def idle_check(self, wait: float) -> list[Any]:
        self._call("idle_check", wait)
        return []

    def idle_done(self, timeout: float) -> None:
        self._call("idle_done", timeout)

    def logout(self) -> None:
        self._call("logout")

    def drop(self) -> None:
        self.commands.append(("drop", None))

    def fetched_items(self, uid: int) -> list[str]:
        """Every FETCH item asked for `uid`."""
        return [i for name, a in self.commands if name == "fetch" and uid in a[0] for i in a[1]]
