"""The vendor simulators with what only tests need: injected faults, a slow link, and a
hostile mode — what a broken, compromised or impersonated vendor could send. The wheel
ships the simulators for `scorefetch demo`; this stays with the tests. It fills the
simulators' extension points (`before`, `bucket_handler`, `api_handler`). Every knob is
off by default; tests switch them on, e.g.

    sim.inject("file", 503, count=2)            # the next two calls answer 503
    sim.clear_faults()                          # the outage is over
    sim.throttle_bps = 1024 * 1024              # the bucket sends 1 MiB a second
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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scorefetch.sandbox.bucket import CHUNK, Blob, BucketHandler, Handler, JsonHandler, Simulator
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.encoura import EncouraSimulator

PIECE = 16  # bytes per write while trickling


@dataclass
class Hostile:
    """Misbehaviour switched on by tests (each test has a simulator of its own)."""

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


class _Misbehaving(Simulator):
    """Faults, a slow link and hostile answers on top of a simulator (listed before it
    among a class's bases)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hostile = Hostile()
        self.throttle_bps: float | None = None  # bytes/s the bucket sends; None: full speed
        self._faults: dict[str, list[int]] = {}
        self._faults_lock = threading.Lock()

    def inject(self, endpoint: str, status: int, count: int = 1) -> None:
        """Answer the next `count` calls to `endpoint` (see `endpoints`) with `status`."""
        if endpoint not in self.endpoints:
            raise ValueError(
                f"unknown endpoint {endpoint!r}; expected one of {sorted(self.endpoints)}"
            )
        with self._faults_lock:
            self._faults.setdefault(endpoint, []).extend([status] * count)

    def clear_faults(self) -> None:
        """Forget every fault injected and not yet answered (the outage is over)."""
        with self._faults_lock:
            self._faults.clear()

    def _fault(self, endpoint: str) -> int | None:
        with self._faults_lock:
            queue = self._faults.get(endpoint)
            return queue.pop(0) if queue else None

    def before(self, endpoint: str, request: Handler) -> bool:
        """A hostile redirect or raw answer first, else an injected fault (an API call
        answered with a fault still counts as a call), else the simulator answers."""
        hostile = self.hostile
        if endpoint in hostile.redirect:
            status, location = hostile.redirect[endpoint]
            request.send(status, b"", "text/plain", {"Location": location})
            return True
        if endpoint in hostile.answers:
            request.send(200, hostile.answers[endpoint], "application/json")
            return True
        fault = self._fault(endpoint)
        if fault is None:
            return False
        if isinstance(request, BucketHandler):
            code = {500: "InternalError", 503: "SlowDown"}.get(fault, "ServiceUnavailable")
            request.s3_error(fault, code, f"Injected failure ({fault})")
        else:
            assert isinstance(request, JsonHandler)
            self._count_call(endpoint)
            request.json(fault, {"message": f"Service error ({fault})"})
        return True

    def _presign(self, key: str, target: str) -> str:
        return self.hostile.url(super()._presign(key, target))


class _HostileBucket(BucketHandler):
    """The bucket's 200 answer as hostile mode and `throttle_bps` shape it."""

    def stream(self, blob: Blob) -> None:
        sim: Any = self.sim
        hostile: Hostile = sim.hostile
        shaped = hostile.gzip or hostile.content_length is not None or hostile.no_content_length
        if not (shaped or hostile.trickle_bps or hostile.trickle_headers_bps or sim.throttle_bps):
            super().stream(blob)  # the simulator's own answer
            return
        chunks: Iterable[bytes | memoryview] = blob.chunks()
        head = {"Content-Type": sim.content_type, "Content-Length": str(blob.size)}
        if hostile.gzip:  # S3 serves an object stored with Content-Encoding: gzip as stored
            stored = gzipped(b"".join(blob.chunks()))
            chunks, head["Content-Length"] = [stored], str(len(stored))
            head["Content-Encoding"] = "gzip"
        if hostile.content_length is not None:
            head["Content-Length"] = hostile.content_length
        if hostile.no_content_length:
            del head["Content-Length"]
            self.close_connection = True
        lines = [f"{self.protocol_version} 200 OK", f"Server: {self.server_version}"]
        lines += [f"{key}: {value}" for key, value in head.items()]
        raw_head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        write_slowly(self.wfile, raw_head, hostile.trickle_headers_bps)
        pause = CHUNK / sim.throttle_bps if sim.throttle_bps else 0.0
        for piece in chunks:
            write_slowly(self.wfile, bytes(piece), hostile.trickle_bps)
            if pause:
                time.sleep(pause)  # a slow link: lets tests crash the daemon mid-download


class _HostileApi(JsonHandler):
    """API answers gzip-encoded or trickled when hostile mode says so (listed before a
    simulator's API handler among a class's bases)."""

    def send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        hostile: Hostile = self.sim.hostile
        if not hostile.api_gzip and not hostile.api_trickle_bps:
            return super().send(status, body, ctype, extra)
        if hostile.api_gzip:
            body, extra = gzipped(body), (extra or {}) | {"Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        write_slowly(self.wfile, body, hostile.api_trickle_bps)
        return None


class _CollegeBoardApi(_HostileApi, CollegeBoardSimulator.api_handler):  # type: ignore[misc]
    pass


class _EncouraApi(_HostileApi, EncouraSimulator.api_handler):  # type: ignore[misc]
    pass


class HostileCollegeBoard(_Misbehaving, CollegeBoardSimulator):
    """CollegeBoardSimulator with `inject`, `clear_faults`, `throttle_bps` and `hostile`."""

    api_handler = _CollegeBoardApi
    bucket_handler = _HostileBucket


class HostileEncoura(_Misbehaving, EncouraSimulator):
    """EncouraSimulator with `inject`, `clear_faults`, `throttle_bps` and `hostile`
    (`listing_patch` too)."""

    api_handler = _EncouraApi
    bucket_handler = _HostileBucket

    def _listing(self, org: str, query: dict[str, str]) -> tuple[int, object]:
        status, body = super()._listing(org, query)
        patch = self.hostile.listing_patch
        if patch and isinstance(body, list):  # a deep copy: the stored records stay true
            body = [record | patch for record in body]
        return status, body
