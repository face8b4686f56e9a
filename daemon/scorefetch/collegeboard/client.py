"""College Board score download web service: presigned URLs (15 s) and the file listing.

Every response is translated here into VendorError with a `kind` that says what
a retry should do; nothing above this module sees the HTTP layer's exceptions.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.answers import json_answer
from scorefetch.core.errors import Failure, VendorError
from scorefetch.core.http import Session
from scorefetch.core.throttle import honouring_retry_after

URL_LIFETIME_S = 15.0  # the vendor's word: "The presigned URL is active for only 15 seconds."
REFUSED = (401, 403)  # how an expired token may be refused: the vendor does not say


@dataclass(frozen=True)
class ListedFile:
    name: str
    size: int | None
    delivered: str | None
    records: int | None = None  # `recordCount`, when the listing gives it
    file_type: str | None = None  # `fileType`: "Scores File", "Essay File", …


def format_from_date(moment: datetime) -> str:
    """The listing's `fromDate`: yyyy-MM-ddTHH:mm:ss±hhmm (the vendor refuses the `Z` form)."""
    if moment.tzinfo is None:
        raise ValueError("fromDate needs an aware datetime")
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


# Pure parsers: one per answer, each returning typed values or raising VendorError.
def parse_token(answer: Any) -> str:
    """The token of a /pascoredwnld/login answer."""
    token = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise VendorError("/pascoredwnld/login: no token in the answer", kind=Failure.AUTH)
    return token.strip()


def parse_file_url(answer: Any) -> str:
    """The presigned URL of a /pascoredwnld/file answer (checked by downloads.check_url)."""
    url = answer.get("fileUrl") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url:
        raise VendorError("/pascoredwnld/file: no fileUrl in the response", kind=Failure.TRANSIENT)
    return url


def parse_listing(answer: Any) -> list[ListedFile]:
    """The files of a /pascoredwnld/files/list answer; `files` null or missing means none.
    Entries without a string `fileName` are left out; names are checked by the caller."""
    if not isinstance(answer, dict):
        raise VendorError(
            "/pascoredwnld/files/list: the answer is not an object", kind=Failure.TRANSIENT
        )
    entries = answer.get("files")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise VendorError("/pascoredwnld/files/list: `files` is not a list", kind=Failure.TRANSIENT)
    listed = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("fileName"), str):
            delivered, file_type = entry.get("deliveryDate"), entry.get("fileType")
            listed.append(
                ListedFile(
                    entry["fileName"].strip(),
                    _count(entry.get("fileSize")),
                    delivered if isinstance(delivered, str) and delivered else None,
                    _count(entry.get("recordCount")),
                    _file_type(file_type),
                )
            )
    return listed


def _file_type(value: Any) -> str | None:
    """`fileType` when it is a short plain label ("Scores File"), else None: it is shown."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,59}", value):
        return value
    return None


def _count(value: Any) -> int | None:
    """A size or a count: a non-negative int, else unknown."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class CollegeBoard:
    """`auth: one-step` sends the credentials with every call (the vendor's advice for email
    triggers); `auth: token` logs in once, reuses the token and, after a 401 or a 403 (an
    expired token may get either), logs in again once and retries once."""

    name = "collegeboard"

    def __init__(
        self,
        config: CollegeBoardConfig,
        session: Session,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.config = config
        self.session = session
        self.sleep = sleep  # how a 429's Retry-After is waited out
        self._token: str | None = None
        self._token_lock = threading.Lock()

    def _credentials(self) -> dict[str, str]:
        password = self.config.password
        return {
            "username": self.config.username or "",
            "password": password.get_secret_value() if password is not None else "",
        }

    def _auth_body(self, stale: str | None) -> tuple[dict[str, str], str | None]:
        """The body that authenticates a call, and the token it used (None: one-step)."""
        if self.config.auth == "one-step":
            return self._credentials(), None
        with self._token_lock:
            if self._token is None or self._token == stale:
                self._token = parse_token(
                    self._call("/pascoredwnld/login", {}, self._credentials())
                )
            return {"token": self._token}, self._token

    def _post(self, path: str, params: dict[str, str]) -> Any:
        body, token = self._auth_body(None)
        try:
            return self._call(path, params, body)
        except VendorError as exc:
            if token is None or exc.status not in REFUSED:
                raise
        body, _ = self._auth_body(token)  # the token expired: log in again, once
        return self._call(path, params, body)

    def _call(self, path: str, params: dict[str, str], body: dict[str, str]) -> Any:
        url = f"{self.config.base_url}{path}"
        headers = {"Accept": "application/json"}
        return honouring_retry_after(
            lambda: json_answer(
                self.session, "POST", url, path, params=params, json=body, headers=headers
            ),
            self.sleep,
            self.name,
            path,
        )

    def file_url(self, name: str) -> str:
        """A fresh presigned URL for `name`; use it at once, it lives 15 seconds."""
        return parse_file_url(self._post("/pascoredwnld/file", {"filename": name}))

    def list_files(self, since: datetime | None) -> list[ListedFile]:
        """Files posted since `since` (everything when None); `files: null` means none."""
        params = {"fromDate": format_from_date(since)} if since else {}
        return parse_listing(self._post("/pascoredwnld/files/list", params))
