"""A local stand-in for Encoura's Data Lab File Export API and the S3 bucket behind it.

Two loopback HTTP servers: the JSON API (`/v1/login`, `/v1/refresh-token`,
`/v1/datacenter/exports[/{uid}/download]`) and an S3-like bucket serving
one-time presigned URLs whose HMAC signature and expiry are checked server-side.
`dialect` switches between the readings the vendor's document leaves open
(sandbox/dialects.py); `throttle` queues 429 answers with a `Retry-After`.
"""

from __future__ import annotations

import base64
import copy
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from scorefetch.sandbox.bucket import Blob, BucketStats, JsonHandler, Simulator
from scorefetch.sandbox.dialects import EncouraDialect, Throttle

DEFAULT_ORG_UID = "5f0c3a52-8f0e-4c4b-9a7e-2d1e6c0b7a11"
STATUSES = ("NotDelivered", "Delivered")
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
    blob: Blob
    not_generated: int = 0  # URL requests still answered 404 (`listGenerated: false`)


@dataclass
class Stats(BucketStats):
    """Call counters of the API and the bucket."""

    login_calls: int = 0
    refresh_calls: int = 0
    list_calls: int = 0
    download_url_calls: int = 0
    download_url_uids: list[str] = field(default_factory=list)
    list_queries: list[dict[str, str]] = field(default_factory=list)


class _ApiHandler(JsonHandler):
    def _dispatch(self, raw: bytes) -> None:
        url, query = urlsplit(self.path), self.query()
        endpoint, method, uid = *_ROUTES.get(url.path, ("", "")), ""
        if match := _DOWNLOAD_RE.fullmatch(url.path):
            endpoint, method, uid = "download_url", "GET", unquote(match[1])
        if not endpoint:
            return self.json(404, {"message": f"Not found: {url.path}"})
        if self.sim.before(endpoint, self):
            return None
        if (wait := self.sim.throttle.next(endpoint)) is not None:
            return self.json(429, {"message": "Too Many Requests"}, {"Retry-After": wait})
        if self.command != method:
            return self.json(405, {"message": "Method not allowed"}, {"Allow": method})
        body: Any = {}
        if endpoint == "login":
            try:
                body = json.loads(raw)
            except ValueError:
                return self.json(400, {"message": "Invalid JSON request body"})
        status, obj = self.sim._api(endpoint, dict(self.headers.items()), query, body, uid)
        return self.json(status, obj)


class EncouraSimulator(Simulator):
    """Encoura's File Export API plus the S3 bucket its one-time download URLs point at."""

    api_handler = _ApiHandler
    bucket = "nrccua-datalab-export-files-sandbox.us-east-1"
    endpoints = frozenset({"login", "refresh", "list", "download_url", "download"})
    content_type = "text/csv"
    one_time_urls = True
    _stats: Stats

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
        super().__init__(host, url_lifetime, Stats())
        self.api_key, self.username, self.password = api_key, username, password
        org = {"uid": DEFAULT_ORG_UID, "name": "Sandbox University", "fice": "001234"}
        self.organizations = organizations or [org | {"stateCode": "NY"}]
        self.token_lifetime = token_lifetime
        self.user_uid = str(uuid.uuid4())
        self._exports: dict[str, _Export] = {}
        self.clock: Callable[[], float] = time.monotonic  # tokens age by it (tests: a fake)
        self._tokens: dict[str, float] = {}  # token -> self.clock() expiry
        self._logins = 0
        self.dialect = EncouraDialect()
        self.throttle = Throttle()

    @property
    def base_url(self) -> str:
        """The API root, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{self.host}:{self._port(0)}/v1"

    @property
    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def _blob(self, target: str) -> Blob | None:
        entry = self._exports.get(target)
        return entry.blob if entry else None

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
        entry = _Export({}, filename, Blob.of(data))
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
        entry = _Export({}, filename, Blob(size, None, seed))
        return self._put(entry, product_key, organization_uid, created_at)

    def _put(self, entry: _Export, key: str, org: str | None, at: datetime | None) -> str:
        """Fill in the record the listing shows, shaped like the vendor document's example."""
        if at is not None and at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        org = org or str(self.organizations[0]["uid"])
        fice = next((o.get("fice", "") for o in self.organizations if o["uid"] == org), "")
        uid, stamp = str(uuid.uuid4()), _ms(at or datetime.now(UTC))
        dialect = self.dialect
        records = entry.blob.records(header=entry.filename.endswith(".csv"))
        quantity = None if records is None else max(records + dialect.quantity_off, 0)
        entry.not_generated = dialect.generated_after
        created_by = {"uid": self.user_uid, "name": "", "type": ""}
        record = entry.record
        record |= {"uid": uid, "fice": fice, "organizationUid": org, "productKey": key}
        record |= {"purchaseItems": [], "status": "NotDelivered", "listGenerated": True}
        record |= {"listPath": str(uuid.uuid4()), "quantity": quantity, "costInPoints": 0}
        record |= {"costInDollars": 0, "date": stamp, "deliveries": []}
        record |= {"created": {"createdBy": created_by, "createdAt": stamp}}
        record |= {"isExpired": False, "isContinuous": False}
        record["listGenerated"] = not entry.not_generated
        with self._lock:
            self._exports[uid] = entry
            every = dialect.expire_every
            record["isExpired"] = bool(every) and len(self._exports) % every == 0
        return uid

    def mark_delivered(self, uid: str) -> None:
        """Mark an export Delivered, as another tool's download would."""
        with self._lock:
            self._exports[uid].record["status"] = "Delivered"

    def expire_export(self, uid: str) -> None:
        """Mark an export `isExpired: true`: its URL requests get 404 from now on."""
        with self._lock:
            self._exports[uid].record["isExpired"] = True

    def export(self, uid: str) -> dict[str, Any]:
        """A copy of an export's current record (status etc.), as the listing shows it."""
        with self._lock:
            return copy.deepcopy(self._exports[uid].record)

    def sha256_of(self, uid: str) -> str:
        """Hex sha256 of an export's bytes."""
        with self._lock:
            entry = self._exports[uid]
        return entry.blob.sha256()

    # tokens
    def expire_tokens(self) -> None:
        """Make every session token issued so far expire now."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def _issue_token(self) -> str:
        now, wall = self.clock(), int(time.time())
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
    def _count_call(self, endpoint: str) -> None:
        self._count(f"{endpoint}_calls")

    def _api(
        self, endpoint: str, headers: dict[str, str], query: dict[str, str], body: Any, uid: str
    ) -> tuple[int, object]:
        self._count_call(endpoint)
        headers = {k.lower(): v for k, v in headers.items()}
        if not hmac.compare_digest(headers.get("x-api-key", "").encode(), self.api_key.encode()):
            self._count("auth_failures")
            return 403, {"message": "Forbidden"}
        if endpoint == "login":
            return self._login(body)
        auth = headers.get("authorization", "")
        with self._lock:
            expiry = self._tokens.get(auth[4:]) if auth.startswith("JWT ") else None
        if expiry is None:
            self._count("auth_failures")
            return 401, {"message": "Unauthorized: invalid session token"}
        if self.clock() >= expiry:
            self._count("auth_failures")
            return self.dialect.expired_token_status, {"message": "Session token expired"}
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
        accepted = [f for f in ("userName", "email") if f in self.dialect.login_fields]
        name = next((body[f] for f in accepted if f in body), None)
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
        window = self._page(query)
        if isinstance(window, str):
            return 400, {"message": window}
        with self._lock:
            self._stats.list_queries.append(dict(query))
            rows: list[dict[str, Any]] = [
                e.record
                for e in sorted(self._exports.values(), key=lambda e: e.record["date"])
                if e.record["organizationUid"] == org
                and key in (None, e.record["productKey"])
                and status in (None, e.record["status"])
            ][window]
            body = copy.deepcopy(rows)
            for record in rows if self.dialect.delivered_on == "listing" else ():
                record["status"] = "Delivered"  # listing is what marks an export delivered
        return 200, body

    def _page(self, query: dict[str, str]) -> slice | str:
        """The rows `Limit` and `Skip` select in this dialect, or what is wrong with them."""
        dialect = self.dialect
        if dialect.ignore_paging:
            return slice(None)
        limit, skip = query.get("Limit"), query.get("Skip", "0")
        if not (limit or "0").isdigit() or not skip.isdigit():
            return f"Limit and Skip must be whole numbers, not {limit!r} and {skip!r}"
        size = int(limit) if limit else dialect.default_limit
        if dialect.max_limit is not None:
            size = min(size or dialect.max_limit, dialect.max_limit)
        start = int(skip)
        return slice(start, None if size is None else start + size)

    def _download_url(self, org: str, uid: str) -> tuple[int, object]:
        with self._lock:
            self._stats.download_url_uids.append(uid)
            entry = self._exports.get(uid)
            if entry is None or entry.record["organizationUid"] != org:
                return 404, {"message": f"Export not found: {uid}"}
            if entry.record["isExpired"]:
                return 404, {"message": f"Export has expired: {uid}"}
            if entry.not_generated:
                entry.not_generated -= 1
                entry.record["listGenerated"] = not entry.not_generated
                return 404, {"message": f"Export list not generated yet: {uid}"}
            if self.dialect.delivered_on == "url":
                entry.record["status"] = "Delivered"
        key = f"{org}/{entry.record['productKey']}/{entry.filename}"
        return 200, {self.dialect.download_url_key: self._presign(key, uid)}

    def with_dialect(self, **switches: Any) -> EncouraSimulator:
        """Switch this simulator to another reading (see EncouraDialect); returns it."""
        self.dialect = replace(self.dialect, **switches)
        return self
