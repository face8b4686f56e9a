"""College Board notification emails → the file names they announce. Pure functions.

The email only names a file; nothing in it is fetched. It is trusted only as far
as its parsed From address is on the `senders` allowlist.
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from typing import Any, cast

from scorefetch.collegeboard import html as _html
from scorefetch.core.errors import RefusedError
from scorefetch.core.filenames import check_name
from scorefetch.core.logs import untrusted

MAX_MESSAGE_BYTES = 5 * 1024 * 1024  # real notifications are a few KB
MAX_HTML_CHARS = 256 * 1024  # decoded HTML fed to the parser, all parts (html.py: linear)
# A real notification names one file; a few allow for a vendor that ever pairs them. More
# is not a notification: one spoofed email must not turn into thousands of ledger rows,
# authenticated vendor calls (and their retries) and a log line of megabytes.
MAX_NAMES = 10
# The mailbox's structure reading (mailbox/messages.py) refuses the same shapes unfetched.
MAX_DEPTH = 16  # multipart nesting read; real notifications nest two
MAX_HTML_PARTS = 4  # a notification has one
MAX_PART_HEADER_BYTES = 16 * 1024  # one HTML part's own headers; a notification's ~100 bytes
MAX_HEADER_BYTES = 64 * 1024  # read for the Message-ID of a message too large to parse
MAX_ID_CHARS = 200  # of a Message-ID, as logged (someone else wrote it)
_SHOWN_NAME = 80  # characters of a refused name quoted in `detail`
_RESULT = re.compile(r"\s*(dkim|dmarc)\s*=\s*(\w+)", re.I)


class _Policy(EmailPolicy):
    """`policy.default`, but within one message a short header is parsed once per distinct
    name and value. The email package parses a header again at every look (a part's
    Content-Type four times while its HTML is found and decoded): two thirds of the
    reading's time went there. The memo lives as long as the message's reading (`_parsed`,
    set by `_policy()`) and holds no long value: a parsed header keeps its parse tree, some
    hundred times the text (a 63 KB From list is 30 MB parsed)."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value
        if len(value) <= _SHARED_CHARS and name.lower() in _SHARED:
            return _shared(name, value)
        memo: dict[tuple[str, str], Any] | None = getattr(self, "_parsed", None)
        if memo is None or len(value) > _MEMO_CHARS:
            return super().header_fetch_parse(name, value)
        key = (name, value)
        if key not in memo:
            memo[key] = super().header_fetch_parse(name, value)
        return memo[key]


_MEMO_CHARS = 512  # a header value up to this long is parsed once per message
# Values every notification repeats (College Board's From, a part's Content-Type) are
# parsed once for all messages: a few, short, so what is kept stays under ~1.5 MB.
_SHARED = frozenset({"from", "content-type", "content-transfer-encoding", "content-disposition"})
_SHARED_CHARS = 200


@functools.lru_cache(maxsize=16)
def _shared(name: str, value: str) -> Any:
    return policy.default.header_fetch_parse(name, value)


_POLICY = _Policy()


def _policy() -> EmailPolicy[EmailMessage]:
    """A policy for one message's reading, with a memo of its own."""
    fresh = _POLICY.clone()
    object.__setattr__(fresh, "_parsed", {})  # policies refuse new attributes otherwise
    return cast("EmailPolicy[EmailMessage]", fresh)


@dataclass(frozen=True)
class Notification:
    message_id: str
    sender: str
    filenames: tuple[str, ...]


@dataclass(frozen=True)
class Rejection:
    message_id: str
    reason: str  # a short code people can grep: sender, no_filename, unsafe_filename, …
    detail: str


def sender_allowed(address: str, senders: Sequence[str]) -> bool:
    """Exact address, or `@domain` matching that domain and its subdomains."""
    address = address.lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or "@" in local or not domain:
        return False
    for allowed in senders:
        allowed = allowed.lower()
        if allowed.startswith("@"):
            if domain == allowed[1:] or domain.endswith("." + allowed[1:]):
                return True
        elif address == allowed:
            return True
    return False


def _allowed_domains(senders: Sequence[str]) -> list[str]:
    return [s.lower().rpartition("@")[2] for s in senders]


def _strip_comments(text: str) -> str:
    """RFC 5322 comments `( … )` removed (not nested: enough for these headers)."""
    return re.sub(r"\([^()]*\)", " ", text)


def authenticated(message: EmailMessage, authserv_id: str, senders: Sequence[str]) -> bool:
    """An Authentication-Results header from our own `authserv_id` says dkim=pass (header.d)
    or dmarc=pass (header.from) for an allowlisted domain. Only the receiving server's
    own header counts: it must strip look-alikes that arrive from outside."""
    domains = _allowed_domains(senders)
    for key, value in message.raw_items():
        if key.lower() != "authentication-results":
            continue
        server, *results = _strip_comments(" ".join(str(value).split())).split(";")
        if not server.split() or server.split()[0].lower() != authserv_id.lower():
            continue
        for result in results:
            match = _RESULT.match(result)
            if not match or match.group(2).lower() != "pass":
                continue
            prop = r"header\.[di]" if match.group(1).lower() == "dkim" else r"header\.from"
            found = re.search(rf"\b{prop}\s*=\s*(?:[^\s;@]*@)?([^\s;@]+)", result, re.I)
            domain = found.group(1).lower().rstrip(".") if found else ""
            if domain and any(domain == d or domain.endswith("." + d) for d in domains):
                return True
    return False


class TooDeep(ValueError):
    """Multiparts nested deeper than MAX_DEPTH: not a notification's shape (they nest two)."""


class TooLarge(ValueError):
    """An HTML part under more than MAX_PART_HEADER_BYTES of its own headers."""


def html_parts(message: EmailMessage, depth: int = 0) -> list[str]:
    """Every decoded text/html body part (any transfer encoding, any charset). Attachments
    and attached messages are skipped whole: their From was never checked. Multiparts
    nested deeper than MAX_DEPTH raise TooDeep (the mailbox reads no deeper either)."""
    if message.get_content_disposition() == "attachment":
        return []
    if message.is_multipart():
        if message.get_content_maintype() == "message":
            return []  # message/rfc822 and the like: another email inside this one
        if depth >= MAX_DEPTH:
            raise TooDeep(f"multiparts nested more than {MAX_DEPTH} deep")
        parts = (cast(EmailMessage, part) for part in message.iter_parts())
        return [html for part in parts for html in html_parts(part, depth + 1)]
    if message.get_content_type() != "text/html":
        return []
    if depth > 0 and sum(len(k) + len(v) + 4 for k, v in message.raw_items()) > (
        MAX_PART_HEADER_BYTES
    ):
        raise TooLarge(f"a part's headers are over {MAX_PART_HEADER_BYTES} bytes")
    if str(message.get("Content-Transfer-Encoding", "")).strip().lower() == "quoted-printable":
        _repair_soft_breaks(message)
    try:
        return [message.get_content()]
    except (LookupError, ValueError, AssertionError):
        # An unknown charset or broken encoding: decode leniently rather than drop it.
        payload = message.get_payload(decode=True)
        return [payload.decode("utf-8", "replace")] if isinstance(payload, bytes) else []


def _repair_soft_breaks(part: EmailMessage) -> None:
    """RFC 2045 6.7(3): whitespace added in transit after a soft break's `=` is dropped."""
    payload = part.get_payload()
    if isinstance(payload, str) and re.search(r"=[ \t]+\r?\n", payload):
        part.set_payload(re.sub(r"=[ \t]+(?=\r?\n)", "=", payload))


def file_names_in_html(html: str, limit: int = MAX_NAMES + 1) -> list[str]:
    """Trimmed texts of the elements whose id is `fileName` (either quote style, any tag
    case), distinct, from the first `limit` such elements, read as Beautiful Soup read
    them (html.py)."""
    return _html.file_names_in_html(html, limit)


def _sender(message: EmailMessage) -> str | None:
    """The single From address (never the display name), or None when there is any doubt.

    The modern header parser quietly drops what it cannot parse (`a@good <x@evil>`
    becomes `a@good`), so the raw value is also read by the legacy parser and both
    must agree on exactly one address. A defect the parser notes in the display name
    alone is no doubt about the address: real College Board mail has been seen with an
    encoded word inside quotes (`"=?utf-8?q?College_Board_Reporting?=" <…>`).
    """
    raw = [str(value) for key, value in message.raw_items() if key.lower() == "from"]
    if len(raw) != 1:
        return None
    header = message["From"]
    modern = [a.addr_spec for a in getattr(header, "addresses", ())]
    legacy = [addr for _, addr in email.utils.getaddresses(raw) if addr]
    if len(legacy) != 1 or [a.lower() for a in modern] != [legacy[0].lower()]:
        return None
    address = legacy[0].lower()
    return address if address.count("@") == 1 else None


def may_be_notification(
    headers: bytes, senders: Sequence[str], authserv_id: str | None = None
) -> bool:
    """Whether a message with these header lines can be a notification: its single From is
    allowed (and vouched for, with `authserv_id`). The same checks as `read_notification`
    on the same lines, so a message refused here would be refused there; never raises."""
    try:
        message = BytesParser(policy=_policy()).parsebytes(headers, headersonly=True)
        sender = _sender(message)
        if sender is None or not sender_allowed(sender, senders):
            return False
        return authserv_id is None or authenticated(message, authserv_id, senders)
    except Exception:  # noqa: BLE001 - as in read_notification: junk is not a candidate
        return False


def _message_id(raw: bytes) -> str:
    """The Message-ID among the first MAX_HEADER_BYTES of `raw` (headers only), or ''."""
    try:
        head = BytesParser(policy=policy.compat32).parsebytes(
            raw[:MAX_HEADER_BYTES], headersonly=True
        )
        return untrusted(str(head.get("Message-ID", "") or ""), MAX_ID_CHARS)
    except Exception:  # noqa: BLE001 - junk headers have no id worth more than ''
        return ""


def read_notification(
    raw: bytes, senders: Sequence[str], authserv_id: str | None = None
) -> Notification | Rejection:
    """Decide what one email announces; never raises on any input."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(
            _message_id(raw), "too_large", f"message is {len(raw)} bytes; notifications are small"
        )
    try:
        message = BytesParser(policy=_policy()).parsebytes(raw)
        message_id = untrusted(str(message.get("Message-ID", "") or ""), MAX_ID_CHARS)
    except Exception as exc:  # noqa: BLE001 - a hostile message must not stop the loop
        return Rejection("", "malformed", f"unparseable message: {type(exc).__name__}")
    try:
        found = _read(message, message_id, senders, authserv_id)
    except Exception as exc:  # noqa: BLE001 - the email package raises many kinds on junk
        return Rejection(message_id, "malformed", f"unparseable message: {type(exc).__name__}")
    if isinstance(found, Rejection):  # its detail may quote the sender's words
        return Rejection(found.message_id, found.reason, untrusted(found.detail))
    return found


def _read(
    message: EmailMessage, message_id: str, senders: Sequence[str], authserv_id: str | None
) -> Notification | Rejection:
    sender = _sender(message)
    if sender is None:
        return Rejection(message_id, "sender", "no single From address")
    if not sender_allowed(sender, senders):
        return Rejection(message_id, "sender", f"sender {sender} is not in collegeboard.senders")
    if authserv_id is not None and not authenticated(message, authserv_id, senders):
        return Rejection(
            message_id,
            "unauthenticated",
            f"no dkim=pass or dmarc=pass for an allowed domain from {authserv_id}",
        )
    try:
        htmls = html_parts(message)
    except TooDeep as exc:
        return Rejection(message_id, "malformed", str(exc))
    except TooLarge as exc:
        return Rejection(message_id, "too_large", str(exc))
    if len(htmls) > MAX_HTML_PARTS:
        return Rejection(
            message_id, "too_large", f"{len(htmls)} HTML parts; notifications have one"
        )
    size = sum(len(html) for html in htmls)
    if size > MAX_HTML_CHARS:
        return Rejection(
            message_id, "too_large", f"{size} characters of HTML; notifications are small"
        )
    found: dict[str, None] = {}  # an ordered set
    for html in htmls:
        found.update(dict.fromkeys(file_names_in_html(html)))
        if len(found) > MAX_NAMES:
            return Rejection(
                message_id, "too_many_filenames", f"more than {MAX_NAMES} fileName elements"
            )
    names = tuple(found)
    if not names:
        return Rejection(message_id, "no_filename", "no element with id=fileName in an HTML part")
    for name in names:
        try:
            check_name(name)
        except RefusedError as exc:
            shown = name if len(name) <= _SHOWN_NAME else name[:_SHOWN_NAME] + "…"
            return Rejection(message_id, "unsafe_filename", f"{shown!r}: {exc}")
    return Notification(message_id, sender, names)
