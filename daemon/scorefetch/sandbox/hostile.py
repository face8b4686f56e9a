"""Hostile mode for the vendor simulators: what a broken, compromised or impersonated
vendor could send. Every knob is off by default; tests switch them on, e.g.

    sim.hostile.redirect["file"] = (307, "http://127.0.0.1:9999/steal")
    sim.hostile.gzip = True                     # the bucket serves Content-Encoding: gzip
    sim.hostile.trickle_bps = 20                # the bucket sends 20 bytes a second
    sim.hostile.answers["list"] = b'{"files": 1}'   # any bytes as a 200 answer
    sim.hostile.rewrite_url = lambda url: url.replace("127.0.0.1", "127.0.0.1\\\\.s3...")
    sim.hostile.listing_patch = {"productKey": "../../escaped"}   # Encoura listings lie

Endpoint names are the simulator's `endpoints` (`download` is the bucket).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

PIECE = 16  # bytes per write while trickling


@dataclass
class Hostile:
    """Misbehaviour switched on by tests; `reset()` turns it all off again."""

    redirect: dict[str, tuple[int, str]] = field(default_factory=dict)  # endpoint: status, URL
    answers: dict[str, bytes] = field(default_factory=dict)  # endpoint: raw 200 body
    api_gzip: bool = False  # API answers sent gzip-encoded (whatever the client accepts)
    api_trickle_bps: float | None = None  # API answers sent this slowly
    gzip: bool = False  # the bucket serves the object gzip-encoded (S3 Content-Encoding)
    trickle_bps: float | None = None  # the bucket sends bodies this slowly
    trickle_headers_bps: float | None = None  # the bucket sends its head this slowly
    content_length: str | None = None  # the bucket's Content-Length header, as given
    no_content_length: bool = False  # the bucket's body ends when the connection closes
    rewrite_url: Callable[[str], str] | None = None  # applied to every presigned URL issued
    listing_patch: dict[str, Any] = field(default_factory=dict)  # merged into listed records
    requests: list[tuple[str, str]] = field(default_factory=list)  # (endpoint, how answered)

    def reset(self) -> None:
        """Every knob off, the record of hostile answers emptied."""
        self.__init__()  # type: ignore[misc]

    def url(self, url: str) -> str:
        return self.rewrite_url(url) if self.rewrite_url else url


def gzipped(data: bytes) -> bytes:
    """`data` gzip-compressed, the same bytes every time (no timestamp)."""
    return gzip.compress(data, mtime=0)


class _Out(Protocol):
    def write(self, data: bytes, /) -> int | None: ...
    def flush(self) -> None: ...


def write_slowly(out: _Out, data: bytes, bps: float | None) -> None:
    """Write `data` in PIECE-byte writes at about `bps` bytes a second (at once when None)."""
    if not bps:
        out.write(data)
        return
    for i in range(0, len(data), PIECE):
        out.write(data[i : i + PIECE])
        out.flush()
        time.sleep(PIECE / bps)
