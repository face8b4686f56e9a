"""Logging, configured once in main(): JSON lines under systemd, a console renderer on a TTY.

The event names are an interface (README: "Log events"). A last processor
scrubs what must never be logged, as a net under the callers' own care:
secret-named fields are masked and URLs lose their query strings.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_FIELD = re.compile(
    r"pass(word)?|secret|token|api_?key|authorization|cookie|private_?key|certificate|assertion",
    re.I,
)
_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s#\"']*", re.I)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def strip_query(text: str) -> str:
    """Every URL in `text` without its query string (presigned URLs carry their signature there)."""
    return _URL_QUERY.sub(r"\1?…", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return strip_query(value)
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-named fields, strip URL queries everywhere."""
    for key, value in event.items():
        if key != "event" and _SECRET_FIELD.search(key) and value not in (None, ""):
            event[key] = "********"
        else:
            event[key] = _scrub_value(value)
    return event


def configure(fmt: str | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. `fmt` None: console on a TTY, JSON otherwise."""
    out = stream or sys.stdout
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library; urllib3 at DEBUG prints request lines
    # and msal describes token requests
    # (presigned queries included), so keep them at WARNING whatever our own level is.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    for name in ("urllib3", "imapclient", "requests", "msal"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get(**bound: Any) -> Any:
    """A logger with `bound` context (vendor, filename, uid …)."""
    return structlog.get_logger("scorefetch").bind(**bound)
