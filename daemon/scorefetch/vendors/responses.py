"""What a vendor's HTTP answer means for a retry, and its message without secrets."""

from __future__ import annotations

from typing import Any

import requests

from scorefetch.errors import VendorError
from scorefetch.logs import strip_query


def kind_for(status: int) -> str:
    """The VendorError kind of a non-200 status: how deliveries.py should retry."""
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "auth"
    if status >= 500 or status in (408, 429):
        return "transient"
    return "fatal"


def message_of(response: requests.Response) -> str:
    """The vendor's JSON `message`, shortened; never the whole body."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or "no message"
    message = body.get("message") if isinstance(body, dict) else None
    return strip_query(str(message))[:200] if message else (response.reason or "no message")


def json_answer(session: requests.Session, method: str, url: str, path: str, **kwargs: Any) -> Any:
    """The JSON body of a 200 answer; anything else a VendorError of the right kind whose
    text names `path` and holds no query string (a presigned URL's, say)."""
    try:
        response = session.request(method, url, **kwargs)
    except requests.RequestException as exc:
        raise VendorError(
            strip_query(f"{path}: {type(exc).__name__}: {exc}"), kind="transient"
        ) from None
    if response.status_code != 200:
        raise VendorError(
            f"{path}: HTTP {response.status_code}: {message_of(response)}",
            kind=kind_for(response.status_code),
            status=response.status_code,
        )
    try:
        return response.json()
    except ValueError:
        raise VendorError(f"{path}: response is not JSON", kind="transient") from None
