"""What a vendor's HTTP answer means for a retry, and its message without secrets."""

from __future__ import annotations

from typing import Any

import requests

from scorefetch.core.errors import Failure, VendorError
from scorefetch.core.logs import strip_query


def kind_for(status: int) -> Failure:
    """The VendorError kind of a non-200 status: how deliveries.py should retry."""
    if status == 404:
        return Failure.NOT_FOUND
    if status in (401, 403):
        return Failure.AUTH
    if status >= 500 or status in (408, 429):
        return Failure.TRANSIENT
    return Failure.FATAL


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
            strip_query(f"{path}: {type(exc).__name__}: {exc}"), kind=Failure.TRANSIENT
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
        raise VendorError(f"{path}: response is not JSON", kind=Failure.TRANSIENT) from None
