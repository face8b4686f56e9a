"""Encoura Data Lab File Export API: login, session tokens, export listings, one-time URLs.

Every call carries `x-api-key`; after login also `Authorization: JWT <token>` and
`Organization: <uid>`. The session token lives 20 minutes: it is refreshed well
before that, and a 401 means one fresh login and one retry. Download URLs are
fetched by downloads.py with none of these headers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from scorefetch.config import EncouraConfig
from scorefetch.core.answers import json_answer
from scorefetch.core.errors import ConfigError, Failure, VendorError

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
        f"{org.get('uid')} ({org.get('name')})" for org in organizations if isinstance(org, dict)
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
        token = answer.get("sessionToken") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not strip_token(token):
            raise VendorError("/login: no sessionToken in the answer", kind=Failure.AUTH)
        user = answer.get("user") if isinstance(answer.get("user"), dict) else {}
        organizations = user.get("organizations") or []
        with self._lock:
            self._token, self._token_at = strip_token(token), time.monotonic()
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
        try:
            response = self.session.get(f"{self.config.base_url}/refresh-token", headers=headers)
            fresh = response.json().get("sessionToken") if response.status_code == 200 else None
        except (requests.RequestException, ValueError, AttributeError):
            fresh = None
        if isinstance(fresh, str) and strip_token(fresh):
            with self._lock:
                self._token, self._token_at = strip_token(fresh), time.monotonic()
        else:
            self.login()

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
        if not isinstance(answer, list):
            raise VendorError(
                "/datacenter/exports: the answer is not a list", kind=Failure.TRANSIENT
            )
        exports = []
        for item in answer:
            if isinstance(item, dict) and isinstance(item.get("uid"), str):
                created = item.get("created")
                created = created if isinstance(created, dict) else {}
                exports.append(
                    Export(
                        uid=item["uid"],
                        product_key=str(item.get("productKey") or product_key or "unknown"),
                        status=str(item.get("status") or ""),
                        created=str(created.get("createdAt") or item.get("date") or ""),
                    )
                )
        return exports

    def download_url(self, uid: str) -> str:
        """A fresh one-time URL for export `uid` (about a minute to live)."""
        answer = self._call(f"/datacenter/exports/{quote(uid, safe='')}/download")
        url = answer.get("downloadUrl") if isinstance(answer, dict) else None
        if not isinstance(url, str) or not url:
            raise VendorError("download: no downloadUrl in the answer", kind=Failure.TRANSIENT)
        return url
