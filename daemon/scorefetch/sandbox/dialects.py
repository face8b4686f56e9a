"""The readings of the vendors' documents the simulators can be switched to.

Where a vendor's document is silent or says a thing two ways, each reading is a switch
here, so the clients' tests can run across all of them (tests/test_vendor_dialects.py).
The defaults are the readings the simulators have always modelled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EncouraDialect:
    default_limit: int | None = None  # page size when no `Limit` is sent (None: no paging)
    max_limit: int | None = None  # a cap on `Limit` (a page shorter than asked, not the end)
    ignore_paging: bool = False  # `Limit`/`Skip` ignored: every answer is the whole listing
    expired_token_status: int = 401  # how an expired session token is refused (or 403)
    delivered_on: str = "listing"  # or "url": what marks an export Delivered (line 211)
    download_url_key: str = "downloadUrl"  # or "downloadURL" (seed 000 line 286)
    login_fields: frozenset[str] = frozenset({"userName", "email"})  # what /login accepts
    expire_every: int = 0  # every Nth export added is `isExpired: true` (404 for its URL)
    generated_after: int = 0  # `listGenerated: false` and 404 for the first N URL requests
    quantity_off: int = 0  # `quantity` reported this far from the real count of records


@dataclass(frozen=True)
class CollegeBoardDialect:
    expired_token_status: int = 401  # how an expired token is refused (or 403)
    other_type_every: int = 0  # every Nth file posted is listed as fileType "Essay File"
    size_off: int = 0  # `fileSize` listed this far from the real size
    records_off: int = 0  # `recordCount` listed this far from the real count


@dataclass
class Throttle:
    """429 answers with a `Retry-After`, queued per endpoint."""

    _queues: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    answered: int = 0

    def add(self, endpoint: str, retry_after: str, count: int = 1) -> None:
        with self._lock:
            self._queues.setdefault(endpoint, []).extend([retry_after] * count)

    def next(self, endpoint: str) -> str | None:
        """The Retry-After of the 429 this call gets, or None: answer it normally."""
        with self._lock:
            queue = self._queues.get(endpoint)
            if not queue:
                return None
            self.answered += 1
            return queue.pop(0)
