"""Logging, configured once in main(): JSON lines under systemd, a console renderer on a TTY.

The event names are an interface (README: "Log events"). A last processor
scrubs what must never be logged, as a net under the callers' own care:
secret-named fields are masked and URLs lose their query strings.

Under journald (`$JOURNAL_STREAM` names the stream's device and inode) every line is JSON
and starts with its syslog priority, `<3>` for an error, which journald reads and strips
(`SyslogLevelPrefix=`, on by default): `journalctl -p warning` then shows what it says.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO, cast

_SECRET_FIELD = re.compile(
    r"pass(word)?|secret|token|api_?key|authorization|cookie|private_?key|certificate|assertion",
    re.I,
)
_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s#\"']*", re.I)
# The second line of defence, for text that reached a sink anyway. requests and urllib3
# quote a request's *path-only* form (`/file.csv?X-Amz-Signature=...`), so any `?` that
# starts `name=value` pairs loses what follows, URL or not; and a secret-named parameter,
# JSON member or header keeps its name but not its value, wherever it appears.
_ANY_QUERY = re.compile(r"\?[\w.~%+-]*=[^\s#\"'<>)\]]*")
_MASKED_WORDS = (
    r"x-amz-[a-z-]+|signature|awsaccesskeyid|security-token|expires|tok|token|[a-z]*_?token"
    r"|sessiontoken|password|passwd|pwd|secret|client_secret|api[_-]?key|x-api-key"
)
_SECRET_PARAM = re.compile(rf"\b({_MASKED_WORDS})=[^&\s#\"'<>)\]]+", re.I)
_SECRET_MEMBER = re.compile(rf"(['\"](?:{_MASKED_WORDS})['\"]\s*:\s*)(['\"])(?:(?!\2).)*\2", re.I)
_SECRET_HEADER = re.compile(
    r"\b(authorization|x-api-key|cookie)(['\"]?\s*[:=]\s*['\"]?)[^'\",}\r\n]+", re.I
)
# Terminal escapes whole (CSI, OSC and the two-byte ones), then every other control
# character: C0 (NUL included), DEL, C1.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?|\x9b[0-?]*[ -/]*[@-~]?"
)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
# Invisible characters that reorder or hide what is shown: bidi controls, zero-width ones.
_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
UNTRUSTED_MAX = 300  # characters: enough for a server's reason, not for a flood
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# syslog priorities (sd-daemon.h): what journald stores and `journalctl -p` filters on.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def strip_query(text: str) -> str:
    """Every URL in `text` without its query string (presigned URLs carry their signature there)."""
    return _URL_QUERY.sub(r"\1?…", text)


def scrub_text(text: str) -> str:
    """`text` with URL and path-only queries cut, and the values of secret-named query
    parameters, JSON members and headers masked. For every sink: logs, stderr, ledger."""
    if "?" not in text and "=" not in text and ":" not in text:
        return text  # each pattern needs one of them: most values (names, counts) go here
    text = _ANY_QUERY.sub("?…", strip_query(text))
    text = _SECRET_PARAM.sub(r"\1=…", text)
    text = _SECRET_MEMBER.sub(r"\1\2…\2", text)
    return _SECRET_HEADER.sub(r"\1\2…", text)


def untrusted(text: str | bytes | None, limit: int = UNTRUSTED_MAX) -> str:
    """Text someone else wrote (a server's error, a vendor's message, a name), made fit for
    every sink we have: logs, ledger, `status`, `doctor`, hook environments. Terminal
    escapes and control characters (NUL included) go, line breaks become spaces,
    invisible reordering characters go, secrets are scrubbed, and at most `limit`
    characters are kept. The one function for it: apply it where such text comes in."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text[: limit * 4 + 1024].decode("utf-8", "replace")
    # A bound before the regular expressions: the input may be megabytes.
    text = text[: limit * 4 + 1024]
    text = _ESCAPES.sub("", text)
    text = _CONTROLS.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = scrub_text(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_name(text: str, limit: int = 4096) -> bool:
    """A file name or path a hook may be given as it is: no control character, escape or
    invisible reordering character (what check_name refuses in a vendor's names), no
    longer than `limit`. Collapsing its spaces or scrubbing `password=` out of it would
    name another file."""
    return (
        len(text) <= limit
        and not _CONTROLS.search(text)
        and not _ESCAPES.search(text)
        and not _INVISIBLE.search(text)
    )


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def scrub(event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask secret-named fields and scrub every string (scrub_text), in place."""
    for key, value in event.items():
        if key != "event" and _SECRET_FIELD.search(key) and value not in (None, ""):
            event[key] = "********"
        else:
            event[key] = _scrub_value(value)
    return event


class _Current:
    """Whatever `sys.stdout` (or `sys.stderr`) is when a line is written, not when logging
    was configured: a captured stream (a test's, an in-process `main()` under capture) is
    closed after it, and the next one is another file."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _stream(self) -> TextIO:
        return cast(TextIO, getattr(sys, self._name))

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return self._stream().isatty()

    def fileno(self) -> int:
        return self._stream().fileno()


STDOUT: TextIO = cast(TextIO, _Current("stdout"))
STDERR: TextIO = cast(TextIO, _Current("stderr"))


def under_journald(stream: TextIO) -> bool:
    """True when `stream` is the journal's own stream socket: `$JOURNAL_STREAM` is
    `device:inode` of it (systemd sets it for StandardOutput=/StandardError=journal)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):  # unset, malformed, or no file behind it
        return False


def priority(level: str) -> int:
    """The syslog priority of a level name (unknown names count as info)."""
    return _PRIORITIES.get(level.lower(), 6)


def _json_value(value: Any) -> Any:
    return repr(value)  # what json cannot say (a Path, an exception) is said as its repr


def _json(event: MutableMapping[str, Any]) -> str:
    return json.dumps(event, default=_json_value)


def _journal(event: MutableMapping[str, Any]) -> str:
    """The JSON line, prefixed by its `<priority>` for journald."""
    return f"<{priority(str(event.get('level', 'info')))}>{_json(event)}"


_COLORS = {"debug": "\x1b[2m", "info": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31m"}


def _console(colors: bool) -> Callable[[MutableMapping[str, Any]], str]:
    """A line for a person at a terminal: time, level, event, then `key=value` by key."""

    def render(event: MutableMapping[str, Any]) -> str:
        fields = dict(event)
        stamp, level = fields.pop("timestamp", ""), str(fields.pop("level", ""))
        name, exception = str(fields.pop("event", "")), fields.pop("exception", None)
        shown = f"[{level:<7}]"
        if colors and level in _COLORS:
            shown = f"{_COLORS[level]}{shown}\x1b[0m"
        pairs = " ".join(
            f"{key}={value if isinstance(value, str) else repr(value)}"
            for key, value in sorted(fields.items())
        )
        line = f"{stamp} {shown} {name:<30} {pairs}".rstrip()
        return f"{line}\n{exception}" if exception else line

    return render


def _exception_text(exc_info: Any) -> str | None:
    """The traceback of `exc_info` (an exception, a sys.exc_info() triple, or True for the
    one being handled), as one text; None when there is none."""
    if isinstance(exc_info, BaseException):
        triple: Any = (type(exc_info), exc_info, exc_info.__traceback__)
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        triple = exc_info
    elif exc_info:
        triple = sys.exc_info()
    else:
        return None
    if triple[1] is None:
        return None
    return "".join(traceback.format_exception(*triple)).rstrip("\n")


@dataclass(frozen=True)
class _Sink:
    """Where lines go and how they look: set by configure(), read at every line, so a
    logger made before configure() writes where the process was configured last."""

    stream: TextIO
    render: Callable[[MutableMapping[str, Any]], str]
    level: int


_sink: _Sink | None = None
_write_lock = threading.Lock()  # one line at a time, whole, whichever thread writes it


def _current_sink() -> _Sink:
    if _sink is None:
        configure()
    assert _sink is not None
    return _sink


class Logger:
    """Structured events: `log.info("delivery.skipped", filename=…)` writes one line with the
    bound fields, the call's fields, the event, its level and a UTC timestamp; every value
    scrubbed (see scrub) on the way out."""

    __slots__ = ("_bound",)

    def __init__(self, bound: dict[str, Any]) -> None:
        self._bound = bound

    def bind(self, **fields: Any) -> Logger:
        return Logger({**self._bound, **fields})

    def debug(self, event: str, *args: Any, **fields: Any) -> None:
        self._say(logging.DEBUG, "debug", event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:
        self._say(logging.INFO, "info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:
        self._say(logging.WARNING, "warning", event, args, fields)

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        self._say(logging.ERROR, "error", event, args, fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> None:
        """An error with the traceback of the exception being handled."""
        fields.setdefault("exc_info", True)
        self._say(logging.ERROR, "error", event, args, fields)

    def _say(
        self, level: int, name: str, event: str, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        sink = _current_sink()
        if level < sink.level:
            return
        line: dict[str, Any] = {**self._bound, **fields}
        line["event"] = event % args if args else event
        if "exc_info" in line:
            text = _exception_text(line.pop("exc_info"))
            if text is not None:
                line["exception"] = text
        scrub(line)
        line["level"] = name  # ours, like the timestamp: nothing in them to scrub
        line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        out = sink.render(line) + "\n"
        with _write_lock:
            sink.stream.write(out)
            sink.stream.flush()


_tracing = False  # logging at debug: each IMAP command and HTTP call is timed and said


def tracing() -> bool:
    """Whether `imap.command` and `http.call` lines are wanted (`logging.level: debug`):
    the few calls on the hot path ask this before timing anything."""
    return _tracing


def configure(fmt: str | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Set up logging for the process. `fmt` None: console on a TTY, JSON otherwise.
    Under journald, JSON with priority prefixes whatever `fmt` says."""
    global _tracing, _sink
    _tracing = level == "debug"
    out = STDOUT if stream is None else stream
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    render = (
        _journal
        if under_journald(out)
        else _console(colors=out.isatty())
        if fmt == "console"
        else _json
    )
    _sink = _Sink(out, render, _LEVELS[level])
    _configure_stdlib()


class ScrubFilter(logging.Filter):
    """Rewrites every standard-library record to its scrubbed text (see scrub_text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = scrub_text(message), None
        if record.exc_info:
            record.exc_text = scrub_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _configure_stdlib() -> None:
    """Libraries log through the standard library, to stderr. urllib3 quotes request paths
    with their presigned query (its DEBUG request lines and its WARNING "Retrying ... /f.csv?
    X-Amz-Signature=..."), msal describes token requests: urllib3 and requests speak only at
    ERROR (our own events report what failed), the rest at WARNING, and every record that
    reaches stderr is scrubbed."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_scorefetch", False)]:
        root.removeHandler(old)  # configured again (tests): stderr may be another file now
    handler = logging.StreamHandler(STDERR)
    handler.setFormatter(
        _JournalFormatter()
        if under_journald(STDERR)
        else logging.Formatter("%(name)s: %(message)s")
    )
    handler._scorefetch = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    for other in root.handlers:
        if not any(isinstance(f, ScrubFilter) for f in other.filters):
            other.addFilter(ScrubFilter())
    root.setLevel(logging.WARNING)
    for name, level in (("urllib3", logging.ERROR), ("requests", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    for name in ("imapclient", "msal"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get(**bound: Any) -> Logger:
    """A logger with `bound` context (vendor, filename, uid …)."""
    return Logger(bound)


class _JournalFormatter(logging.Formatter):
    """A library's record as a prefixed JSON line (event `library.log`), for journald."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return _journal_line(
            level, "library.log", {"logger": record.name, "message": record.getMessage()}
        )


def _journal_line(level: str, event: str, fields: dict[str, Any]) -> str:
    body = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": level,
        "event": event,
    } | {k: _scrub_value(v) for k, v in fields.items()}
    return f"<{priority(level)}>{json.dumps(body, default=str)}"


def say(message: str) -> None:
    """A line for the person running `fetch`/`sync`: plain on a terminal or in a file, one
    JSON info line (`command.progress`) when stdout is the journal (a systemd timer)."""
    if under_journald(sys.stdout):
        print(_journal_line("info", "command.progress", {"message": scrub_text(message)}))
    else:
        print(message)


def fatal(event: str, message: str, **fields: Any) -> None:
    """What ends a command, on stderr: plain `scorefetch: message` for a person, or under
    journald one JSON error line (works before and without configure())."""
    message = scrub_text(message)
    if under_journald(sys.stderr):
        print(_journal_line("error", event, {"error": message, **fields}), file=sys.stderr)
    else:
        print(f"scorefetch: {message}", file=sys.stderr)
    sys.stderr.flush()


def journal_excepthook() -> None:
    """Under journald, a crash's traceback becomes one JSON line (`daemon.crashed`) instead
    of thirty plain ones that `jq` chokes on and `journalctl -p err` cannot see."""
    if not under_journald(sys.stderr):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, exc, tb))
        print(
            _journal_line("critical", "daemon.crashed", {"error": scrub_text(text)}),
            file=sys.stderr,
        )

    sys.excepthook = hook
