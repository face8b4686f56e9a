"""A local stand-in for College Board's score download web service and its S3 bucket.

Two loopback HTTP servers: the JSON API (`/pascoredwnld/...`) and an S3-like
bucket serving presigned URLs whose HMAC signature and expiry are checked
server-side, so a URL really dies `url_lifetime` seconds after it was issued.
`dialect` switches between readings the vendor leaves open (sandbox/dialects.py);
`throttle` queues 429 answers with a `Retry-After`.
"""

from __future__ import annotations

import copy
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from scorefetch.sandbox.bucket import (
    CHUNK,
    Blob,
    BucketStats,
    JsonHandler,
    Simulator,
    generated_bytes,
    generated_chunks,
    generated_sha256,
)
from scorefetch.sandbox.dialects import CollegeBoardDialect, Throttle

__all__ = [
    "CHUNK",
    "CollegeBoardSimulator",
    "PostedFile",
    "Stats",
    "generated_bytes",
    "generated_chunks",
    "generated_sha256",
]

TOKEN_LIFETIME = 3600.0
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}")
_DATE_FMT = "%Y-%m-%dT%H:%M:%S%z"
_ROUTES = {
    "/pascoredwnld/login": ("login", {"POST"}),
    "/pascoredwnld/file": ("file", {"GET", "POST"}),
    "/pascoredwnld/files/list": ("list", {"POST"}),
}


@dataclass(frozen=True)
class PostedFile:
    """A file as the listing reports it."""

    name: str
    size: int
    posted_at: datetime  # aware UTC


@dataclass(frozen=True)
class _Entry:
    file: PostedFile
    blob: Blob
    file_type: str = "Scores File"


@dataclass
class Stats(BucketStats):
    """Call counters of the API and the bucket."""

    login_calls: int = 0
    file_url_calls: int = 0
    list_calls: int = 0
    file_url_names: list[str] = field(default_factory=list)


class _ApiHandler(JsonHandler):
    def _dispatch(self, raw: bytes) -> None:
        url, query = urlsplit(self.path), self.query()
        route = _ROUTES.get(url.path)
        if route is None:
            return self.json(404, {"message": f"Not found: {url.path}"})
        endpoint, methods = route
        if self.sim.before(endpoint, self):
            return None
        if (wait := self.sim.throttle.next(endpoint)) is not None:
            return self.json(429, {"message": "Too Many Requests"}, {"Retry-After": wait})
        if self.command not in methods:
            return self.json(405, {"message": "Method not allowed"}, {"Allow": ", ".join(methods)})
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError:
            return self.json(400, {"message": "Invalid JSON request body"})
        if "tok" in query:
            body.setdefault("token", query["tok"])
        status, obj = self.sim._api(endpoint, query, body)
        return self.json(status, obj)


class CollegeBoardSimulator(Simulator):
    """College Board's score download API plus the S3 bucket its presigned URLs point at."""

    api_handler = _ApiHandler
    bucket = "cb-score-downloads"
    endpoints = frozenset({"login", "file", "list", "download"})
    _stats: Stats

    def __init__(
        self,
        username: str = "scores@example.edu",
        password: str = "sandbox-collegeboard",
        url_lifetime: float = 15.0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host, url_lifetime, Stats())
        self.username, self.password = username, password
        self.token_lifetime = TOKEN_LIFETIME
        self._files: dict[str, _Entry] = {}
        self._tokens: dict[str, float] = {}
        self._posted = 0
        self.dialect = CollegeBoardDialect()
        self.throttle = Throttle()

    @property
    def base_url(self) -> str:
        """The API root, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self._port(0)}"

    @property
    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)

    # content
    def publish(self, name: str, data: bytes, posted_at: datetime | None = None) -> None:
        """Post a file with the given bytes (posted_at must be timezone-aware)."""
        self._put(name, Blob.of(data), posted_at)

    def publish_generated(
        self, name: str, size: int, seed: int = 0, posted_at: datetime | None = None
    ) -> None:
        """Post a file whose deterministic bytes are generated while streaming."""
        self._put(name, Blob(size, None, seed), posted_at)

    def _put(self, name: str, blob: Blob, at: datetime | None) -> None:
        if at is not None and at.utcoffset() is None:
            raise ValueError("posted_at must be timezone-aware")
        when = (at or datetime.now(UTC)).astimezone(UTC)
        every = self.dialect.other_type_every
        with self._lock:
            self._posted += 1
            other = bool(every) and self._posted % every == 0
            file_type = "Essay File" if other else "Scores File"
            self._files[name] = _Entry(PostedFile(name, blob.size, when), blob, file_type)

    def with_dialect(self, **switches: Any) -> CollegeBoardSimulator:
        """Switch this simulator to another reading (see CollegeBoardDialect); returns it."""
        self.dialect = replace(self.dialect, **switches)
        return self

    def expire_tokens(self) -> None:
        """Make every token issued so far expire now."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

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
        return entry.blob.sha256()

    def _blob(self, target: str) -> Blob | None:
        entry = self._files.get(target)
        return entry.blob if entry else None

    # API logic
    def _count_call(self, endpoint: str) -> None:
        self._count({"login": "login_calls", "file": "file_url_calls"}.get(endpoint, "list_calls"))

    def _authorize(self, body: dict[str, Any]) -> tuple[int, str] | None:
        """None when the body carries a live token or the right credentials, else the
        status and message of the refusal."""
        now = time.monotonic()
        status = 401
        with self._lock:
            if "token" in body:
                expiry = self._tokens.get(str(body["token"]))
                if expiry is not None and now < expiry:
                    return None
                message = "Invalid or expired token"
                if expiry is not None:
                    status = self.dialect.expired_token_status
            elif hmac.compare_digest(
                f"{body.get('username')}\0{body.get('password')}".encode(),
                f"{self.username}\0{self.password}".encode(),
            ):
                return None
            else:
                message = "Invalid username or password"
            self._stats.auth_failures += 1
            return status, message

    def _api(
        self, endpoint: str, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, object]:
        self._count_call(endpoint)
        if endpoint == "login":
            body.pop("token", None)
        denied = self._authorize(body)
        if denied is not None:
            return denied[0], {"message": denied[1]}
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
            "fileUrl": self._presign(name, name),
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
        dialect = self.dialect
        rows = [
            {
                "fileName": e.file.name,
                "fileSize": max(e.file.size + dialect.size_off, 0),
                "deliveryDate": e.file.posted_at.strftime(_DATE_FMT),
                "recordCount": _count(
                    e.blob.records(header=e.file.name.endswith(".csv")), dialect.records_off
                ),
                "fileType": e.file_type,
                "assessment": "SAT",
            }
            for e in entries
            if since is None or e.file.posted_at >= since
        ]
        return 200, {"files": rows or None}


def _count(records: int | None, off: int) -> int | None:
    """The listing's recordCount: the real one shifted by the dialect's `records_off`."""
    return None if records is None else max(records + off, 0)
