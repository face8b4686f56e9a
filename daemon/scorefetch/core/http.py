"""The one HTTP client: timeouts on every call, TLS verified, a User-Agent, redirects
never followed, and deadlines that hold however slowly a server sends. It is urllib3
with the few things a vendor call needs on top; nothing else in the daemon talks HTTP.

Redirects: none is ever followed. A followed redirect would re-send the body (College
Board's username and password) and our own headers (Encoura's `x-api-key`) to wherever
`Location` points, and no vendor call needs one; callers turn a 3xx into an error
(answers.py, downloads.py).

Deadlines: a socket read timeout bounds each wait for a byte, not a whole answer: a
server trickling a byte a second holds a worker for ever. `deadline(seconds)` arms a
watchdog that shuts the connection's socket when the time is up, whatever it is doing
then (connecting through a proxy, reading headers, reading the body); the read that was
waiting fails at once and the caller sees `Deadline.expired`.

The environment: credentials come from the configuration only (never ~/.netrc, which
requests' `trust_env` would have sent as `Authorization: Basic` to the hosts it names).
The two things an operator sets in the environment on purpose are read: proxies
(`HTTPS_PROXY`, `NO_PROXY`, …: TLS runs through the proxy's tunnel, so it sees host names
only) and a CA bundle (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`; else certifi's).

TLS: one context per CA bundle for the whole process, loaded at the first https call and
again only when the bundle file changes. (urllib3 left alone parses the bundle again for
every new connection: ~140 certificates, and ~0.7 MB held by each connection a pool
keeps.)
"""

from __future__ import annotations

import functools
import ipaddress
import json as jsonlib
import os
import socket
import ssl
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as _LibraryError
from urllib3.exceptions import MaxRetryError
from urllib3.util import make_headers
from urllib3.util.retry import Retry
from urllib3.util.ssl_ import create_urllib3_context
from urllib3.util.timeout import Timeout

from scorefetch import __version__
from scorefetch.core import logs, timers
from scorefetch.core.errors import LocalError, describe
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

    def unwatch(self, sock: Any) -> None:
        with self._lock, suppress(ValueError):
            self._sockets.remove(sock)

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
    def connect(self) -> None:
        # The process's one context for the CA bundle as it is now: one replaced since
        # (update-ca-certificates, a new REQUESTS_CA_BUNDLE file) is read again for the
        # next connection, as urllib3 alone did, without a restart.
        self.ssl_context = verifying_context()
        super().connect()


class _Returned:
    """A connection going back to the pool leaves the thread's Deadline: that deadline
    goes on (a download's covers its fsync and rename) and must not shut the socket under
    the next call, another thread's perhaps, that takes the connection."""

    def _put_conn(self, conn: Any) -> None:
        limit: Deadline | None = getattr(_current, "deadline", None)
        if limit is not None and conn is not None:
            limit.unwatch(conn.sock)
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_Returned, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_Returned, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}
# What requests sent, so a vendor sees the same request it always saw.
_ACCEPT = {
    "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],
    "Accept": "*/*",
}


class HttpError(Exception):
    """No (complete) answer: the connection, TLS, a proxy or the stream failed. `host` is
    where (never a path or query); `reason` is the library's exception, which
    errors.describe reads for its class and errno, never for its text (urllib3 quotes the
    path and query: a presigned URL's signature). Raised `from None`: a traceback shows
    our words only."""

    def __init__(self, what: str, host: str | None, reason: BaseException | None = None) -> None:
        super().__init__(what)
        self.host = host
        self.reason = reason


class ConnectFailed(HttpError):
    """The connection (or the proxy's tunnel, or TLS) was never set up."""


class ConnectionLost(HttpError):
    """The connection broke, timed out or sent something unreadable mid-answer."""


class StatusError(HttpError):
    """raise_for_status: an answer of 400 or more (only msal asks for this)."""

    def __init__(self, status: int, host: str | None) -> None:
        super().__init__(f"HTTP {status}", host)
        self.status = status


def _host(url: str) -> str | None:
    """The host `url` names, for an error's text; None when it cannot be read (the call
    then fails as urllib3 reads it)."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _lost(exc: BaseException, host: str | None) -> HttpError:
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    kind = ConnectionLost if _mid_answer(exc) else ConnectFailed
    return kind(type(exc).__name__, host, exc)


def _mid_answer(exc: BaseException) -> bool:
    """The failure came after the connection was up (a read, not a connect)."""
    return isinstance(
        exc,
        urllib3.exceptions.ReadTimeoutError
        | urllib3.exceptions.ProtocolError
        | urllib3.exceptions.DecodeError
        | urllib3.exceptions.ResponseError,
    )


class Response:
    """An answer whose head is in; the body is read from `raw` (as stored), through
    `iter_content` (decoded) or `content`. Close it (or use `with`) to free the
    connection: a body not read to the end closes it rather than return it."""

    def __init__(
        self, raw: urllib3.BaseHTTPResponse, url: str, elapsed: float, host: str | None
    ) -> None:
        self.raw = raw
        self.url = url
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = raw.headers  # case-insensitive
        self.elapsed = elapsed  # seconds from the call to the answer's head
        self._content: bytes | None = None
        self._host = host

    def iter_content(self, chunk_size: int, *, decoded: bool = True) -> Iterator[bytes]:
        """The body in chunks of at most about `chunk_size`: decoded (gzip, deflate), or
        as it comes off the wire; the library's failures as HttpError."""
        if self._content is not None:  # read already (decoded), by `content`
            yield self._content
            return
        reader = self.raw.stream(chunk_size, decode_content=decoded)
        while True:
            try:
                chunk = next(reader, None)
            except (_LibraryError, OSError) as exc:
                raise _lost(exc, self._host) from None
            if chunk is None:
                return
            yield chunk

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_content(64 * 1024))
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise StatusError(self.status_code, self._host)

    def close(self) -> None:
        if self._content is None and not self.raw.closed:
            self.raw.close()  # an unread body: the connection cannot carry another call
        self.raw.release_conn()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Session:
    """Calls for one vendor: (connect, read) timeouts by default, never None; redirects
    never followed; a call that is not streamed is bounded by `call_deadline`. Only
    connection set-up is retried here (it is always safe); everything else is retried by
    deliveries.py, which knows what an expired URL means."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        self.headers: dict[str, str] = {"User-Agent": USER_AGENT, **_ACCEPT}
        self.timeout = timeout
        self.call_deadline = timeout[0] + timeout[1]
        self.on_answer: list[Callable[[Response], None]] = []  # doctor's clock listens
        # urllib3 would answer a 429/503 carrying Retry-After with a RetryError (status=0)
        # that hides the header; core/throttle.py honours it instead.
        self._retries = Retry(
            total=2,
            connect=2,
            read=0,
            status=0,
            other=0,
            redirect=0,
            backoff_factor=0.2,
            respect_retry_after_header=False,
        )
        self._managers: dict[str | None, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Response:
        return self.request("POST", url, **kwargs)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        timeout: float | tuple[float, float] | None = None,
        allow_redirects: bool = False,  # accepted (msal passes it); never followed anyway
    ) -> Response:
        del allow_redirects
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        sent = dict(self.headers)
        body, kind = _body(json, data)
        if kind is not None:
            sent["Content-Type"] = kind
        sent.update(headers or {})
        host = _host(url)
        if not url[:8].lower().startswith(("http://", "https://")):
            raise ConnectFailed("not an http(s) URL", host)
        began = time.monotonic()
        if stream or getattr(_current, "deadline", None) is not None:
            response = self._send(method, url, body, sent, timeout, stream, host, began)
        else:
            with deadline(self.call_deadline):
                response = self._send(method, url, body, sent, timeout, stream, host, began)
        for listener in self.on_answer:
            listener(response)
        if logs.tracing():  # the answer's head is in; a streamed body comes later
            logs.get().debug(
                "http.call",
                method=method,
                host=host or "",
                status=response.status_code,
                elapsed_ms=round(response.elapsed * 1000, 1),
            )
        return response

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float | tuple[float, float] | None,
        stream: bool,
        host: str | None,
        began: float,
    ) -> Response:
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        try:
            raw = self._manager(url).urlopen(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                retries=self._retries,
                timeout=Timeout(connect=connect or self.timeout[0], read=read or self.timeout[1]),
                preload_content=False,
                decode_content=False,
            )
        except (_LibraryError, OSError, ValueError) as exc:
            # ValueError (UnicodeError too): http.client refusing a header value with a
            # line break in it (a vendor's token, echoed), quoting the value in its message
            raise _lost(exc, host) from None
        response = Response(raw, url, time.monotonic() - began, host)
        if not stream:
            with response:
                response.content  # noqa: B018 - read now, within the call's deadline
        return response

    def _manager(self, url: str) -> urllib3.PoolManager:
        """The pools for `url`: direct, or through the proxy the environment names."""
        proxy = _proxy(url)
        with self._lock:
            manager = self._managers.get(proxy)
            if manager is None:
                manager = self._managers[proxy] = _pools(proxy)
            return manager

    def close(self) -> None:
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            manager.clear()


def _body(
    json: Any, data: Mapping[str, str] | str | bytes | None
) -> tuple[bytes | None, str | None]:
    """The bytes to send and their Content-Type: JSON, a form, or as given."""
    if json is not None:
        return jsonlib.dumps(json, allow_nan=False).encode(), "application/json"
    if isinstance(data, Mapping):
        return urlencode(data, doseq=True).encode(), "application/x-www-form-urlencoded"
    if isinstance(data, str):
        return data.encode(), None
    return data, None


def _pools(proxy: str | None) -> urllib3.PoolManager:
    options: dict[str, Any] = {
        "num_pools": 4,
        "maxsize": 32,
        "cert_reqs": "CERT_REQUIRED",
    }
    if proxy is None:
        manager = urllib3.PoolManager(**options)
    else:
        manager = urllib3.ProxyManager(
            proxy,
            proxy_headers=_proxy_login(proxy),
            # an https proxy is verified as the vendors are (else: the OS store)
            proxy_ssl_context=verifying_context() if proxy.startswith("https:") else None,
            **options,
        )
    manager.pool_classes_by_scheme = _POOLS
    return manager


def _proxy_login(proxy: str) -> dict[str, str]:
    """`Proxy-Authorization` for a proxy URL that carries user:password."""
    auth = urllib3.util.parse_url(proxy).auth
    if not auth:
        return {}
    user, _, password = auth.partition(":")
    login = f"{unquote(user)}:{unquote(password)}".encode()
    return {"Proxy-Authorization": f"Basic {b64encode(login).decode()}"}


def verifying_context() -> ssl.SSLContext:
    """The shared context for the CA bundle in use (the environment's, else certifi's), as
    the file is now: built at the first https connection (plain-http work loads none),
    again only once the file has changed."""
    bundle = _ca_bundle()
    if bundle is None:
        import certifi  # what requests verified with

        bundle = certifi.where()
    try:
        found = Path(bundle).stat()
        stamp = (found.st_mtime_ns, found.st_size, found.st_ino)
    except OSError:
        stamp = (0, 0, 0)  # tls_context says what is wrong with it
    return tls_context(bundle, stamp)


@functools.lru_cache(maxsize=4)
def tls_context(bundle: str, stamp: tuple[int, int, int] = (0, 0, 0)) -> ssl.SSLContext:
    """The one verifying context for a CA bundle file or folder at `stamp` (its mtime,
    size, inode: the cache key), TLS 1.2 or later."""
    del stamp
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    # urllib3 sets ALPN on the context at every connection: on a context the threads share,
    # OpenSSL frees the list while another thread's SSL_new (GIL released) may copy it.
    # It is set once, here, to what urllib3 asks for, and urllib3's later calls do nothing.
    context.set_alpn_protocols(urllib3.util.ssl_.ALPN_PROTOCOLS)
    context.set_alpn_protocols = _alpn_is_set  # type: ignore[method-assign,assignment]
    try:
        if Path(bundle).is_dir():
            context.load_verify_locations(capath=bundle)
        else:
            context.load_verify_locations(cafile=bundle)
    except OSError as exc:  # the operator's path (an SSLError too): a local fault, said so
        code = None if isinstance(exc, ssl.SSLError) else exc.errno
        raise LocalError(
            f"CA bundle {bundle!r} cannot be read: {describe(exc)}", errno=code
        ) from None
    return context


def _alpn_is_set(protocols: list[str]) -> None:
    del protocols


def _ca_bundle() -> str | None:
    """The CA bundle the environment names (requests' own variables), else None."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


_PROXY_VARIABLES = tuple(
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
)


def _proxy(url: str) -> str | None:
    """The proxy the environment names for `url`, or None to connect directly. The answer
    depends on the scheme, host and port, and the proxy variables only: it is kept per
    host and per value of those variables."""
    environment = tuple(os.environ.get(name) for name in _PROXY_VARIABLES)
    if not any(environment):
        return None
    parts = urlsplit(url)
    return _proxy_for(parts.scheme, parts.netloc, environment)


@functools.lru_cache(maxsize=64)
def _proxy_for(scheme: str, netloc: str, environment: tuple[str | None, ...]) -> str | None:
    del environment  # the cache key: the same host under other variables is asked again
    from urllib import request  # only when a proxy variable is set

    proxies = request.getproxies_environment()
    bypassed = request.proxy_bypass_environment  # type: ignore[attr-defined]
    host = urlsplit(f"//{netloc}").hostname or ""
    if bypassed(netloc, proxies) or _bypassed_network(host, proxies):
        return None
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _bypassed_network(host: str, proxies: Mapping[str, str]) -> bool:
    """NO_PROXY's addresses and networks (`::1`, `[::1]`, `10.0.0.0/8`) for an address
    host, as requests honoured them (urllib compares `[::1]` with `::1` as text)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    for entry in proxies.get("no", "").split(","):
        with suppress(ValueError):
            if address in ipaddress.ip_network(entry.strip().strip("[]"), strict=False):
                return True
    return False


def build_session(connect_timeout: float = 10.0, read_timeout: float = 60.0) -> Session:
    """A Session for one vendor (see Session)."""
    return Session((connect_timeout, read_timeout))


def redirect_target(response: Response) -> str:
    """The host a 3xx answer points at (never its path or query), for an error message."""
    location = response.headers.get("Location", "")
    try:
        return connect_target(urljoin(response.url, location)).host
    except (UrlError, ValueError):
        return "an unreadable location"
