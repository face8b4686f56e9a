"""The one factory for HTTP sessions: timeouts on every call, TLS verified, a User-Agent."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scorefetch import __version__

USER_AGENT = f"scorefetch/{__version__} (+admissions file collector)"


class _TimeoutSession(requests.Session):
    """A Session whose requests default to (connect, read) timeouts; never None."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["verify"] = True  # never turned off, whatever a caller passes
        return super().request(method, url, *args, **kwargs)


def build_session(connect_timeout: float = 10.0, read_timeout: float = 60.0) -> requests.Session:
    """A Session for one vendor. Only connection set-up is retried here (it is always safe);
    everything else is retried by deliveries.py, which knows what an expired URL means."""
    session = _TimeoutSession((connect_timeout, read_timeout))
    retry = Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0, backoff_factor=0.2)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session
