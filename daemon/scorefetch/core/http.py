"""The one factory for HTTP sessions: timeouts on every call, TLS verified, a User-Agent,
redirects never followed, and deadlines that hold however slowly a server sends.

Redirects: requests follows them by default and re-sends the body (College Board's
username and password) and our own headers (Encoura's `x-api-key`) to wherever the
`Location` points. No vendor call needs one, so none is ever followed; callers turn a
3xx into an error (answers.py, downloads.py).

Deadlines: a socket read timeout bounds each wait for a byte, not a whole answer: a
server trickling a byte a second holds a worker for ever. `deadline(seconds)` arms a
watchdog that shuts the connection's socket when the time is up, whatever it is doing
then (connecting through a proxy, reading headers, reading the body); the read that was
waiting fails at once and the caller sees `Deadline.expired`.

The environment: requests' `trust_env` would also read ~/.netrc and send its logins as
`Authorization: Basic` to every host it names, and to every host at all for a `default`
entry (a presigned S3 URL the vendor chose included), replacing Encoura's own
`Authorization: JWT`. Credentials come from the configuration only, so `trust_env` is
off; the two things an operator sets in the environment on purpose are read explicitly:
proxies (`HTTPS_PROXY`, `NO_PROXY`, …: TLS runs through the proxy's tunnel, so it sees
host names only) and an extra CA bundle (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from scorefetch import __version__
from scorefetch.core import logs, timers
from scorefetch.core.urls import UrlError, connect_target

USER_AGENT = f"scorefetch/{__version__} (+admissions file collector)"
_current = threading.local()  # the Deadline of the request this thread is making


class Deadline:
    """A wall-clock limit for one exchange; shuts the sockets it watches when it passes."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._seconds = seconds

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    @property
    def passed(self) -> bool:
        """The limit has passed — whether or not the timer has fired yet: a socket timeout
        capped at what remained fires at the same moment, and either may come first."""
        return self.expired or time.monotonic() >= self.at

    def watch(self, sock: Any) -> None:
        with self._lock:
            if sock is not None and sock not in self._sockets:
                self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: Any) -> None:
    """Wake whatever read waits on `sock`: shutdown, unlike close, interrupts a blocked recv."""
    with suppress(OSError, AttributeError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Every connection this thread uses inside the block is shut after `seconds`."""
    limit = Deadline(seconds)
    outer = getattr(_current, "deadline", None)
    _current.deadline = limit
    timer = timers.call_later(limit._seconds, limit._fire)
    try:
        yield limit
    finally:
        timer.cancel()
        _current.deadline = outer


class _Watched:
    """Hands the connection's socket to the thread's Deadline: a new one as soon as it is
    connected (before any TLS handshake), a reused keep-alive one before the answer."""

    sock: Any

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        limit: Deadline | None = getattr(_current, "deadline", None)
        if limit is not None:
            limit.watch(sock)
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        limit: Deadline | None = getattr(_current, "deadline", None)
        if limit is not None:
            limit.watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    """requests' adapter with connections a Deadline can watch, direct or through a proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


class _TimeoutSession(requests.Session):
    """A Session whose requests default to (connect, read) timeouts; never None; never
    following a redirect; a call that is not streamed is bounded by `call_deadline`."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.trust_env = False  # never ~/.netrc; proxies and CA bundle are read below
        self._timeout = timeout
        self.call_deadline = timeout[0] + timeout[1]

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        kwargs["verify"] = _ca_bundle()  # never turned off, whatever a caller passes
        kwargs["allow_redirects"] = False  # never followed, whatever a caller passes
        text = url.decode() if isinstance(url, bytes) else url
        kwargs["proxies"] = _proxies(text)
        began = time.monotonic() if logs.tracing() else None
        if kwargs.get("stream") or getattr(_current, "deadline", None) is not None:
            response = super().request(method, url, *args, **kwargs)
        else:
            with deadline(self.call_deadline):
                response = super().request(method, url, *args, **kwargs)
        if began is not None:  # the answer's headers are in; a streamed body comes later
            logs.get().debug(
                "http.call",
                method=str(method),
                host=urlsplit(text).hostname or "",
                status=response.status_code,
                elapsed_ms=round((time.monotonic() - began) * 1000, 1),
            )
        return response


_PROXY_VARIABLES = tuple(
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
)


@functools.lru_cache(maxsize=64)
def _proxies_for(scheme: str, netloc: str, environment: tuple[str | None, ...]) -> dict[str, str]:
    return dict(requests.utils.get_environ_proxies(f"{scheme}://{netloc}/"))


def _proxies(url: str) -> dict[str, str]:
    """requests' proxies for `url` from the environment. They depend on the scheme, the host
    and port, and the proxy variables only; requests reads the whole environment at every
    call, so the answer is kept per host and per value of those variables."""
    parts = urlsplit(url)
    environment = tuple(os.environ.get(name) for name in _PROXY_VARIABLES)
    return dict(_proxies_for(parts.scheme, parts.netloc, environment))


def _ca_bundle() -> str | bool:
    """The CA bundle the environment names (requests' own variables), else the default."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def build_session(connect_timeout: float = 10.0, read_timeout: float = 60.0) -> requests.Session:
    """A Session for one vendor. Only connection set-up is retried here (it is always safe);
    everything else is retried by deliveries.py, which knows what an expired URL means."""
    session = _TimeoutSession((connect_timeout, read_timeout))
    # urllib3 would answer a 429/503 carrying Retry-After with a RetryError (status=0) that
    # hides the header; core/throttle.py honours it instead.
    retry = Retry(
        total=2,
        connect=2,
        read=0,
        status=0,
        other=0,
        redirect=0,
        backoff_factor=0.2,
        respect_retry_after_header=False,
    )
    adapter = _Adapter(max_retries=retry, pool_connections=4, pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def redirect_target(response: requests.Response) -> str:
    """The host a 3xx answer points at (never its path or query), for an error message."""
    location = response.headers.get("Location", "")
    try:
        return connect_target(requests.compat.urljoin(response.url, location)).host
    except (UrlError, ValueError):
        return "an unreadable location"
