"""What to fetch of a message, decided from what the server says about it. Pure.

The headers the decision needs come first, for every new message, with its size; a
body is fetched only for a candidate (its From on the allowlist). A small candidate (up
to MAX_WHOLE_BYTES, as a notification is) is read whole — its `Content-*` headers and its
whole text — many in one FETCH; a larger one has only its `text/html` parts fetched, never
attachments or attached messages. What is fetched is put back together as a small RFC
5322 message: the judged header lines as the server picked them out (a line Python's
parser cannot read above From must not hide it), then the body headers and the text or
the parts. Either way `read_notification` stays the one authority on what a message
announces.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any

from scorefetch.core.logs import untrusted

# The headers a notification is judged by (sender, authentication, the id for the log).
HEADER_FIELDS = ("FROM", "MESSAGE-ID", "AUTHENTICATION-RESULTS")
# A single-part message's own body headers; a multipart's parts have theirs (`<n>.MIME`).
BODY_FIELDS = ("CONTENT-TYPE", "CONTENT-TRANSFER-ENCODING", "CONTENT-DISPOSITION")
MAX_HEADER_BYTES = 64 * 1024  # of the fields above; real ones are well under 4 KiB
MAX_HTML_BYTES = 1024 * 1024  # one encoded HTML part; a notification's is ~2 KiB
MAX_HTML_PARTS = 4
MAX_PART_HEADER_BYTES = 16 * 1024  # one part's own headers; a notification's are ~100 bytes
MAX_DEPTH = 16  # multipart nesting followed; notifications nest two deep
TOP = "TEXT"  # the section of a single-part message's body
WHOLE = ""  # a candidate small enough to read whole: its body headers and BODY[TEXT]
MAX_WHOLE_BYTES = 128 * 1024  # a candidate up to this RFC822.SIZE is read whole; real ones ~10 KiB


@dataclass(frozen=True)
class Part:
    """A text/html body part: its IMAP section (`1.2`, or TOP) and encoded size."""

    section: str
    size: int


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").lower()
    return str(value or "").lower()


def _is_attachment(disposition: Any) -> bool:
    """A BODYSTRUCTURE disposition: `("attachment" (…))` as RFC 3501 has it, or the flat
    string some servers send (pymap: `"attachment; filename=…"`)."""
    if isinstance(disposition, tuple | list):
        disposition = disposition[0] if disposition else ""
    return _text(disposition).split(";", 1)[0].strip() == "attachment"


def html_parts(structure: Any) -> list[Part] | None:
    """The text/html parts of a BODYSTRUCTURE, in order, as `html_parts()` in
    notifications.py reads them: attachments and attached messages are skipped whole.
    None when the structure is not one we understand (then nothing is fetched)."""
    if not isinstance(structure, tuple) or not structure:
        return None
    if _is_multipart(structure):
        return _multipart(structure, "")
    return [Part(TOP, _size(structure))] if _is_html(structure) else []


def _is_multipart(structure: tuple[Any, ...]) -> bool:
    """imapclient gives a multipart's children as a list first; a leaf starts with its type."""
    return isinstance(structure[0], list | tuple)


def _multipart(structure: tuple[Any, ...], prefix: str) -> list[Part] | None:
    if prefix.count(".") >= MAX_DEPTH:
        return None
    children = structure[0]
    if len(structure) > 3 and _is_attachment(structure[3]):
        return []
    found: list[Part] = []
    for n, child in enumerate(children, start=1):
        section = f"{prefix}{n}"
        if not isinstance(child, tuple) or not child:
            return None
        if _is_multipart(child):
            nested = _multipart(child, section + ".")
            if nested is None:
                return None
            found.extend(nested)
        elif _is_html(child):
            found.append(Part(section, _size(child)))
    return found


def _is_html(body: tuple[Any, ...]) -> bool:
    """A text/html leaf that is not an attachment (disposition: field 9 for text/*)."""
    if len(body) < 7 or (_text(body[0]), _text(body[1])) != ("text", "html"):
        return False
    return not (len(body) > 9 and _is_attachment(body[9]))


def _size(body: tuple[Any, ...]) -> int:
    try:
        return max(0, int(body[6]))
    except (TypeError, ValueError, IndexError):
        return MAX_HTML_BYTES + 1  # unknown: treated as too large, never fetched blind


def too_large(parts: Sequence[Part]) -> str | None:
    """Why these parts are not fetched, or None: each is bounded, and so is their number."""
    if len(parts) > MAX_HTML_PARTS:
        return f"{len(parts)} HTML parts; notifications have one"
    biggest = max((p.size for p in parts), default=0)
    if biggest > MAX_HTML_BYTES:
        return f"an HTML part of {biggest} bytes; notifications are a few KB"
    return None


def fetch_items(parts: Iterable[Part]) -> list[str]:
    """The FETCH items that bring each part's own headers and its (encoded) body, each a
    partial range: a server's word on a part's size is not trusted with our memory."""
    head, body = f"<0.{MAX_PART_HEADER_BYTES}>", f"<0.{MAX_HTML_BYTES}>"
    items: list[str] = []
    for part in parts:
        if part.section in (TOP, WHOLE):
            # A whole message: its body headers and its whole text (one byte over the bound
            # shows that the server's size was wrong); with the judged headers, the message
            # as the reader needs it, each header line as the server parsed it.
            text = f"<0.{MAX_WHOLE_BYTES + 1}>" if part.section == WHOLE else body
            fields = " ".join(BODY_FIELDS)
            items += [f"BODY.PEEK[HEADER.FIELDS ({fields})]{head}", f"BODY.PEEK[TEXT]{text}"]
        else:
            items += [f"BODY.PEEK[{part.section}.MIME]{head}", f"BODY.PEEK[{part.section}]{body}"]
    return items


def fetch_cost(parts: Sequence[Part]) -> int:
    """The most bytes fetching these parts can bring: bodies and their header bounds."""
    if is_whole(parts):
        return min(parts[0].size, MAX_WHOLE_BYTES + 1) + MAX_PART_HEADER_BYTES
    return sum(min(p.size, MAX_HTML_BYTES) + MAX_PART_HEADER_BYTES for p in parts)


def is_whole(parts: Sequence[Part]) -> bool:
    """Whether these parts stand for the whole message (a small candidate)."""
    return len(parts) == 1 and parts[0].section == WHOLE


def over_whole(answer: dict[bytes, Any]) -> bool:
    """Whether a message read whole is larger than a whole read's bound after all."""
    text = header_block(answer, b"BODY[TEXT]")
    return text is not None and len(text) > MAX_WHOLE_BYTES


def rfc822_size(answer: dict[bytes, Any] | None) -> int | None:
    """The server's RFC822.SIZE of a message, or None when it said nothing usable."""
    value = (answer or {}).get(b"RFC822.SIZE")
    try:
        size = int(value) if isinstance(value, int | bytes | str) else None
    except ValueError:
        return None
    return size if size is not None and size >= 0 else None


def part_bytes(answer: dict[bytes, Any], part: Part) -> bytes | None:
    """One part (its headers, a blank line, its body) out of a FETCH answer, or None."""
    if part.section in (TOP, WHOLE):
        head = header_block(answer, b"BODY[HEADER.FIELDS")
        body = header_block(answer, b"BODY[TEXT]")
    else:
        head = _exact(answer, f"BODY[{part.section}.MIME]".encode())
        body = _exact(answer, f"BODY[{part.section}]".encode())
    if head is None or body is None:
        return None
    return content_headers(head) + b"\r\n" + body


def _exact(answer: dict[bytes, Any], key: bytes) -> bytes | None:
    """The value of `key`, with or without the `<0>` a partial fetch adds."""
    for found in (key, key + b"<0>"):
        value = answer.get(found)
        if isinstance(value, bytes):
            return value
    return None


def oversized_head(answer: dict[bytes, Any]) -> bool:
    """Whether a part's headers filled their whole partial range (so were cut)."""
    return any(
        isinstance(key, bytes)
        and (key.endswith(b".MIME]<0>") or key.startswith(b"BODY[HEADER.FIELDS"))
        and isinstance(value, bytes)
        and len(value) >= MAX_PART_HEADER_BYTES
        for key, value in answer.items()
    )


def content_headers(head: bytes) -> bytes:
    """Only the `Content-*` fields of a part's headers (with their folded lines). A part's
    other headers must not reach the top of the assembled message: an `Authentication-
    Results` or `From` inside a part was never the message's own."""
    kept: list[bytes] = []
    keep = False
    for line in head.splitlines(keepends=True):
        if line.strip() == b"":
            break
        if line[:1] not in (b" ", b"\t"):
            keep = line.split(b":", 1)[0].strip().lower().startswith(b"content-")
        if keep:
            kept.append(line if line.endswith(b"\n") else line + b"\r\n")
    return b"".join(kept)


def header_block(answer: dict[bytes, Any], prefix: bytes = b"BODY[HEADER.FIELDS") -> bytes | None:
    """The value of the first `BODY[HEADER.FIELDS (…)]` key (servers order the field
    names as they like, and a partial fetch adds `<0>`)."""
    for key, value in answer.items():
        if isinstance(key, bytes) and key.startswith(prefix) and isinstance(value, bytes):
            return value
    return None


def message_id(headers: bytes) -> str | None:
    """The Message-ID among these header lines (cleaned: someone else wrote it), or None."""
    try:
        found = BytesParser(policy=policy.compat32).parsebytes(headers, headersonly=True)
        value = found.get("Message-ID")
    except Exception:  # noqa: BLE001 - junk headers have no id worth a traceback
        return None
    return untrusted(str(value), 200) or None if value is not None else None


def _ending(head: bytes) -> bytes:
    """Header lines without the blank line that ends them, each ending in CRLF."""
    head = head.rstrip(b"\r\n")
    return head + b"\r\n" if head else b""


def assemble(headers: bytes, parts: Sequence[bytes]) -> bytes:
    """The message as far as a notification can be read from it: the judged headers and
    the HTML parts (one: as the body; several: in a multipart/mixed)."""
    head = _ending(headers)
    if not parts:
        return head + b"\r\n"
    if len(parts) == 1:
        return head + parts[0]
    boundary = b"=_scorefetch_" + secrets.token_hex(12).encode()
    while any(boundary in p for p in parts):  # pragma: no cover - 96 random bits
        boundary = b"=_scorefetch_" + secrets.token_hex(12).encode()
    out = [head, b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="', boundary]
    out.append(b'"\r\n\r\n')
    for part in parts:
        out += [b"--", boundary, b"\r\n", part, b"\r\n"]
    out += [b"--", boundary, b"--\r\n"]
    return b"".join(out)
