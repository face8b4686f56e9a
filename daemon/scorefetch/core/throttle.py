"""A vendor's 429 with `Retry-After`: waited out (bounded), then the call is made again.

Both vendors' documents are silent on rate limits; a `Retry-After` is the server saying
exactly when a retry will work, so it is honoured up to MAX_WAIT_S per answer and
MAX_TRIES answers per call. Longer (or no `Retry-After`) is an ordinary transient failure,
retried on the delivery's or the listing's own schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from scorefetch.core import interrupt, logs
from scorefetch.core.errors import VendorError

MAX_WAIT_S = 60.0
MAX_TRIES = 3
T = TypeVar("T")


def honouring_retry_after(
    call: Callable[[], T], sleep: Callable[[float], object], vendor: str, path: str
) -> T:
    """`call()`; after a 429 whose Retry-After is at most MAX_WAIT_S, that long a wait
    and one more try (MAX_TRIES in all); any other failure is raised as it is."""
    for tries in range(1, MAX_TRIES + 1):
        try:
            return call()
        except VendorError as exc:
            wait = exc.retry_after
            if exc.status != 429 or wait is None or wait > MAX_WAIT_S or tries == MAX_TRIES:
                raise
        logs.get(vendor=vendor).warning("vendor.throttled", path=path, retry_after_s=wait)
        interrupt.check()  # a Ctrl-C lost in the call (a finalizer) ends the wait unbegun
        sleep(wait)
        interrupt.check()
    raise AssertionError("unreachable")  # pragma: no cover
