"""Token caching and refresh margins (injected clock), and each provider's error shapes."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from scorefetch.config import CommandOAuth, GoogleOAuth
from scorefetch.core.answers import MAX_ANSWER_BYTES
from scorefetch.core.errors import TokenError
from scorefetch.core.http import build_session
from scorefetch.mailbox.tokens import CommandTokens, GoogleTokens, Grant, TokenCache, refresh_margin
from scorefetch.sandbox.ports import free_port
from tests.standins.oauth import OAuthAuthority


class FakeSource:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.fetched = 0
        self.resets = 0

    def fetch(self) -> Grant:
        self.fetched += 1
        return Grant(f"token-{self.fetched}", self.lifetime)

    def reset(self) -> None:
        self.resets += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(3600.0, 300.0), (1500.0, 300.0), (600.0, 120.0), (5.0, 1.0)]
)
def test_refresh_margin(lifetime: float, margin: float) -> None:
    """Five minutes before expiry, or a fifth of the life of a short-lived token."""
    assert refresh_margin(lifetime) == margin


def test_cache_reuses_token_until_the_margin() -> None:
    """The same token until 5 minutes before expiry, then a new one; renew_at follows."""
    clock, source = Clock(), FakeSource(3600.0)
    cache = TokenCache(source, clock)
    assert (cache.expires_at(), cache.renew_at()) == (None, None)
    assert cache.get() == ("token-1", True)
    assert (cache.expires_at(), cache.renew_at()) == (4600.0, 4300.0)
    clock.now = 4299.0
    assert cache.get() == ("token-1", False)
    clock.now = 4300.0
    assert cache.get() == ("token-2", True)
    assert cache.renew_at() == 4300.0 + 3300.0
    assert source.fetched == cache.fetches == 2


def test_invalidate_forgets_token_and_resets_source() -> None:
    """After invalidate() the next get() asks the provider, even well before expiry."""
    clock, source = Clock(), FakeSource(3600.0)
    cache = TokenCache(source, clock)
    cache.get()
    cache.invalidate()
    assert cache.renew_at() is None and source.resets == 1
    assert cache.get() == ("token-2", True)


def test_failed_fetch_keeps_nothing() -> None:
    """A TokenError passes through; nothing is cached, the next get() tries again."""

    class Failing(FakeSource):
        def fetch(self) -> Grant:
            self.fetched += 1
            raise TokenError("down", refused=False)

    cache = TokenCache(Failing(60.0), Clock())
    for _ in range(2):
        with pytest.raises(TokenError):
            cache.get()
    assert cache.expires_at() is None


def test_grant_repr_hides_token() -> None:
    """A Grant in a traceback or log shows its lifetime, never the token."""
    assert "s3cret" not in repr(Grant("s3cret", 60.0))


# ---------------------------------------------------------------- google, over real HTTP


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthAuthority]:
    with OAuthAuthority(tmp_path_factory.mktemp("authority"), token_lifetime=1234) as server:
        yield server


def google(authority: OAuthAuthority, **changes: Any) -> GoogleTokens:
    values: dict[str, Any] = {
        "method": "xoauth2",
        "provider": "google",
        "client_id": authority.client_id,
        "client_secret": authority.client_secret,
        "refresh_token": authority.refresh_token,
        "token_url": f"{authority.http_url}/token",
        **changes,
    }
    return GoogleTokens(GoogleOAuth.model_validate(values), build_session(1.0, 5.0))


def test_google_refresh_grant(authority: OAuthAuthority) -> None:
    """The refresh token buys an access token and its lifetime."""
    grant = google(authority).fetch()
    assert grant.lifetime == 1234.0
    assert grant.token in authority.issued_tokens()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"refresh_token": SecretStr("revoked")}, "invalid_grant"),
        ({"client_secret": SecretStr("nope")}, "invalid_client"),
    ],
)
def test_google_refusals_are_refused(
    authority: OAuthAuthority, changes: dict[str, Any], error: str
) -> None:
    """invalid_grant / invalid_client mean the credentials: refused, no secret in the text."""
    with pytest.raises(TokenError) as excinfo:
        google(authority, **changes).fetch()
    assert excinfo.value.refused
    assert error in str(excinfo.value)
    assert authority.refresh_token not in str(excinfo.value)


def test_google_unreachable_is_transient(authority: OAuthAuthority) -> None:
    """Nothing listening is a passing failure, retried with the usual backoff."""
    source = google(authority, token_url=f"http://127.0.0.1:{free_port()}/token")
    with pytest.raises(TokenError) as excinfo:
        source.fetch()
    assert not excinfo.value.refused


# ---------------------------------------------------------------- token_command


def command(argv: list[str], timeout: float = 5.0) -> CommandTokens:
    config = CommandOAuth.model_validate(
        {
            "method": "xoauth2",
            "provider": "command",
            "token_command": argv,
            "command_timeout": timeout,
        }
    )
    return CommandTokens(config, subprocess.run)


def script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


def test_command_stdout_is_the_token() -> None:
    """The token is stdout without its newline; the lifetime is token_lifetime (10m)."""
    grant = command(script("print('ya29.abc')")).fetch()
    assert (grant.token, grant.lifetime) == ("ya29.abc", 600.0)


def test_command_failure_names_status_and_stderr_never_stdout() -> None:
    """Non-zero exit: status and stderr tail in the error; stdout (a token) is masked."""
    body = "import sys; print('tok-XYZ'); sys.stderr.write('boom: tok-XYZ expired'); sys.exit(4)"
    with pytest.raises(TokenError) as excinfo:
        command(script(body)).fetch()
    message = str(excinfo.value)
    assert "exited with status 4" in message and "boom" in message
    assert "tok-XYZ" not in message
    assert not excinfo.value.refused


def test_command_timeout() -> None:
    """A command that hangs is stopped after command_timeout."""
    with pytest.raises(TokenError, match=r"did not finish within 0\.5s"):
        command(script("import time; time.sleep(10)"), timeout=0.5).fetch()  # it hangs


def test_command_missing_is_refused(tmp_path: Path) -> None:
    """A command that cannot be run is a configuration problem: refused (slow retry)."""
    with pytest.raises(TokenError, match="cannot run token_command") as excinfo:
        command([str(tmp_path / "no-such-helper")]).fetch()
    assert excinfo.value.refused


@pytest.mark.parametrize("output", ["", "two words"])
def test_command_output_must_be_one_token(output: str) -> None:
    """Empty output or several words is an error, not a login with garbage."""
    with pytest.raises(TokenError, match="must print the access token alone"):
        command(script(f"print({output!r})")).fetch()


class _HugeAnswer(http.server.BaseHTTPRequestHandler):
    """A token endpoint that answers 200 with far more than any token answer holds."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        with contextlib.suppress(OSError):  # the client stops reading: that is the point
            self.wfile.write(b'{"access_token": "' + b"x" * (MAX_ANSWER_BYTES + 1024) + b'"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_google_answer_too_large_is_a_passing_token_error(authority: OAuthAuthority) -> None:
    """A token endpoint answering with megabytes is a TokenError, read no further than the
    bound (memory stays bounded), and retried like any passing failure."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HugeAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/token"
        with pytest.raises(TokenError) as raised:
            google(authority, token_url=url).fetch()
        assert not raised.value.refused
        assert "larger than" in str(raised.value)
    finally:
        server.shutdown()
        server.server_close()
