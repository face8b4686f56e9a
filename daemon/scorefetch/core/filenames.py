"""File names from vendors and emails: refused unless they are plain names. Pure functions."""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote, urlsplit

from scorefetch.core.errors import RefusedError

MAX_NAME_BYTES = 255  # the usual file-system limit (ext4, xfs)
_DIGITS = (*"123456789", "¹", "²", "³")  # Windows also reserves COM¹ … LPT³
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{device}{digit}" for device in ("com", "lpt") for digit in _DIGITS}
)


def check_name(name: str) -> str:
    """`name` unchanged if it is a plain file name; RefusedError saying why otherwise.

    Refused: empty, path separators, `.`/`..`, a leading dot (hidden, and our `.part`
    files), NUL and other control or format characters, names over 255 bytes,
    trailing dots or spaces, and Windows device names (files end up on SMB shares).
    """
    if not name:
        raise RefusedError("empty file name")
    if "/" in name or "\\" in name:
        raise RefusedError("file name contains a path separator")
    if name.startswith("."):
        raise RefusedError("file name starts with a dot")
    for char in name:
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            raise RefusedError(f"file name contains the control character U+{ord(char):04X}")
        if char == "\ufffd":  # a lossy decoding (or an &#0;) happened on the way here
            raise RefusedError("file name contains U+FFFD, the replacement character")
    if name != name.strip() or name.endswith("."):
        raise RefusedError("file name ends or starts with a space, or ends with a dot")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise RefusedError(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if name.split(".")[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        raise RefusedError("file name is a reserved device name")
    return name


def file_format(name: str) -> str:
    """The lower-cased extension without its dot (`csv`, `txt`, `zip`), or '' when none."""
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem else ""


def name_from_url(url: str) -> str:
    """The last path segment of a download URL, URL-decoded, checked as a plain name."""
    try:
        segment = urlsplit(url).path.rsplit("/", 1)[-1]
        name = unquote(segment, errors="strict")  # `%ff` is no UTF-8: refused, not guessed
    except ValueError:  # UnicodeDecodeError too
        raise RefusedError("the download URL's last path segment is not a file name") from None
    return check_name(name)
