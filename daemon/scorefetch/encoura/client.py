"""Encoura Data Lab File Export API: login, session tokens, export listings, one-time URLs.

Every call carries `x-api-key`; after login also `Authorization: JWT <token>` and
`Organization: <uid>`. The session token lives 20 minutes: it is refreshed well
before that, and a 401 or 403 (the document does not say which an expired token
gets) means one fresh login and one retry. Listings are walked page by page with
`Limit`/`Skip` (see `Encoura.pages`). Download URLs are fetched by downloads.py with
none of these headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from scorefetch.core import interrupt, logs
from scorefetch.core.answers import json_answer
from scorefetch.core.errors import ConfigError, Failure, VendorError
from scorefetch.core.http import Session
from scorefetch.core.logs import untrusted
from scorefetch.core.throttle import honouring_retry_after
from scorefetch.encoura.settings import EncouraConfig

REFRESH_AFTER_S = 15 * 60  # the vendor's tokens live 20 minutes
PAGE_LIMIT = 100  # `Limit` we send; a server may answer fewer (a cap) or ignore it
MAX_PAGES = 2000  # a listing of 200,000 exports: past that, a server that never ends
REFUSED = (401, 403)  # how an expired session token may be refused: the document says neither


@dataclass(frozen=True)
class Export:
    uid: str
    product_key: str
    status: str
    created: str
    expired: bool = False  # `isExpired`: the vendor no longer serves it
    generated: bool = True  # `listGenerated: false`: listed, not downloadable yet
    quantity: int | None = None  # the vendor's count of records


class LoginFailed(VendorError):
    """/login itself failed: a refusal here is of the credentials, not of a stale token."""


@dataclass
class Paging:
    """What the last walk of a listing showed about the server's paging (for doctor)."""

    requests: int = 0
    largest_page: int = 0
    skip_ignored: bool = False  # a page at a new Skip repeated uids already seen


def strip_token(token: str) -> str:
    """Tokens have been seen wrapped in extra quotes; the header needs them bare."""
    return token.strip().strip('"').strip("'").strip()


def choose_organization(configured: str | None, organizations: list[dict[str, Any]]) -> str:
    """The configured organization uid (it must be the account's), or the only one."""
    uids = [str(org.get("uid")) for org in organizations if isinstance(org, dict)]
    listing = ", ".join(
        f"{untrusted(str(org.get('uid')), 100)} ({org.get('name')})"
        for org in organizations
        if isinstance(org, dict)
    )
    if configured is not None:
        if configured not in uids:
            raise ConfigError(
                f"encoura.organization: {configured!r} is not one of this account's "
                f"organizations: {listing or 'none'}"
            )
        return configured
    if len(uids) == 1:
        return uids[0]
    if not uids:
        raise ConfigError("encoura: the account belongs to no organization")
    raise ConfigError(f"encoura.organization: the account has several; choose one of: {listing}")


KNOWN_PRODUCT_KEYS = frozenset(
    {
        "aos",
        "prospect",
        "affinity",
        "ematch",
        "score-reporter",
        "declared",
        "inquiry",
        "enrollment-marketing",
    }
)  # the vendor's list as of 2022; newer keys are allowed, with a warning
UNLISTED = "unknown"  # the folder of an export of a product key we do not know
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")  # real ones are UUIDs


def login_field(login_as: str, username: str) -> str:
    """The /login body member the username goes in: `auto` is `email` for an address."""
    if login_as != "auto":
        return login_as
    return "email" if "@" in username else "userName"


def token_lifetime(token: str) -> float | None:
    """Seconds between a JWT's `iat` and `exp` claims (not verified: for doctor's report)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):
        return None
    return lifetime if lifetime > 0 else None


# Pure parsers: one per answer, each returning typed values or raising VendorError.
def parse_login(answer: Any) -> tuple[str, list[dict[str, str]]]:
    """(session token, the account's organizations as {uid, name}) from a /login answer."""
    token = answer.get("sessionToken") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not strip_token(token):
        raise VendorError("/login: no sessionToken in the answer", kind=Failure.AUTH)
    user = answer.get("user")
    listed = user.get("organizations") if isinstance(user, dict) else None
    organizations = [
        {
            "uid": org["uid"],
            "name": untrusted(org["name"], 100) if isinstance(org.get("name"), str) else "",
        }
        for org in (listed if isinstance(listed, list) else [])
        if isinstance(org, dict) and isinstance(org.get("uid"), str) and org["uid"]
    ]
    return strip_token(token), organizations


def parse_refresh(answer: Any) -> str:
    """The new session token of a /refresh-token answer."""
    token = answer.get("sessionToken") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not strip_token(token):
        raise VendorError("/refresh-token: no sessionToken in the answer", kind=Failure.AUTH)
    return strip_token(token)


def parse_exports(answer: Any, product_key: str | None, configured: Iterable[str]) -> list[Export]:
    """The exports of a listing. Their folder is the product key we asked for, or, for a
    listing of every product, the vendor's key only when it is one of ours (configured or
    known), else `unknown`: a listing never spells a path. An entry without a plain uid
    (a number is read as its digits) cannot be fetched: it is left out and said
    (`listing.unreadable`, a warning: listing it may have marked it Delivered)."""
    if not isinstance(answer, list):
        raise VendorError("/datacenter/exports: the answer is not a list", kind=Failure.TRANSIENT)
    keys = KNOWN_PRODUCT_KEYS | frozenset(configured)
    exports = []
    unreadable = []
    for item in answer:
        uid = item.get("uid") if isinstance(item, dict) else None
        if isinstance(uid, int) and not isinstance(uid, bool):
            item = {**item, "uid": str(uid)}
        if not isinstance(item, dict) or not isinstance(item.get("uid"), str):
            unreadable.append(item)
            continue
        if not _UID.fullmatch(item["uid"]):
            unreadable.append(item)
            continue
        vendor_key = item.get("productKey")
        created = item.get("created")
        created = created.get("createdAt") if isinstance(created, dict) else None
        quantity = item.get("quantity")
        exports.append(
            Export(
                uid=item["uid"],
                product_key=product_key or (vendor_key if vendor_key in keys else UNLISTED),
                status=_text(item.get("status")),
                created=_text(created) or _text(item.get("date")),
                expired=item.get("isExpired") is True,
                generated=item.get("listGenerated") is not False,
                quantity=quantity
                if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 0
                else None,
            )
        )
    if unreadable:
        logs.get(vendor="encoura").warning(
            "listing.unreadable",
            product_key=product_key,
            entries=len(unreadable),
            example=untrusted(json.dumps(unreadable[0], default=str)[:300]),
            advice="these exports cannot be fetched by uid; ask Encoura for them by other means",
        )
    return exports


def parse_download_url(answer: Any) -> str:
    """The one-time URL of a /download answer, spelled `downloadUrl` or `downloadURL` (the
    document has both); checked later, by downloads.check_url."""
    for key in ("downloadUrl", "downloadURL"):
        url = answer.get(key) if isinstance(answer, dict) else None
        if isinstance(url, str) and url:
            return url
    raise VendorError("download: no downloadUrl in the answer", kind=Failure.TRANSIENT)


def _date(created: str) -> str:
    """An export's creation as an ISO date (the listing gives epoch ms or ISO text)."""
    if created.isdigit():
        try:
            return datetime.fromtimestamp(int(created) / 1000, UTC).date().isoformat()
        except (ValueError, OverflowError, OSError):
            return "unknown"
    day = created[:10]
    return day if re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) else "unknown"


def _text(value: Any) -> str:
    """A scalar as text ('' for anything else): dates come as epoch ms or ISO strings."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)


class Encoura:
    name = "encoura"
    page_limit = PAGE_LIMIT

    def __init__(
        self,
        config: EncouraConfig,
        session: Session,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if config.api_key is None or config.username is None or config.password is None:
            raise ConfigError("encoura: api_key, username and password are required")
        self.config = config
        self.session = session
        self.sleep = sleep  # how a 429's Retry-After is waited out
        self._api_key = config.api_key.get_secret_value()
        self._token: str | None = None
        self._token_at = 0.0
        self.organization: str | None = None
        self.login_field = login_field(config.login_as, config.username)
        self.paging = Paging()
        self._expired: dict[str, Export] = {}  # uid: the listing's word that it is expired
        self._lock = threading.Lock()
        self._log = logs.get(vendor=self.name)

    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        """One call, its session headers (re)made on each try; 429s waited out."""

        def call() -> Any:
            headers = {"x-api-key": self._api_key, "Accept": "application/json"}
            if auth:
                token, organization = self._session_headers()
                headers |= {"Authorization": f"JWT {token}", "Organization": organization}
            url = f"{self.config.base_url}{path}"
            return json_answer(self.session, method, url, path, headers=headers, **kwargs)

        return honouring_retry_after(call, self.sleep, self.name, path)

    @property
    def token(self) -> str | None:
        """The current session token (for doctor's report of its lifetime; never logged)."""
        with self._lock:
            return self._token

    def login(self, stale: str | None = None) -> str:
        """Log in; choose the organization; returns its uid. ConfigError when it is ambiguous.
        With `stale`, only when the current token is still that one (another thread may
        have logged in already)."""
        with self._lock:
            if stale is not None and self._token != stale and self.organization is not None:
                return self.organization
        username = self.config.username or ""
        body = {
            self.login_field: username,
            "password": self.config.password.get_secret_value() if self.config.password else "",
            "acceptedTerms": True,
        }
        try:
            answer = self._request("POST", "/login", auth=False, json=body)
        except VendorError as exc:
            raise LoginFailed(str(exc), kind=exc.kind, status=exc.status) from None
        token, organizations = parse_login(answer)
        with self._lock:
            self._token, self._token_at = token, time.monotonic()
            self.organization = choose_organization(self.config.organization, organizations)
            return self.organization

    def _session_headers(self) -> tuple[str, str]:
        with self._lock:
            token, age, organization = (
                self._token,
                time.monotonic() - self._token_at,
                self.organization,
            )
        if token is None or organization is None:
            self.login()
        elif age > REFRESH_AFTER_S:
            self._refresh(token)
        with self._lock:
            assert self._token is not None and self.organization is not None
            return self._token, self.organization

    def _refresh(self, token: str) -> None:
        headers = {"x-api-key": self._api_key, "Authorization": f"JWT {token}"}
        url = f"{self.config.base_url}/refresh-token"
        try:
            fresh = parse_refresh(
                json_answer(self.session, "GET", url, "/refresh-token", headers=headers)
            )
        except VendorError as exc:
            # Not silent: a refresh that never works is a vendor change worth seeing.
            self._log.error("encoura.refresh_failed", error=str(exc))
            self.login(stale=token)  # any failure to refresh: a fresh login instead
            return
        with self._lock:
            self._token, self._token_at = fresh, time.monotonic()

    def _call(self, path: str, **kwargs: Any) -> Any:
        """An authenticated GET. A 401 or 403 may be an expired token: one fresh login and
        one retry; a refusal after that is the vendor's verdict (`auth`)."""
        used = self.token
        try:
            return self._request("GET", path, **kwargs)
        except LoginFailed:
            raise
        except VendorError as exc:
            if exc.status not in REFUSED:
                raise
        self.login(stale=used)
        return self._request("GET", path, **kwargs)

    def pages(self, product_key: str | None, status: str) -> Iterator[list[Export]]:
        """The exports of `product_key` (all when None) with `status`, a page at a time,
        each holding only uids not seen earlier in the walk.

        The document names `Limit` and `Skip` and shows no example, so every reading is
        walked safely: pages are asked for until one brings no new uid (an empty page, or a
        server that ignores `Skip` repeating itself). Listing NotDelivered may consume what
        it lists (the listing shrinks under us): `Skip` stays at 0 while each page is all
        new, and advances only once a page repeats (a server that does not consume). Only
        one page and the uids seen are held; record each page before asking for the next."""
        params = {"status": status} | ({"productKey": product_key} if product_key else {})
        seen: set[str] = set()
        skip, stay = 0, status == "NotDelivered"
        self.paging = paging = Paging()
        for _ in range(MAX_PAGES):
            interrupt.check()  # `sync` walks every page: a Ctrl-C lost meanwhile stops it here
            answer = self._call(
                "/datacenter/exports", params=params | {"Limit": self.page_limit, "Skip": skip}
            )
            page = parse_exports(answer, product_key, self.config.product_keys)
            fresh = [e for e in page if e.uid not in seen]
            seen.update(e.uid for e in fresh)
            paging.requests += 1
            paging.largest_page = max(paging.largest_page, len(answer))
            self._note_expired(page)
            if fresh:
                yield fresh
            elif stay and answer:
                stay = False  # page 0 again, unchanged: the listing does not consume
            else:
                paging.skip_ignored = skip > 0 and bool(answer)
                return
            if not stay:
                skip += len(answer)
        self._log.warning("listing.truncated", product_key=product_key, pages=MAX_PAGES)

    def _note_expired(self, page: list[Export]) -> None:
        with self._lock:
            for export in page:
                if export.expired:
                    self._expired[export.uid] = export
                else:
                    self._expired.pop(export.uid, None)

    def list_exports(self, product_key: str | None, status: str) -> list[Export]:
        """Every page of `pages` in one list. Listing NotDelivered marks exports Delivered
        at the vendor: record the answer before anything else."""
        return [export for page in self.pages(product_key, status) for export in page]

    def download_url(self, uid: str) -> str:
        """A fresh one-time URL for export `uid` (about a minute to live). An export the
        last listing showed `isExpired` is not asked for: a failure never retried."""
        with self._lock:
            expired = self._expired.get(uid)
        if expired is not None:
            raise VendorError(
                f"export {uid} ({expired.product_key}, created {_date(expired.created)}) is "
                "listed isExpired: Encoura no longer serves it; ask Encoura to regenerate it",
                kind=Failure.FATAL,
                reason="expired",
            )
        return parse_download_url(self._call(f"/datacenter/exports/{quote(uid, safe='')}/download"))
