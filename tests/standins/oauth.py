"""A local stand-in for the OAuth2 authorities of Microsoft 365 and Google, and the token
introspection endpoint a mail server asks (Dovecot's oauth2 passdb).

One token store behind two loopback listeners: https (msal accepts no other
authority) and http (Dovecot's introspection, and the Google-style endpoint):

- `GET /{tenant}/v2.0/.well-known/openid-configuration` — what msal reads first;
- `POST /{tenant}/oauth2/v2.0/token` — client credentials (Microsoft identity platform),
  by client secret or by certificate: a JWT client assertion whose signature, `x5t`
  thumbprint, audience, issuer and expiry are checked as Entra checks them;
- `POST /token` — the refresh-token grant (Google);
- `POST /introspect` (form `token=`) or `GET /introspect` with `Authorization: Bearer` —
  RFC 7662: `{"active": true, "username": ...}` while the token lives, else inactive.

Tokens really expire `token_lifetime` seconds after they were issued.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from scorefetch.sandbox.ports import Lifecycle
from tests.standins.tls import LoopbackTls, make_client_certificate, make_loopback_tls

OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
_MICROSOFT_TOKEN = re.compile(r"^/([^/]+)/oauth2/v2\.0/token$")
_OPENID = re.compile(r"^/([^/]+)/v2\.0/\.well-known/openid-configuration$")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Stats:
    """Calls by kind; `issued` counts tokens handed out, `refused` token requests turned down."""

    client_credentials: int = 0
    assertions_accepted: int = 0  # client credentials proven by certificate
    refresh_grants: int = 0
    issued: int = 0
    refused: int = 0
    introspections: int = 0
    active_answers: int = 0
    request_times: list[float] = field(default_factory=list)  # monotonic, token requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, authority: OAuthAuthority) -> None:
        super().__init__((host, 0), _Handler)
        self.authority = authority

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "sandbox-oauth"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: request lines would carry nothing secret, but clutter test output

    @property
    def authority(self) -> OAuthAuthority:
        server: _Server = self.server  # type: ignore[assignment]
        return server.authority

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if match := _OPENID.match(path):
            self._reply(*self.authority.openid_configuration(match.group(1)))
        elif path == "/introspect":
            bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            self._reply(*self.authority.introspect(bearer, missing_is_401=True))
        else:
            self._reply(404, {"error": "not_found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        form = self._form()
        if match := _MICROSOFT_TOKEN.match(path):
            self._reply(*self.authority.client_credentials(match.group(1), form))
        elif path == "/token":
            self._reply(*self.authority.refresh_grant(form))
        elif path == "/introspect":
            self._reply(*self.authority.introspect(form.get("token", "")))
        else:
            self._reply(404, {"error": "not_found"})


class OAuthAuthority(Lifecycle):
    """One app registration (tenant, client id and secret, a refresh token) granting access
    to one mailbox. `token_lifetime` can be changed between requests."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        username: str = "scores@example.edu",
        tenant: str = "sandbox-tenant",
        client_id: str = "sandbox-client-id",
        token_lifetime: float = 3600.0,
    ) -> None:
        self.workdir = workdir
        self.username = username
        self.tenant = tenant
        self.client_id = client_id
        self.client_secret = "client-secret-" + secrets.token_urlsafe(12)
        self.refresh_token = "1//refresh-" + secrets.token_urlsafe(18)
        self.token_lifetime = token_lifetime
        self.stats = Stats()
        self.tls: LoopbackTls | None = None
        self.certificate_pem = ""  # the app's private key and certificate (PEM), after start()
        self.thumbprint = ""  # SHA-1 of that certificate in hex, as Entra shows it
        self._public_key: Any = None
        self._tokens: dict[str, float] = {}  # access token → expiry (monotonic)
        self._lock = threading.Lock()
        self._servers: list[_Server] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.tls = make_loopback_tls(self.workdir / "tls")
        self.certificate_pem, self.thumbprint, self._public_key = make_client_certificate(
            self.client_id
        )
        plain, secure = _Server(self.host, self), _Server(self.host, self)
        secure.socket = self.tls.server_context().wrap_socket(secure.socket, server_side=True)
        self._servers = [plain, secure]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self._servers[0].server_address[1]}"

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self._servers[1].server_address[1]}"

    @property
    def ca_file(self) -> Path:
        assert self.tls is not None, "start() first"
        return self.tls.ca_file

    # ------------------------------------------------------------------ test controls

    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far (for secret checks on log output)."""
        with self._lock:
            return list(self._tokens)

    def revoke_all(self) -> None:
        """Every token issued so far becomes inactive at once (revoked, or expired early)."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    # ------------------------------------------------------------------ endpoints

    def openid_configuration(self, tenant: str) -> tuple[int, dict[str, Any]]:
        if tenant != self.tenant:
            return 400, {"error": "invalid_tenant", "error_description": "Tenant not found."}
        base = f"{self.https_url}/{tenant}"
        return 200, {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        }

    def client_credentials(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.stats.client_credentials += 1
            self.stats.request_times.append(time.monotonic())
        if form.get("grant_type") != "client_credentials":
            return self._refuse(400, "unsupported_grant_type", "AADSTS70003")
        if tenant != self.tenant:
            return self._refuse(400, "invalid_request", "AADSTS90002: Tenant not found.")
        if form.get("client_id") != self.client_id:
            return self._refuse(400, "unauthorized_client", "AADSTS700016: Application not found.")
        if "client_assertion" in form:
            problem = self._assertion_problem(tenant, form)
            if problem:
                return self._refuse(401, "invalid_client", problem)
            with self._lock:
                self.stats.assertions_accepted += 1
        elif not secrets.compare_digest(form.get("client_secret", ""), self.client_secret):
            return self._refuse(
                401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
            )
        if form.get("scope") != OUTLOOK_SCOPE:
            return self._refuse(400, "invalid_scope", "AADSTS1002012: scope is not valid.")
        token, lifetime = self._issue("eyJ0eXAi.ms-")
        return 200, {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _assertion_problem(self, tenant: str, form: dict[str, str]) -> str:
        """Why a certificate credential (RFC 7523 client assertion) fails, or ""."""
        import jwt  # PyJWT comes with msal

        if form.get("client_assertion_type") != JWT_BEARER:
            return "AADSTS7000219: client_assertion_type is invalid."
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            jwt.decode(
                assertion,
                self._public_key,
                algorithms=["RS256", "PS256"],
                audience=f"{self.https_url}/{tenant}/oauth2/v2.0/token",
                issuer=self.client_id,
                options={"require": ["exp", "aud", "iss", "sub", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return f"AADSTS700027: Client assertion failed signature validation. ({exc})"
        thumbprint = base64.urlsafe_b64encode(bytes.fromhex(self.thumbprint)).decode()
        if header.get("x5t", "").rstrip("=") != thumbprint.rstrip("="):
            return (
                "AADSTS700027: The certificate with identifier used to sign the client "
                "assertion is not registered on application."
            )
        return ""

    def refresh_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.stats.refresh_grants += 1
            self.stats.request_times.append(time.monotonic())
        if form.get("grant_type") != "refresh_token":
            return self._refuse(400, "unsupported_grant_type", "Invalid grant_type.")
        if form.get("client_id") != self.client_id or not secrets.compare_digest(
            form.get("client_secret", ""), self.client_secret
        ):
            return self._refuse(401, "invalid_client", "Unauthorized")
        if not secrets.compare_digest(form.get("refresh_token", ""), self.refresh_token):
            return self._refuse(400, "invalid_grant", "Token has been expired or revoked.")
        token, lifetime = self._issue("ya29.")
        return 200, {
            "access_token": token,
            "expires_in": lifetime,
            "scope": "https://mail.google.com/",
            "token_type": "Bearer",
        }

    def introspect(self, token: str, missing_is_401: bool = False) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            self.stats.introspections += 1
            expires = self._tokens.get(token) if token else None
            active = expires is not None and now < expires
            if active:
                self.stats.active_answers += 1
        if active:
            return 200, {"active": True, "username": self.username, "token_type": "Bearer"}
        if missing_is_401:
            return 401, {"error": "invalid_token"}
        return 200, {"active": False}

    def _issue(self, prefix: str) -> tuple[str, int]:
        lifetime = self.token_lifetime
        token = prefix + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + lifetime
            self.stats.issued += 1
        return token, max(1, round(lifetime))

    def _refuse(self, status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.stats.refused += 1
        return status, {"error": error, "error_description": description}
