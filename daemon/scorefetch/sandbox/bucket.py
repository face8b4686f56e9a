"""What the vendor simulators share: two loopback HTTP servers — the vendor's API and
an S3-like bucket — presigned URLs signed and checked server-side, injectable faults,
call counters, and file bytes that can be generated while streaming.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from scorefetch.sandbox.hostile import Hostile, gzipped, write_slowly
from scorefetch.sandbox.ports import Lifecycle

CHUNK = 64 * 1024
_BLOCK = 1 << 20


@functools.lru_cache(maxsize=8)
def _base_block(seed: int) -> bytes:
    return hashlib.shake_256(f"scorefetch-sandbox:{seed}".encode()).digest(_BLOCK)


def generated_chunks(size: int, seed: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
    """The deterministic bytes of a generated file, produced lazily in `chunk`-sized pieces."""
    base, pos = _base_block(seed), 0
    while pos < size:
        shift = (pos // _BLOCK * 2654435761) % _BLOCK  # every MiB block differs
        view = memoryview(base[shift:] + base[:shift])
        end = min(_BLOCK, size - pos)
        for off in range(0, end, chunk):
            yield bytes(view[off : min(off + chunk, end)])
        pos += end


def generated_bytes(size: int, seed: int = 0) -> bytes:
    """All bytes of a generated file (for small sizes)."""
    return b"".join(generated_chunks(size, seed))


def generated_sha256(size: int, seed: int = 0) -> str:
    """Hex sha256 of a generated file, computed without holding it in memory."""
    digest = hashlib.sha256()
    for piece in generated_chunks(size, seed):
        digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class Blob:
    """A file's bytes: given (`data`), or `size` bytes generated from `seed` while streaming."""

    size: int
    data: bytes | None = None
    seed: int = 0

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls(len(data), data)

    def chunks(self) -> Iterator[bytes | memoryview]:
        if self.data is None:
            yield from generated_chunks(self.size, self.seed)
            return
        view = memoryview(self.data)
        for i in range(0, len(view), CHUNK):
            yield view[i : i + CHUNK]

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        return generated_sha256(self.size, self.seed)

    def records(self) -> int:
        """Rows after a header line (generated files: about one per 1000 bytes)."""
        return self.size // 1000 if self.data is None else max(self.data.count(b"\n") - 1, 0)


@dataclass
class BucketStats:
    """Counters of the bucket; `url_issued_at`/`url_used_at` are time.monotonic() keyed by
    signature."""

    downloads_started: int = 0
    downloads_completed: int = 0
    expired_rejections: int = 0
    reused_url_rejections: int = 0
    bad_signature_rejections: int = 0
    auth_failures: int = 0
    api_headers_on_download: int = 0
    url_issued_at: dict[str, float] = field(default_factory=dict)
    url_used_at: dict[str, list[float]] = field(default_factory=dict)

    def max_url_age(self) -> float:
        """The largest issue-to-use delay seen over all URLs (0.0 when none was used)."""
        ages = [u - self.url_issued_at[s] for s, uses in self.url_used_at.items() for u in uses]
        return max(ages, default=0.0)


@dataclass
class _Presigned:
    target: str  # what the simulator serves under this URL (a file name, an export uid)
    issued_at: float  # time.monotonic()
    lifetime: float
    used: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler], sim: Simulator) -> None:
        super().__init__((host, 0), handler)
        self.sim = sim

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up mid-response; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Reads any request's body, then hands it to `_dispatch`."""

    server_version = "sandbox"

    @property
    def sim(self) -> Any:
        return cast(_Server, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header, off by the simulator's `clock_offset_s` (a vendor clock ahead
        is how tests show `scorefetch doctor` a local clock behind)."""
        when = time.time() if timestamp is None else timestamp
        return super().date_time_string(when + self.sim.clock_offset_s)

    def send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def query(self) -> dict[str, str]:
        """The query string, last value of each name."""
        query = urlsplit(self.path).query
        return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def _dispatch(self, raw: bytes) -> None:
        raise NotImplementedError

    def hostile_answer(self, endpoint: str) -> bool:
        """Answer with the redirect or the raw body hostile mode holds for `endpoint`, if any."""
        hostile: Hostile = self.sim.hostile
        if endpoint in hostile.redirect:
            status, location = hostile.redirect[endpoint]
            hostile.requests.append((endpoint, f"redirect {status}"))
            self.send(status, b"", "text/plain", {"Location": location})
            return True
        if endpoint in hostile.answers:
            hostile.requests.append((endpoint, "answer"))
            self.send(200, hostile.answers[endpoint], "application/json")
            return True
        return False

    def do_GET(self) -> None:
        self.started = time.monotonic()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= 1 << 20:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            return self.send_error(400, "Bad Content-Length")
        return self._dispatch(self.rfile.read(length))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET


class JsonHandler(Handler):
    error_content_type = "application/json"
    error_message_format = '{"message": "%(message)s"}'

    def json(self, status: int, obj: object, extra: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json", extra)

    def send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        """As Handler.send, gzip-encoded or trickled when hostile mode says so."""
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


class _S3Handler(Handler):
    error_content_type = "application/xml"
    error_message_format = (
        "<Error><Code>InvalidRequest</Code><Message>%(message)s</Message></Error>"
    )
    _API_HEADERS = ("Authorization", "x-api-key", "Organization")

    def _error(self, status: int, code: str, message: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
            f"{code}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>"
        )
        self.send(status, xml.encode(), "application/xml")

    def _dispatch(self, raw: bytes) -> None:
        sim: Simulator = self.sim
        if self.command != "GET":
            return self._error(405, "MethodNotAllowed", "The specified method is not allowed.")
        if any(name in self.headers for name in self._API_HEADERS):
            sim._count("api_headers_on_download")
            msg = "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            return self._error(400, "InvalidArgument", msg + "Signature query string parameter")
        if self.hostile_answer("download"):
            return None
        path = unquote(urlsplit(self.path).path)
        found = sim._check_download(path, self.query(), self.started)
        if isinstance(found, tuple):
            return self._error(*found)
        hostile: Hostile = sim.hostile
        chunks: Iterable[bytes | memoryview] = found.chunks()
        head = {"Content-Type": sim.content_type, "Content-Length": str(found.size)}
        if hostile.gzip:  # S3 serves an object stored with Content-Encoding: gzip as stored
            stored = gzipped(b"".join(found.chunks()))
            chunks, head["Content-Length"] = [stored], str(len(stored))
            head["Content-Encoding"] = "gzip"
        if hostile.content_length is not None:
            head["Content-Length"] = hostile.content_length
        if hostile.no_content_length:
            del head["Content-Length"]
            self.close_connection = True
        self._send_head(head, hostile.trickle_headers_bps)
        pause = CHUNK / sim.throttle_bps if sim.throttle_bps else 0.0
        for piece in chunks:
            write_slowly(self.wfile, bytes(piece), hostile.trickle_bps)
            if pause:
                time.sleep(pause)  # a slow link: lets tests crash the daemon mid-download
        sim._count("downloads_completed")
        return None

    def _send_head(self, head: dict[str, str], bps: float | None) -> None:
        lines = [f"{self.protocol_version} 200 OK", f"Server: {self.server_version}"]
        lines += [f"{key}: {value}" for key, value in head.items()]
        write_slowly(self.wfile, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), bps)


class Simulator(Lifecycle):
    """A vendor API on one loopback port and its bucket on another.

    Subclasses set `api_handler`, `bucket`, `endpoints` (what `inject` accepts) and
    implement `_blob(target)`; `_presign(key, target)` issues a URL for it."""

    api_handler: ClassVar[type[Handler]]
    bucket: ClassVar[str]
    endpoints: ClassVar[frozenset[str]]
    content_type: ClassVar[str] = "application/octet-stream"
    one_time_urls: ClassVar[bool] = False

    def __init__(self, host: str, url_lifetime: float, stats: BucketStats) -> None:
        self.host = host
        self.url_lifetime = url_lifetime
        self.download_host = host
        self.url_host_override: str | None = None  # a host name the URLs name instead
        self.throttle_bps: float | None = None  # bytes/s the bucket sends; None: full speed
        self.clock_offset_s = 0.0  # added to the time in every `Date` header
        self.hostile = Hostile()  # misbehaviour tests switch on (sandbox/hostile.py)
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._urls: dict[str, _Presigned] = {}
        self._faults: dict[str, list[int]] = {}
        self._stats = stats
        self._servers: list[tuple[_Server, threading.Thread]] = []

    # lifecycle
    def start(self) -> None:
        """Start both servers on free loopback ports."""
        if self._servers:
            return
        for handler in (self.api_handler, _S3Handler):
            server = _Server(self.host, handler, self)
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._servers.append((server, thread))

    def stop(self) -> None:
        """Stop both servers (idempotent)."""
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers.clear()

    def _port(self, index: int) -> int:
        if not self._servers:
            raise RuntimeError("simulator not started")
        return int(self._servers[index][0].server_address[1])

    @property
    def download_port(self) -> int:
        """The port of the S3 stand-in."""
        return self._port(1)

    # faults and stats
    def inject(self, endpoint: str, status: int, count: int = 1) -> None:
        """Answer the next `count` calls to `endpoint` (see `endpoints`) with `status`."""
        if endpoint not in self.endpoints:
            raise ValueError(
                f"unknown endpoint {endpoint!r}; expected one of {sorted(self.endpoints)}"
            )
        with self._lock:
            self._faults.setdefault(endpoint, []).extend([status] * count)

    def _fault(self, endpoint: str) -> int | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            return queue.pop(0) if queue else None

    def clear_faults(self) -> None:
        """Forget every fault injected and not yet answered (the outage is over)."""
        with self._lock:
            self._faults.clear()

    def reset_stats(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._stats = type(self._stats)()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    # presigned URLs
    def _blob(self, target: str) -> Blob | None:
        """The bytes served for `target`, or None when it is gone (called holding the lock)."""
        raise NotImplementedError

    def _sign(self, path: str, expires: str, nonce: str) -> str:
        msg = f"GET\n{path}\n{expires}\n{nonce}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def _presign(self, key: str, target: str) -> str:
        """A URL for `/<bucket>/<key>` serving `target`, dead after `url_lifetime`."""
        now_wall, now, lifetime = time.time(), time.monotonic(), self.url_lifetime
        path, expires = f"/{self.bucket}/{key}", str(int(now_wall + lifetime))
        nonce = secrets.token_urlsafe(24)
        signature = self._sign(path, expires, nonce)
        with self._lock:
            self._urls = {s: p for s, p in self._urls.items() if now - p.issued_at < 3600}
            self._urls[signature] = _Presigned(target, now, lifetime)
            self._stats.url_issued_at[signature] = now
        stamp = datetime.fromtimestamp(now_wall, UTC)
        cred = f"ASIASANDBOX0EXAMPLE/{stamp:%Y%m%d}/us-east-1/s3/aws4_request"
        host = self.url_host_override or self.download_host
        return self.hostile.url(
            f"http://{host}:{self.download_port}/{self.bucket}/{quote(key)}"
            f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={quote(cred, safe='')}"
            f"&X-Amz-Date={stamp:%Y%m%dT%H%M%SZ}&X-Amz-Expires={max(round(lifetime), 0)}"
            f"&X-Amz-SignedHeaders=host&X-Amz-Security-Token={nonce}"
            f"&Expires={expires}&X-Amz-Signature={signature}"
        )

    def _check_download(
        self, path: str, query: dict[str, str], now: float
    ) -> Blob | tuple[int, str, str]:
        """The bytes to stream (using up a one-time URL), or (status, S3 code, message)."""
        fault = self._fault("download")
        if fault is not None:
            code = {500: "InternalError", 503: "SlowDown"}.get(fault, "ServiceUnavailable")
            return fault, code, f"Injected failure ({fault})"
        signature = query.get("X-Amz-Signature", "")
        expected = self._sign(path, query.get("Expires", ""), query.get("X-Amz-Security-Token", ""))
        with self._lock:
            record = self._urls.get(signature)
            if not hmac.compare_digest(signature, expected):
                self._stats.bad_signature_rejections += 1
                return 403, "AccessDenied", "The request signature we calculated does not match"
            self._stats.url_used_at.setdefault(signature, []).append(now)
            if record is None or record.lifetime <= 0 or now - record.issued_at > record.lifetime:
                self._stats.expired_rejections += 1
                return 403, "AccessDenied", "Request has expired"
            if record.used and self.one_time_urls:
                self._stats.reused_url_rejections += 1
                return 403, "AccessDenied", "Access Denied"
            blob = self._blob(record.target)
            if blob is None:
                return 404, "NoSuchKey", "The specified key does not exist."
            record.used = True
            self._stats.downloads_started += 1
            return blob
