"""What a vendor's HTTP answer means for a retry, and its message without secrets.

An answer is read within the session's call deadline and up to `MAX_ANSWER_BYTES`
(decoded): a vendor API that trickles, or sends a gigabyte of JSON, costs a bounded
time and bounded memory. Error text is built from what we choose to say (the path,
the status, the exception's class and host), never from a library's message.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

from scorefetch.core.errors import Failure, VendorError, describe, local_errno
from scorefetch.core.http import HttpError, Response, Session, deadline, redirect_target
from scorefetch.core.logs import untrusted

MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a year of listings is well under 1 MiB
READ_CHUNK = 64 * 1024


def kind_for(status: int) -> Failure:
    """The VendorError kind of a non-200 status: how deliveries.py should retry."""
    if 300 <= status < 400:
        # A redirect is never followed (it would take credentials elsewhere) and is not a
        # verdict on the file either: a misrouted load balancer or a moved endpoint is
        # fixed at the vendor's side, so the call is retried on the usual schedule.
        return Failure.TRANSIENT
    if status == 404:
        return Failure.NOT_FOUND
    if status in (401, 403):
        return Failure.AUTH
    if status >= 500 or status in (408, 429):
        return Failure.TRANSIENT
    return Failure.FATAL


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """The seconds a `Retry-After` header asks for (delay-seconds or an HTTP-date, never
    negative), or None when there is none or it cannot be read."""
    text = (value or "").strip()
    if text.isdigit():
        return float(text[:9])  # a silly number of digits is still a number
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


def parse_json(raw: bytes) -> Any:
    """The JSON value of `raw`; ValueError for anything else (bad UTF-8, nesting too deep)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def message_of(body: Any, reason: str | None) -> str:
    """The vendor's JSON `message`, cleaned (logs.untrusted); never the whole body."""
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str) and untrusted(message):
        return untrusted(message, 200)
    return untrusted(reason, 100) or "no message"


def read_bounded(response: Response, path: str) -> bytes:
    """A streamed answer's body, at most MAX_ANSWER_BYTES (VendorError beyond)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=READ_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise VendorError(
                f"{path}: answer larger than {MAX_ANSWER_BYTES} bytes", kind=Failure.TRANSIENT
            )
        chunks.append(chunk)
    return b"".join(chunks)


def json_answer(session: Session, method: str, url: str, path: str, **kwargs: Any) -> Any:
    """The JSON body of a 200 answer; anything else a VendorError of the right kind whose
    text names `path` and holds no query string (a presigned URL's, say)."""
    limit = session.call_deadline
    with deadline(limit) as clock:
        try:
            with session.request(method, url, stream=True, **kwargs) as response:
                status, reason = response.status_code, response.reason
                wait = retry_after(response.headers.get("Retry-After"))
                if 300 <= status < 400:
                    raise VendorError(
                        f"{path}: HTTP {status} redirect to {redirect_target(response)}"
                        " refused (never followed)",
                        kind=kind_for(status),
                        status=status,
                    )
                raw = read_bounded(response, path)
        except HttpError as exc:
            cause = f"no answer within {limit:g} s" if clock.passed else describe(exc)
            ours = local_errno(exc) is not None  # no descriptor for a socket, say
            kind = Failure.LOCAL if ours else Failure.TRANSIENT
            raise VendorError(f"{path}: {cause}", kind=kind) from None
    try:
        body = parse_json(raw)
    except ValueError:
        body = None
        if status == 200:
            raise VendorError(f"{path}: response is not JSON", kind=Failure.TRANSIENT) from None
    if status != 200:
        raise VendorError(
            f"{path}: HTTP {status}: {message_of(body, reason)}",
            kind=kind_for(status),
            status=status,
            retry_after=wait if status in (429, 503) else None,
        )
    return body
