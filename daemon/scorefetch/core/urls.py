"""Which host a URL names, read the way the connection will read it, and whether that host
is allowed. Pure functions.

Python's `urlsplit` and urllib3's `parse_url` (what core/http.py connects with) disagree on
hostile URLs: `https://127.0.0.1\\.s3.amazonaws.com/` is `127.0.0.1\\.s3.amazonaws.com` to
one and `127.0.0.1` to the other; so are `evil\\@s3...`, `%65vil.com`, `[::1%25eth0]`, tabs
that one drops and the other keeps, and every non-ASCII (IDNA) spelling. Rather than
chase each, a URL is accepted only when it is printable ASCII with no backslash and no
userinfo, both parsers agree on scheme, host and port, and
the host is a plain DNS name (letters, digits, hyphens; no trailing dot; not a number in
disguise such as `127.1` or `0x7f.1`) or a canonical IP literal without a zone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

_QUERY = re.compile(r"[?#]")
_PRINTABLE_ASCII = re.compile(r"[!-~]+")  # no space, no control character, nothing above 0x7e
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")  # what inet_aton reads as a number
MAX_HOST = 253


class UrlError(ValueError):
    """Why a URL or host is refused; the text never quotes the URL's query."""


@dataclass(frozen=True)
class Target:
    """Where a connection to a checked URL goes."""

    scheme: str
    host: str  # lower case; IPv6 without brackets
    port: int | None


def plain_host(host: str) -> str:
    """`host` lower-cased if it is a plain DNS name or a canonical IP literal; else UrlError."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        if "%" in host:
            raise UrlError("an IPv6 address with a zone id")
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise UrlError("not a valid IPv6 address") from None
    if not host or len(host) > MAX_HOST:
        raise UrlError("an empty or over-long host name")
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise UrlError("a host that is not a plain DNS name (letters, digits, hyphens, dots)")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:  # a resolver reads `127.1`, `2130706433` or `0x7f.1` as an address: only
            return str(ipaddress.IPv4Address(host))  # the canonical dotted quad is taken
        except ValueError:
            raise UrlError("a host that is a number but not a dotted-quad IPv4 address") from None
    return host


def connect_target(url: str) -> Target:
    """Scheme, host and port that `url` connects to, once every reading of it agrees."""
    if not _PRINTABLE_ASCII.fullmatch(url):
        raise UrlError("a URL with whitespace, control or non-ASCII characters")
    if "\\" in url:
        raise UrlError("a URL with a backslash")
    # Every reader ends the authority at the first `?` or `#` if not before, so the query
    # and fragment (a presigned URL's bulk, which urllib3 re-encodes a character at a time)
    # cannot move where any of them connects: they are left out of the readings.
    url = _QUERY.split(url, maxsplit=1)[0]
    try:
        ours = urlsplit(url)
        if ours.scheme not in {"http", "https"} or not ours.hostname:
            raise UrlError("not an http(s) URL")
        ours_port = ours.port
        theirs = parse_url(url)
    except (ValueError, LocationParseError) as exc:
        if isinstance(exc, UrlError):
            raise
        raise UrlError("not a well-formed URL") from None
    if "@" in ours.netloc or theirs.auth:
        raise UrlError("a URL that carries user information (user:password@)")
    readings = {
        (ours.scheme, ours.hostname or "", ours_port),
        (theirs.scheme or "", (theirs.host or "").strip("[]"), theirs.port),
    }
    if len(readings) != 1:
        raise UrlError("a URL whose host or port the parsers read differently")
    return Target(ours.scheme, plain_host(ours.hostname or ""), ours_port)


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """`host` matches a pattern: an exact name; a leading `*.` stands for one or more
    labels; any other `*` for letters, digits and hyphens within one label (so
    `*.s3.*.amazonaws.com` allows `bucket.s3.us-east-1.amazonaws.com`)."""
    host = host.lower().rstrip(".")
    return any(_pattern(p).fullmatch(host) for p in patterns if p.strip())


def _pattern(pattern: str) -> re.Pattern[str]:
    labels = pattern.lower().strip().rstrip(".").split(".")
    head = ""
    if len(labels) > 1 and labels[0] == "*":
        head, labels = r"(?:[a-z0-9-]+\.)+", labels[1:]
    parts = [r"[a-z0-9-]+".join(re.escape(piece) for piece in lab.split("*")) for lab in labels]
    return re.compile(head + r"\.".join(parts))


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
