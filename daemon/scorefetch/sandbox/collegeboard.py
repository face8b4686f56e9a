"""A local stand-in for College Board's score download web service and its S3 bucket.

Two loopback HTTP servers: the JSON API (`/pascoredwnld/...`) and an S3-like
bucket serving presigned URLs whose HMAC signature and expiry are checked
server-side, so a URL really dies `url_lifetime` seconds after it was issued.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from scorefetch.sandbox.ports import Lifecycle

CHUNK = 64 * 1024
BUCKET = "cb-score-downloads"
TOKEN_LIFETIME = 3600.0
ENDPOINTS = frozenset({"login", "file", "list", "download"})
_BLOCK = 1 << 20
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}")
_DATE_FMT = "%Y-%m-%dT%H:%M:%S%z"
_ROUTES = {
    "/pascoredwnld/login": ("login", {"POST"}),
    "/pascoredwnld/file": ("file", {"GET", "POST"}),
    "/pascoredwnld/files/list": ("list", {"POST"}),
}


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
class PostedFile:
    """A file as the listing reports it."""

    name: str
    size: int
    posted_at: datetime  # aware UTC


@dataclass(frozen=True)
class _Entry:
    file: PostedFile
    data: bytes | None
    seed: int
    records: int


@dataclass(frozen=True)
class _Presigned:
    name: str
    issued_at: float  # time.monotonic()
    lifetime: float


@dataclass
class Stats:
    """Call counters; `url_issued_at`/`url_used_at` are time.monotonic() keyed by signature."""

    login_calls: int = 0
    file_url_calls: int = 0
    list_calls: int = 0
    downloads_started: int = 0
    downloads_completed: int = 0
    expired_rejections: int = 0
    bad_signature_rejections: int = 0
    auth_failures: int = 0
    file_url_names: list[str] = field(default_factory=list)
    url_issued_at: dict[str, float] = field(default_factory=dict)
    url_used_at: dict[str, list[float]] = field(default_factory=dict)

    def max_url_age(self) -> float:
        """The largest issue-to-use delay seen over all URLs (0.0 when none was used)."""
        ages = [u - self.url_issued_at[s] for s, uses in self.url_used_at.items() for u in uses]
        return max(ages, default=0.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str, handler: type[BaseHTTPRequestHandler], sim: CollegeBoardSimulator
    ) -> None:
        super().__init__((host, 0), handler)
        self.sim = sim

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up mid-response; report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "sandbox"

    @property
    def sim(self) -> CollegeBoardSimulator:
        return cast(_Server, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""

    def _send(
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

    def _dispatch(self, raw: bytes) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        """Every method reads the request body, then goes through `_dispatch`."""
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


class _ApiHandler(_Handler):
    error_content_type = "application/json"
    error_message_format = '{"message": "%(message)s"}'

    def _json(self, status: int, obj: object, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _dispatch(self, raw: bytes) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = _ROUTES.get(url.path)
        if route is None:
            return self._json(404, {"message": f"Not found: {url.path}"})
        endpoint, methods = route
        if self.command not in methods:
            return self._json(405, {"message": "Method not allowed"}, {"Allow": ", ".join(methods)})
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError:
            return self._json(400, {"message": "Invalid JSON request body"})
        if "tok" in query:
            body.setdefault("token", query["tok"])
        status, obj = self.sim._api(endpoint, query, body)
        return self._json(status, obj)


class _S3Handler(_Handler):
    error_content_type = "application/xml"
    error_message_format = (
        "<Error><Code>InvalidRequest</Code><Message>%(message)s</Message></Error>"
    )

    def _error(self, status: int, code: str, message: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
            f"{code}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>"
        )
        self._send(status, xml.encode(), "application/xml")

    def _dispatch(self, raw: bytes) -> None:
        now = self.started
        if self.command != "GET":
            return self._error(405, "MethodNotAllowed", "The specified method is not allowed.")
        if "Authorization" in self.headers or "x-api-key" in self.headers:
            msg = "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            return self._error(400, "InvalidArgument", msg + "Signature query string parameter")
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        result = self.sim._check_download(self.command, unquote(url.path), query, now)
        if isinstance(result, tuple):
            return self._error(*result)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(result.file.size))
        self.end_headers()
        if result.data is not None:
            view = memoryview(result.data)
            chunks: Iterator[bytes | memoryview] = (
                view[i : i + CHUNK] for i in range(0, len(view), CHUNK)
            )
        else:
            chunks = generated_chunks(result.file.size, result.seed)
        pause = CHUNK / self.sim.throttle_bps if self.sim.throttle_bps else 0.0
        for piece in chunks:
            self.wfile.write(piece)
            if pause:
                time.sleep(pause)  # a slow link: lets tests crash the daemon mid-download
        self.sim._count("downloads_completed")
        return None


class CollegeBoardSimulator(Lifecycle):
    """College Board's score download API plus the S3 bucket its presigned URLs point at."""

    def __init__(
        self,
        username: str = "scores@example.edu",
        password: str = "sandbox-collegeboard",
        url_lifetime: float = 15.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.username, self.password, self.host = username, password, host
        self.url_lifetime = url_lifetime
        self.token_lifetime = TOKEN_LIFETIME
        self.download_host = host
        self.url_host_override: str | None = None
        self.throttle_bps: float | None = (
            None  # bytes per second the bucket sends, None: as fast as it can
        )
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._files: dict[str, _Entry] = {}
        self._tokens: dict[str, float] = {}
        self._urls: dict[str, _Presigned] = {}
        self._faults: dict[str, list[int]] = {}
        self._stats = Stats()
        self._servers: list[tuple[_Server, threading.Thread]] = []

    # lifecycle
    def start(self) -> None:
        """Start both servers on free loopback ports."""
        if self._servers:
            return
        for handler in (_ApiHandler, _S3Handler):
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
    def base_url(self) -> str:
        """The API root, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self._port(0)}"

    @property
    def download_port(self) -> int:
        """The port of the S3 stand-in."""
        return self._port(1)

    # content
    def publish(self, name: str, data: bytes, posted_at: datetime | None = None) -> None:
        """Post a file with the given bytes (posted_at must be timezone-aware)."""
        self._put(name, len(data), posted_at, data, 0)

    def publish_generated(
        self, name: str, size: int, seed: int = 0, posted_at: datetime | None = None
    ) -> None:
        """Post a file whose deterministic bytes are generated while streaming."""
        self._put(name, size, posted_at, None, seed)

    def _put(
        self, name: str, size: int, at: datetime | None, data: bytes | None, seed: int
    ) -> None:
        if at is not None and at.utcoffset() is None:
            raise ValueError("posted_at must be timezone-aware")
        when = (at or datetime.now(UTC)).astimezone(UTC)
        with self._lock:
            records = size // 1000 if data is None else max(data.count(b"\n") - 1, 0)
            self._files[name] = _Entry(PostedFile(name, size, when), data, seed, records)

    def unpublish(self, name: str) -> None:
        """Remove a file (later URL requests get 404, issued URLs NoSuchKey)."""
        with self._lock:
            self._files.pop(name, None)

    def files(self) -> list[PostedFile]:
        """The posted files, oldest first."""
        with self._lock:
            return sorted((e.file for e in self._files.values()), key=lambda f: f.posted_at)

    def sha256_of(self, name: str) -> str:
        """Hex sha256 of a posted file's bytes."""
        with self._lock:
            entry = self._files[name]
        if entry.data is not None:
            return hashlib.sha256(entry.data).hexdigest()
        return generated_sha256(entry.file.size, entry.seed)

    # faults and stats
    def inject(self, endpoint: str, status: int, count: int = 1) -> None:
        """Answer the next `count` calls to endpoint (file/list/login/download) with `status`."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)}")
        with self._lock:
            self._faults.setdefault(endpoint, []).extend([status] * count)

    def _fault(self, endpoint: str) -> int | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            return queue.pop(0) if queue else None

    @property
    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._stats = Stats()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    # API logic
    def _authorize(self, body: dict[str, Any]) -> str | None:
        """None when the body carries a live token or the right credentials, else a message."""
        now = time.monotonic()
        with self._lock:
            if "token" in body:
                expiry = self._tokens.get(str(body["token"]))
                if expiry is not None and now < expiry:
                    return None
                message = "Invalid or expired token"
            elif hmac.compare_digest(
                f"{body.get('username')}\0{body.get('password')}".encode(),
                f"{self.username}\0{self.password}".encode(),
            ):
                return None
            else:
                message = "Invalid username or password"
            self._stats.auth_failures += 1
            return message

    def _api(
        self, endpoint: str, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, object]:
        self._count({"login": "login_calls", "file": "file_url_calls"}.get(endpoint, "list_calls"))
        fault = self._fault(endpoint)
        if fault is not None:
            return fault, {"message": f"Service error ({fault})"}
        if endpoint == "login":
            body.pop("token", None)
        denied = self._authorize(body)
        if denied is not None:
            return 401, {"message": denied}
        if endpoint == "login":
            token = str(uuid.uuid4()).upper()
            now = time.monotonic()
            with self._lock:
                self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
                self._tokens[token] = now + self.token_lifetime
            return 200, {"token": token}
        if endpoint == "file":
            return self._file_url(query.get("filename", ""))
        return self._listing(query.get("fromDate"))

    def _file_url(self, name: str) -> tuple[int, object]:
        if not name:
            return 400, {"message": "Missing required parameter: filename"}
        with self._lock:
            self._stats.file_url_names.append(name)
            entry = self._files.get(name)
        if entry is None:
            return 404, {"message": f"File not found: {name}"}
        return 200, {
            "fileUrl": self._presign(name),
            "filePath": name,
            "fileName": name,
            "fileSize": entry.file.size,
        }

    def _listing(self, from_date: str | None) -> tuple[int, object]:
        since = None
        if from_date is not None:
            try:
                if not _DATE_RE.fullmatch(from_date):
                    raise ValueError(from_date)
                since = datetime.strptime(from_date, _DATE_FMT)
            except ValueError:
                msg = f"Invalid fromDate '{from_date}': expected yyyy-MM-ddTHH:mm:ss±hhmm"
                return 400, {"message": msg}
        with self._lock:
            entries = sorted(self._files.values(), key=lambda e: e.file.posted_at)
        rows = [
            {
                "fileName": e.file.name,
                "fileSize": e.file.size,
                "deliveryDate": e.file.posted_at.strftime(_DATE_FMT),
                "recordCount": e.records,
                "fileType": "Scores File",
                "assessment": "SAT",
            }
            for e in entries
            if since is None or e.file.posted_at >= since
        ]
        return 200, {"files": rows or None}

    # presigned URLs
    def _sign(self, method: str, path: str, expires: str, nonce: str) -> str:
        msg = f"{method}\n{path}\n{expires}\n{nonce}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def _presign(self, name: str) -> str:
        now_wall, now, lifetime = time.time(), time.monotonic(), self.url_lifetime
        path, expires = f"/{BUCKET}/{name}", str(int(now_wall + lifetime))
        nonce = secrets.token_urlsafe(24)
        signature = self._sign("GET", path, expires, nonce)
        with self._lock:
            self._urls = {s: p for s, p in self._urls.items() if now - p.issued_at < 3600}
            self._urls[signature] = _Presigned(name, now, lifetime)
            self._stats.url_issued_at[signature] = now
        stamp = datetime.fromtimestamp(now_wall, UTC)
        cred = f"ASIASANDBOX0EXAMPLE/{stamp:%Y%m%d}/us-east-1/s3/aws4_request"
        host = self.url_host_override or self.download_host
        return (
            f"http://{host}:{self.download_port}/{BUCKET}/{quote(name, safe='')}"
            f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={quote(cred, safe='')}"
            f"&X-Amz-Date={stamp:%Y%m%dT%H%M%SZ}&X-Amz-Expires={max(round(lifetime), 0)}"
            f"&X-Amz-SignedHeaders=host&X-Amz-Security-Token={nonce}"
            f"&Expires={expires}&X-Amz-Signature={signature}"
        )

    def _check_download(
        self, method: str, path: str, query: dict[str, str], now: float
    ) -> _Entry | tuple[int, str, str]:
        """The entry to stream, or (status, S3 code, message)."""
        fault = self._fault("download")
        if fault is not None:
            code = {500: "InternalError", 503: "SlowDown"}.get(fault, "ServiceUnavailable")
            return fault, code, f"Injected failure ({fault})"
        signature = query.get("X-Amz-Signature", "")
        expected = self._sign(
            method, path, query.get("Expires", ""), query.get("X-Amz-Security-Token", "")
        )
        with self._lock:
            record = self._urls.get(signature)
            if not hmac.compare_digest(signature, expected):
                self._stats.bad_signature_rejections += 1
                return 403, "AccessDenied", "The request signature we calculated does not match"
            self._stats.url_used_at.setdefault(signature, []).append(now)
            if record is None or record.lifetime <= 0 or now - record.issued_at > record.lifetime:
                self._stats.expired_rejections += 1
                return 403, "AccessDenied", "Request has expired"
            entry = self._files.get(record.name)
            if entry is None:
                return 404, "NoSuchKey", "The specified key does not exist."
            self._stats.downloads_started += 1
            return entry
