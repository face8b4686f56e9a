"""What a vendor's HTTP answer means for a retry, and its message without secrets."""

from __future__ import annotations

import requests

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
