"""A local stand-in for Encoura's Data Lab File Export API and the S3 bucket behind it.

Two loopback HTTP servers: the JSON API (`/v1/login`, `/v1/refresh-token`,
`/v1/datacenter/exports[/{uid}/download]`) and an S3-like bucket serving
one-time presigned URLs whose HMAC signature and expiry are checked server-side.
"""

from __future__ import annotations

import base64
import copy
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

from scorefetch.sandbox.collegeboard import CHUNK, generated_chunks, generated_sha256
from scorefetch.sandbox.ports import Lifecycle

BUCKET = "nrccua-datalab-export-files-sandbox.us-east-1"
DEFAULT_ORG_UID = "5f0c3a52-8f0e-4c4b-9a7e-2d1e6c0b7a11"
ENDPOINTS = frozenset({"login", "refresh", "list", "download_url", "download"})
STATUSES = ("NotDelivered", "Delivered")
_API_HEADERS = ("x-api-key", "Authorization", "Organization")
_DOWNLOAD_RE = re.compile(r"/v1/datacenter/exports/([^/]+)/download")
_ROUTES = {
    "/v1/login": ("login", "POST"),
    "/v1/refresh-token": ("refresh", "GET"),
    "/v1/datacenter/exports": ("list", "GET"),
}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _ms(when: datetime) -> int:
    """Epoch milliseconds, the vendor document's form for `date` and `createdAt`."""
    return int(when.timestamp() * 1000)


@dataclass
class _Export:
    record: dict[str, Any]  # what the listing shows (status mutates)
    filename: str
    data: bytes | None
    size: int
    seed: int


@dataclass
class _Presigned:
    uid: str
    issued_at: float  # time.monotonic()
    lifetime: float
    used: bool = False


@dataclass
class Stats:
    """Call counters; `url_issued_at`/`url_used_at` are time.monotonic() keyed by signature."""

    login_calls: int = 0
    refresh_calls: int = 0
    list_calls: int = 0
    download_url_calls: int = 0
    downloads_started: int = 0
    downloads_completed: int = 0
    expired_rejections: int = 0
    reused_url_rejections: int = 0
    bad_signature_rejections: int = 0
    auth_failures: int = 0
    api_headers_on_download: int = 0
    download_url_uids: list[str] = field(default_factory=list)
    url_issued_at: dict[str, float] = field(default_factory=dict)
    url_used_at: dict[str, list[float]] = field(default_factory=dict)

    def max_url_age(self) -> float:
        """The largest issue-to-use delay seen over all URLs (0.0 when none was used)."""
        ages = [u - self.url_issued_at[s] for s, uses in self.url_used_at.items() for u in uses]
        return max(ages, default=0.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, host: str, handler: type[BaseHTTPRequestHandler], sim: EncouraSimulator
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
    def sim(self) -> EncouraSimulator:
        return cast(_Server, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None) -> None:
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
        endpoint, method, uid = *_ROUTES.get(url.path, ("", "")), ""
        if match := _DOWNLOAD_RE.fullmatch(url.path):
            endpoint, method, uid = "download_url", "GET", unquote(match[1])
        if not endpoint:
            return self._json(404, {"message": f"Not found: {url.path}"})
        if self.command != method:
            return self._json(405, {"message": "Method not allowed"}, {"Allow": method})
        body: Any = {}
        if endpoint == "login":
            try:
                body = json.loads(raw)
            except ValueError:
                return self._json(400, {"message": "Invalid JSON request body"})
        status, obj = self.sim._api(endpoint, dict(self.headers.items()), query, body, uid)
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
        self._send(status, xml.encode(), "application/xml", None)

    def _dispatch(self, raw: bytes) -> None:
        if self.command != "GET":
            return self._error(405, "MethodNotAllowed", "The specified method is not allowed.")
        if any(name in self.headers for name in _API_HEADERS):
            self.sim._count("api_headers_on_download")
            msg = "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            return self._error(400, "InvalidArgument", msg + "Signature query string parameter")
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        result = self.sim._check_download(unquote(url.path), query, self.started)
        if isinstance(result, tuple):
            return self._error(*result)
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(result.size))
        self.end_headers()
        if result.data is not None:
            view = memoryview(result.data)
            chunks: Iterator[bytes | memoryview] = (
                view[i : i + CHUNK] for i in range(0, len(view), CHUNK)
            )
        else:
            chunks = generated_chunks(result.size, result.seed)
        pause = CHUNK / self.sim.throttle_bps if self.sim.throttle_bps else 0.0
        for piece in chunks:
            self.wfile.write(piece)
            if pause:
                time.sleep(pause)  # a slow link: lets tests crash the daemon mid-download
        self.sim._count("downloads_completed")
        return None


class EncouraSimulator(Lifecycle):
    """Encoura's File Export API plus the S3 bucket its one-time download URLs point at."""

    def __init__(
        self,
        api_key: str = "sandbox-encoura-key",
        username: str = "service-account@example.edu",
        password: str = "sandbox-encoura",
        organizations: list[dict[str, Any]] | None = None,
        token_lifetime: float = 1200.0,
        url_lifetime: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key, self.username, self.password, self.host = api_key, username, password, host
        org = {"uid": DEFAULT_ORG_UID, "name": "Sandbox University", "fice": "001234"}
        self.organizations = organizations or [org | {"stateCode": "NY"}]
        self.token_lifetime, self.url_lifetime = token_lifetime, url_lifetime
        self.user_uid = str(uuid.uuid4())
        self.download_host = host
        self.url_host_override: str | None = None
        self.throttle_bps: float | None = None  # bytes/s the bucket sends; None: full speed
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._exports: dict[str, _Export] = {}
        self._tokens: dict[str, float] = {}  # token -> time.monotonic() expiry
        self._urls: dict[str, _Presigned] = {}
        self._faults: dict[str, list[int]] = {}
        self._logins = 0
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
        """The API root, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{self.host}:{self._port(0)}/v1"

    @property
    def download_port(self) -> int:
        """The port of the S3 stand-in."""
        return self._port(1)

    # content
    def add_export(
        self,
        product_key: str,
        filename: str,
        data: bytes,
        organization_uid: str | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Post an export with the given bytes (status NotDelivered); returns its uid."""
        entry = _Export({}, filename, data, len(data), 0)
        return self._put(entry, product_key, organization_uid, created_at)

    def add_generated_export(
        self,
        product_key: str,
        filename: str,
        size: int,
        seed: int = 0,
        organization_uid: str | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Post an export whose deterministic bytes are generated while streaming."""
        entry = _Export({}, filename, None, size, seed)
        return self._put(entry, product_key, organization_uid, created_at)

    def _put(self, entry: _Export, key: str, org: str | None, at: datetime | None) -> str:
        """Fill in the record the listing shows, shaped like the vendor document's example."""
        if at is not None and at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        org = org or str(self.organizations[0]["uid"])
        fice = next((o.get("fice", "") for o in self.organizations if o["uid"] == org), "")
        uid, stamp = str(uuid.uuid4()), _ms(at or datetime.now(UTC))
        data, quantity = entry.data, entry.size // 1000
        if data is not None:
            quantity = max(data.count(b"\n") - 1, 0)
        created_by = {"uid": self.user_uid, "name": "", "type": ""}
        record = entry.record
        record |= {"uid": uid, "fice": fice, "organizationUid": org, "productKey": key}
        record |= {"purchaseItems": [], "status": "NotDelivered", "listGenerated": True}
        record |= {"listPath": str(uuid.uuid4()), "quantity": quantity, "costInPoints": 0}
        record |= {"costInDollars": 0, "date": stamp, "deliveries": []}
        record |= {"created": {"createdBy": created_by, "createdAt": stamp}}
        record |= {"isExpired": False, "isContinuous": False}
        with self._lock:
            self._exports[uid] = entry
        return uid

    def export(self, uid: str) -> dict[str, Any]:
        """A copy of an export's current record (status etc.), as the listing shows it."""
        with self._lock:
            return copy.deepcopy(self._exports[uid].record)

    def sha256_of(self, uid: str) -> str:
        """Hex sha256 of an export's bytes."""
        with self._lock:
            entry = self._exports[uid]
        if entry.data is not None:
            return hashlib.sha256(entry.data).hexdigest()
        return generated_sha256(entry.size, entry.seed)

    # faults, tokens and stats
    def inject(self, endpoint: str, status: int, count: int = 1) -> None:
        """Answer the next `count` calls to endpoint (see ENDPOINTS) with `status`."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)}")
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

    def expire_tokens(self) -> None:
        """Make every session token issued so far expire now."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

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

    def _issue_token(self) -> str:
        now, wall = time.monotonic(), int(time.time())
        header = _b64(b'{"alg":"HS256","typ":"JWT"}')
        claims = {"uid": self.user_uid, "iat": wall, "exp": wall + int(self.token_lifetime)}
        payload = _b64(json.dumps(claims | {"jti": secrets.token_hex(8)}).encode())
        signature = _b64(hmac.new(self._secret, f"{header}.{payload}".encode(), "sha256").digest())
        token = f"{header}.{payload}.{signature}"
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.token_lifetime
        return token

    # API logic
    def _api(
        self, endpoint: str, headers: dict[str, str], query: dict[str, str], body: Any, uid: str
    ) -> tuple[int, object]:
        self._count(f"{endpoint}_calls")
        fault = self._fault(endpoint)
        if fault is not None:
            return fault, {"message": f"Service error ({fault})"}
        headers = {k.lower(): v for k, v in headers.items()}
        if not hmac.compare_digest(headers.get("x-api-key", "").encode(), self.api_key.encode()):
            self._count("auth_failures")
            return 403, {"message": "Forbidden"}
        if endpoint == "login":
            return self._login(body)
        auth = headers.get("authorization", "")
        with self._lock:
            expiry = self._tokens.get(auth[4:]) if auth.startswith("JWT ") else None
        if expiry is None or time.monotonic() >= expiry:
            self._count("auth_failures")
            return 401, {"message": "Unauthorized: invalid or expired session token"}
        if endpoint == "refresh":
            return 200, {"sessionToken": self._issue_token()}
        org = headers.get("organization", "")
        if org not in {o["uid"] for o in self.organizations}:
            self._count("auth_failures")
            return 403, {"message": "Organization header missing or not one of the user's"}
        if endpoint == "list":
            return self._listing(org, query)
        return self._download_url(org, uid)

    def _login(self, body: Any) -> tuple[int, object]:
        if not isinstance(body, dict) or body.get("acceptedTerms") is not True:
            return 400, {"message": "acceptedTerms must be true"}
        name = body.get("userName", body.get("email"))
        given = f"{name}\0{body.get('password')}".encode()
        if not hmac.compare_digest(given, f"{self.username}\0{self.password}".encode()):
            self._count("auth_failures")
            return 401, {"message": "Invalid username or password"}
        token = self._issue_token()
        with self._lock:
            self._logins += 1
            quoted = self._logins % 2 == 0  # seen in the wild: '"eyJ..."'; clients must strip
        user = {
            "uid": self.user_uid,
            "type": "User",
            "userName": self.username,
            "firstName": "Sandbox",
            "lastName": "Service Account",
            "email": self.username,
            "status": "Active",
            "organizations": copy.deepcopy(self.organizations),
            "attributes": [],
        }
        return 200, {"user": user, "sessionToken": f'"{token}"' if quoted else token}

    def _listing(self, org: str, query: dict[str, str]) -> tuple[int, object]:
        # Parameter names are case-sensitive: `productkey` or `Status` are ignored. An
        # unknown productKey is a filter that matches nothing, so 200 [] (the vendor's
        # list of keys grows over time and its own curl example uses "score reporter");
        # `status` is a closed enum, so an unknown value is a 400.
        key, status = query.get("productKey") or None, query.get("status") or None
        if status is not None and status not in STATUSES:
            return 400, {"message": f"Invalid status '{status}': expected one of {STATUSES}"}
        with self._lock:
            rows: list[dict[str, Any]] = [
                e.record
                for e in sorted(self._exports.values(), key=lambda e: e.record["date"])
                if e.record["organizationUid"] == org
                and key in (None, e.record["productKey"])
                and status in (None, e.record["status"])
            ]
            body = copy.deepcopy(rows)
            for record in rows:
                record["status"] = "Delivered"  # listing is what marks an export delivered
        return 200, body

    def _download_url(self, org: str, uid: str) -> tuple[int, object]:
        with self._lock:
            self._stats.download_url_uids.append(uid)
            entry = self._exports.get(uid)
        if entry is None or entry.record["organizationUid"] != org:
            return 404, {"message": f"Export not found: {uid}"}
        return 200, {"downloadUrl": self._presign(uid, entry, org)}

    # presigned URLs
    def _sign(self, path: str, expires: str, nonce: str) -> str:
        msg = f"GET\n{path}\n{expires}\n{nonce}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def _presign(self, uid: str, entry: _Export, org: str) -> str:
        now_wall, now, lifetime = time.time(), time.monotonic(), self.url_lifetime
        key = f"{org}/{entry.record['productKey']}/{entry.filename}"
        path, expires = f"/{BUCKET}/{key}", str(int(now_wall + lifetime))
        nonce = secrets.token_urlsafe(24)
        signature = self._sign(path, expires, nonce)
        with self._lock:
            self._urls = {s: p for s, p in self._urls.items() if now - p.issued_at < 3600}
            self._urls[signature] = _Presigned(uid, now, lifetime)
            self._stats.url_issued_at[signature] = now
        stamp = datetime.fromtimestamp(now_wall, UTC)
        cred = f"ASIASANDBOX0EXAMPLE/{stamp:%Y%m%d}/us-east-1/s3/aws4_request"
        host = self.url_host_override or self.download_host
        return (
            f"http://{host}:{self.download_port}/{BUCKET}/{quote(key)}"
            f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={quote(cred, safe='')}"
            f"&X-Amz-Date={stamp:%Y%m%dT%H%M%SZ}&X-Amz-Expires={max(round(lifetime), 0)}"
            f"&X-Amz-SignedHeaders=host&X-Amz-Security-Token={nonce}"
            f"&Expires={expires}&X-Amz-Signature={signature}"
        )

    def _check_download(
        self, path: str, query: dict[str, str], now: float
    ) -> _Export | tuple[int, str, str]:
        """The export to stream (consuming its one-time URL), or (status, S3 code, message)."""
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
            if record.used:
                self._stats.reused_url_rejections += 1
                return 403, "AccessDenied", "Access Denied"
            entry = self._exports.get(record.uid)
            if entry is None:
                return 404, "NoSuchKey", "The specified key does not exist."
            record.used = True
            self._stats.downloads_started += 1
            return entry
