"""core/http.py against real loopback servers: what goes on the wire, which connection
carries it, which certificate verifies it, and which proxy it goes through."""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from scorefetch.config.sources import MicrosoftOAuth
from scorefetch.core.answers import json_answer
from scorefetch.core.errors import Failure, TokenError, VendorError, describe
from scorefetch.core.http import (
    ConnectFailed,
    HttpError,
    StatusError,
    _proxy,
    build_session,
    deadline,
    tls_context,
    verifying_context,
)
from scorefetch.mailbox.tokens import MicrosoftTokens
from tests.standins.recorder import Recorder
from tests.standins.tls import LoopbackTls, make_loopback_tls
from tests.support import wait_until

BIG = b"x" * (256 * 1024)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 and the vendors' APIs answer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        server: Server = self.server  # type: ignore[assignment]
        with server.lock:
            server.seen.append((self.command, self.path, dict(self.headers), self._body()))
            server.peers.add(self.client_address)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        if self.path.startswith("/big"):
            self._answer(200, BIG)
        elif self.path.startswith("/status/"):
            self._answer(int(self.path.rsplit("/", 1)[1]), b"{}")
        else:
            self._answer(200, b'{"ok": true}')

    do_POST = do_GET


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake, a dropped client: what these tests make happen

    def __init__(self, tls: LoopbackTls | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.peers: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        if tls is not None:
            self.socket = tls.server_context().wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"

    def url(self, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.server_address[1]}"


def serving(tls: LoopbackTls | None = None) -> Iterator[Server]:
    server = Server(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain() -> Iterator[Server]:
    yield from serving()


@pytest.fixture
def tls(tmp_path: Path) -> LoopbackTls:
    return make_loopback_tls(tmp_path / "tls")


@pytest.fixture
def secure(tls: LoopbackTls, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    tls_context.cache_clear()
    yield from serving(tls)
    tls_context.cache_clear()


# --- what goes on the wire ---


def test_a_call_sends_what_requests_sent(plain: Server) -> None:
    """User-Agent, Accept, Accept-Encoding; params encoded like requests did (space `+`);
    a JSON body with its type; a form with its type."""
    session = build_session(2.0, 5.0)
    session.post(f"{plain.url()}/file?a=1", params={"filename": "ABC 2024+x.csv"}, json={"k": 1})
    session.post(f"{plain.url()}/token", data={"grant_type": "refresh_token", "x": "a&b"})
    (_, path, headers, body), (_, _, form_headers, form) = plain.seen
    assert path == "/file?a=1&filename=ABC+2024%2Bx.csv"
    assert headers["User-Agent"].startswith("scorefetch/")
    assert headers["Accept"] == "*/*" and "gzip" in headers["Accept-Encoding"]
    assert headers["Content-Type"] == "application/json" and json.loads(body) == {"k": 1}
    assert form_headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form == b"grant_type=refresh_token&x=a%26b"


def test_a_callers_header_wins_over_the_sessions(plain: Server) -> None:
    build_session().get(f"{plain.url()}/x", headers={"Accept": "application/json"})
    assert plain.seen[0][2]["Accept"] == "application/json"


def test_an_answer_reads_as_text_json_and_status(plain: Server) -> None:
    session = build_session()
    answer = session.get(f"{plain.url()}/x")
    assert answer.status_code == 200 and answer.json() == {"ok": True}
    assert answer.text == '{"ok": true}' and answer.elapsed >= 0
    answer.raise_for_status()
    with pytest.raises(StatusError) as caught:
        session.get(f"{plain.url()}/status/503").raise_for_status()
    assert caught.value.status == 503 and describe(caught.value).startswith("StatusError")


def test_a_redirect_is_never_followed(plain: Server) -> None:
    answer = build_session().get(f"{plain.url()}/status/302")
    assert answer.status_code == 302 and len(plain.seen) == 1


def test_listeners_hear_every_answer(plain: Server) -> None:
    session = build_session()
    heard: list[int] = []
    session.on_answer.append(lambda answer: heard.append(answer.status_code))
    session.get(f"{plain.url()}/x")
    session.get(f"{plain.url()}/status/404")
    assert heard == [200, 404]


# --- which connection carries it ---


def test_a_connection_is_reused_once_its_answer_is_read(plain: Server) -> None:
    session = build_session()
    for _ in range(3):
        session.get(f"{plain.url()}/x")
    with session.get(f"{plain.url()}/big", stream=True) as answer:
        assert b"".join(answer.iter_content(65536)) == BIG
    session.get(f"{plain.url()}/x")
    assert len(plain.peers) == 1


def test_a_body_left_unread_closes_its_connection(plain: Server) -> None:
    """The next call cannot start on a connection with the rest of a body in it."""
    session = build_session()
    with session.get(f"{plain.url()}/big", stream=True) as answer:
        assert len(next(answer.iter_content(1024))) <= 1024
    assert session.get(f"{plain.url()}/x").json() == {"ok": True}
    assert len(plain.peers) == 2


def test_a_refused_connection_is_a_connect_failure_that_names_the_host() -> None:
    with Recorder() as closed:
        port = closed.port
    with pytest.raises(ConnectFailed) as caught:
        build_session(1.0, 1.0).get(f"http://127.0.0.1:{port}/a.csv?X-Amz-Signature=s3cr3t")
    text = describe(caught.value)
    assert "ECONNREFUSED" in text and "127.0.0.1" in text and "s3cr3t" not in text


# --- which certificate verifies it ---


def test_https_verifies_against_the_bundle_and_the_name(secure: Server) -> None:
    session = build_session(2.0, 5.0)
    assert session.get(f"{secure.url()}/x").json() == {"ok": True}
    assert session.get(f"{secure.url('localhost')}/x").json() == {"ok": True}


def test_one_tls_context_serves_every_connection(secure: Server) -> None:
    """The CA bundle is read once for the process, not once per connection or pool."""
    for session in (build_session(), build_session()):
        session.get(f"{secure.url()}/x")
        session.get(f"{secure.url('localhost')}/x")
    info = tls_context.cache_info()
    assert info.misses == 1 and info.currsize == 1 and len(secure.peers) == 4


def test_plain_http_never_loads_a_ca_bundle(plain: Server) -> None:
    tls_context.cache_clear()
    build_session().get(f"{plain.url()}/x")
    assert tls_context.cache_info().currsize == 0


def test_a_certificate_from_another_ca_is_refused(
    secure: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_loopback_tls(tmp_path / "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_file))
    with pytest.raises(ConnectFailed) as caught:
        build_session(2.0, 2.0).get(f"{secure.url()}/x")
    assert "SSL" in describe(caught.value) and secure.seen == []


def test_a_name_the_certificate_does_not_carry_is_refused(secure: Server) -> None:
    """The certificate is for 127.0.0.1 and localhost; 127.0.0.2 reaches the same server."""
    with pytest.raises(ConnectFailed):
        build_session(2.0, 2.0).get(f"{secure.url('127.0.0.2')}/x")
    assert secure.seen == []


def test_the_default_bundle_refuses_a_private_ca(
    tls: LoopbackTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    for server in serving(tls):
        with pytest.raises(HttpError):
            build_session(2.0, 2.0).get(f"{server.url()}/x")
        assert server.seen == []
    assert verifying_context().verify_mode == ssl.CERT_REQUIRED


# --- which proxy it goes through ---


def test_a_proxy_login_in_the_environment_is_sent_to_the_proxy_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Recorder() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url.replace("http://", "http://of%40fice:p%3Ass@"))
        build_session(2.0, 2.0).get("http://files.example/a.csv")
    sent = proxy.everything()
    login = base64.b64encode(b"of@fice:p:ss").decode()
    assert f"Proxy-Authorization: Basic {login}".encode() in sent
    assert b"GET http://files.example/a.csv" in sent


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "10.0.0.1, 127.0.0.1", "*", "10.0.0.0/8"])
def test_no_proxy_names_and_networks_bypass_the_proxy(
    no_proxy: str, plain: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host NO_PROXY names, by address, network (as requests read it) or `*`, is reached
    directly; one it does not name goes through the proxy."""
    with Recorder() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", no_proxy)
        build_session(2.0, 2.0).get(f"{plain.url()}/x")
    direct = no_proxy != "10.0.0.0/8"
    assert (len(plain.seen) == 1) is direct
    assert (proxy.connections == 0) is direct


# --- what a hostile answer or URL cannot make of a call ---


def test_a_header_with_a_line_break_fails_the_call_and_quotes_nothing(plain: Server) -> None:
    """A vendor's token sent back as a header (Encoura's sessionToken, msal's telemetry of
    an authority's error) with a line break in it: http.client refuses it quoting the
    value; the call fails as a connection does, retried, and says only the class."""
    token = {"Authorization": "JWT eyJ.S3SSIONSECRET.x\r\nX-Injected: 1"}
    with pytest.raises(ConnectFailed) as caught:
        build_session().get(f"{plain.url()}/x", headers=token)
    assert "S3SSIONSECRET" not in repr(caught.value) + describe(caught.value)
    with pytest.raises(VendorError) as api:
        json_answer(build_session(), "GET", f"{plain.url()}/x", "/exports", headers=token)
    assert api.value.kind == Failure.TRANSIENT and "S3SSIONSECRET" not in str(api.value)
    assert plain.seen == []


@pytest.mark.parametrize(
    "url", ["http://[::1/x", "http://[v1.x]/x", "http://h:99999/x", "x", "ftp://h/x", "//h/x"]
)
def test_an_unreadable_url_fails_the_call(url: str) -> None:
    with pytest.raises(HttpError):
        build_session(1.0, 1.0).get(url)


def test_a_connection_back_in_the_pool_leaves_the_deadline(plain: Server) -> None:
    """A download's deadline runs on through its fsync and rename, after its connection
    went back to the pool: passing then, it must not shut that connection under the next
    call (another thread's, in the daemon)."""
    session = build_session()
    with deadline(60.0) as clock:
        session.get(f"{plain.url()}/x")
        clock._fire()  # the deadline passes while the file is being placed
    assert session.get(f"{plain.url()}/x").json() == {"ok": True}
    assert len(plain.peers) == 1


def test_the_shared_context_offers_http1_once_and_for_all(secure: Server) -> None:
    """urllib3 sets ALPN at every connection; on the one context the threads share, that
    would free a list another thread's handshake may be copying. It is set once."""
    build_session().get(f"{secure.url()}/x")
    context = verifying_context()
    context.set_alpn_protocols(["h2"])  # what a later connection's call does: nothing
    assert build_session().get(f"{secure.url('localhost')}/x").status_code == 200


# --- proxies that speak TLS or IPv6 ---


class TunnelProxy:
    """A CONNECT proxy (TLS to the client when given a certificate) that sends every
    tunnel to `target` on 127.0.0.1 and keeps each request head it was sent."""

    def __init__(self, target: int, tls: LoopbackTls | None = None) -> None:
        self.target, self.tls, self.heads = target, tls, list[bytes]()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            if self.tls is not None:
                conn = self.tls.server_context().wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096) or b"\r\n\r\n"
            self.heads.append(head)
            upstream = socket.create_connection(("127.0.0.1", self.target))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            pair = {conn: upstream, upstream: conn}
            while True:
                ready, _, _ = select.select(list(pair), [], [], 10)
                data = ready[0].recv(65536) if ready else b""
                if not data:
                    return
                pair[ready[0]].sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_an_https_proxy_is_verified_with_the_same_bundle(
    secure: Server, tls: LoopbackTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY=https://…: the proxy's certificate is checked against the bundle the
    vendors' are (REQUESTS_CA_BUNDLE here), not the OS store; the tunnel carries TLS to
    the vendor verified as ever."""
    proxy = TunnelProxy(secure.server_address[1], tls)
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"https://localhost:{proxy.port}")
        answer = build_session(2.0, 5.0).get(f"{secure.url('localhost')}/x")
    finally:
        proxy.close()
    assert answer.json() == {"ok": True}
    assert proxy.heads[0].startswith(b"CONNECT localhost:")


@pytest.mark.parametrize("no_proxy", ["::1", "[::1]", "::/64", "localhost,::1"])
def test_no_proxy_names_an_ipv6_address_as_requests_read_it(
    no_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert _proxy("http://[::1]:8080/a.csv") is None
    beyond = None if no_proxy == "::/64" else "http://proxy.example:3128"  # ::2 in ::/64
    assert _proxy("http://[::2]:8080/a.csv") == beyond


# --- msal over this session (Microsoft 365) ---


class Authority(BaseHTTPRequestHandler):
    """An https OAuth2 authority: discovery, and client-credentials tokens that msal is
    told to refresh after a second; `down` drops every token request, `status` answers
    it with that status."""

    protocol_version = "HTTP/1.1"
    down = False
    status = 200
    issued = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        port = self.server.server_address[1]  # type: ignore[index]
        base = f"https://localhost:{port}/tenant"
        self._json(
            200,
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
            },
        )

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if Authority.down:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if Authority.status != 200:
            self._json(Authority.status, {"error": "temporarily_unavailable"})
            return
        Authority.issued += 1
        self._json(
            200,
            {
                "token_type": "Bearer",
                "access_token": f"AT-{Authority.issued}",
                "expires_in": 3600,
                "refresh_in": 1,
            },
        )


@pytest.fixture
def authority(tls: LoopbackTls, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    tls_context.cache_clear()
    Authority.down, Authority.status, Authority.issued = False, 200, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Authority)
    server.daemon_threads = True
    server.handle_error = lambda *_: None  # type: ignore[method-assign]
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        tls_context.cache_clear()


def microsoft(authority: str) -> MicrosoftTokens:
    config = MicrosoftOAuth(
        method="xoauth2",
        provider="microsoft",
        tenant_id="tenant",
        client_id="app",
        client_secret=SecretStr("app-secret"),
        authority=authority,
    )
    return MicrosoftTokens(config, build_session(2.0, 2.0))


def test_msal_keeps_a_valid_token_while_its_early_refresh_fails(authority: str) -> None:
    """msal refreshes a token early (`refresh_in`) and, when that call fails with the HTTP
    client's exception, keeps the one it has: our session's exception must be the one it
    knows, or an authority outage becomes a failed login while the token is still good."""
    tokens = microsoft(authority)
    first = tokens.fetch()
    assert first.token == "AT-1"
    started = time.time()
    wait_until(lambda: time.time() > started + 1.5, timeout=10)  # past msal's refresh_on
    Authority.down = True
    assert tokens.fetch().token == "AT-1"
    Authority.down = False
    assert tokens.fetch().token == "AT-2"  # refreshed once the authority answers


def test_a_token_service_error_is_a_passing_failure(authority: str) -> None:
    """A 5xx at the token endpoint (msal raises its own MsalServiceError) is a TokenError
    that a retry may cure, not a crash of the mailbox loop."""
    Authority.status = 503
    with pytest.raises(TokenError) as caught:
        microsoft(authority).fetch()
    assert caught.value.refused is False and "app-secret" not in str(caught.value)


def test_a_ca_bundle_replaced_while_running_is_read_for_the_next_connection(
    secure: Server, tls: LoopbackTls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """update-ca-certificates (or a new bundle file) while the daemon runs: the next
    connection verifies with what the file says now, no restart; an unchanged file is not
    read again."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(make_loopback_tls(tmp_path / "other").ca_file.read_bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    session = build_session(2.0, 5.0)
    with pytest.raises(ConnectFailed):
        session.get(f"{secure.url()}/x")
    fresh = tmp_path / "fresh.pem"
    fresh.write_bytes(tls.ca_file.read_bytes())
    fresh.replace(bundle)  # as update-ca-certificates does: a new file in its place
    assert session.get(f"{secure.url()}/x").json() == {"ok": True}
    assert session.get(f"{secure.url('localhost')}/x").json() == {"ok": True}
    assert tls_context.cache_info().misses == 2
