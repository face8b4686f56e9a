"""Encoura Data Lab File Export API: login, session tokens, export listings, one-time URLs.

Every call carries `x-api-key`; after login also `Authorization: JWT <token>` and
`Organization: <uid>`. The session token lives 20 minutes: it is refreshed well
before that, and a 401 means one fresh login and one retry. Download URLs are
fetched by downloads.py with none of these headers.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from scorefetch.config import EncouraConfig
from scorefetch.core.answers import json_answer
from scorefetch.core.errors import ConfigError, Failure, VendorError
from scorefetch.core.logs import untrusted

REFRESH_AFTER_S = 15 * 60  # the vendor's tokens live 20 minutes


@dataclass(frozen=True)
class Export:
    uid: str
    product_key: str
    status: str
    created: str


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
    known), else `unknown`: a listing never spells a path. Entries without a plain uid
    are left out."""
    if not isinstance(answer, list):
        raise VendorError("/datacenter/exports: the answer is not a list", kind=Failure.TRANSIENT)
    keys = KNOWN_PRODUCT_KEYS | frozenset(configured)
    exports = []
    for item in answer:
        if not isinstance(item, dict) or not isinstance(item.get("uid"), str):
            continue
        if not _UID.fullmatch(item["uid"]):
            continue
        vendor_key = item.get("productKey")
        created = item.get("created")
        created = created.get("createdAt") if isinstance(created, dict) else None
        exports.append(
            Export(
                uid=item["uid"],
                product_key=product_key or (vendor_key if vendor_key in keys else UNLISTED),
                status=_text(item.get("status")),
                created=_text(created) or _text(item.get("date")),
            )
        )
    return exports


def parse_download_url(answer: Any) -> str:
    """The one-time URL of a /download answer (checked later, by downloads.check_url)."""
    url = answer.get("downloadUrl") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url:
        raise VendorError("download: no downloadUrl in the answer", kind=Failure.TRANSIENT)
    return url


def _text(value: Any) -> str:
    """A scalar as text ('' for anything else): dates come as epoch ms or ISO strings."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)


class Encoura:
    name = "encoura"

    def __init__(self, config: EncouraConfig, session: requests.Session) -> None:
        if config.api_key is None or config.username is None or config.password is None:
            raise ConfigError("encoura: api_key, username and password are required")
        self.config = config
        self.session = session
        self._api_key = config.api_key.get_secret_value()
        self._token: str | None = None
        self._token_at = 0.0
        self.organization: str | None = None
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        headers = {"x-api-key": self._api_key, "Accept": "application/json"}
        if auth:
            token, organization = self._session_headers()
            headers |= {"Authorization": f"JWT {token}", "Organization": organization}
        url = f"{self.config.base_url}{path}"
        return json_answer(self.session, method, url, path, headers=headers, **kwargs)

    def login(self) -> str:
        """Log in; choose the organization; returns its uid. ConfigError when it is ambiguous."""
        username = self.config.username or ""
        body = {
            "email" if "@" in username else "userName": username,
            "password": self.config.password.get_secret_value() if self.config.password else "",
            "acceptedTerms": True,
        }
        answer = self._request("POST", "/login", auth=False, json=body)
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
        except VendorError:
            self.login()  # any failure to refresh: a fresh login instead
            return
        with self._lock:
            self._token, self._token_at = fresh, time.monotonic()

    def _call(self, path: str, **kwargs: Any) -> Any:
        """An authenticated GET; after a 401 one fresh login and one retry."""
        try:
            return self._request("GET", path, **kwargs)
        except VendorError as exc:
            if exc.status != 401:
                raise
        self.login()
        return self._request("GET", path, **kwargs)

    def list_exports(self, product_key: str | None, status: str) -> list[Export]:
        """Exports of `product_key` (all when None) with `status`. Listing NotDelivered marks
        them Delivered at the vendor: record the answer before anything else."""
        params = {"status": status} | ({"productKey": product_key} if product_key else {})
        answer = self._call("/datacenter/exports", params=params)
        return parse_exports(answer, product_key, self.config.product_keys)

    def download_url(self, uid: str) -> str:
        """A fresh one-time URL for export `uid` (about a minute to live)."""
        return parse_download_url(self._call(f"/datacenter/exports/{quote(uid, safe='')}/download"))
