"""Log lines: JSON shape, and the last-line scrubbing of secrets and presigned queries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scorefetch.core import logs
from tests.support import LogLines


def test_json_line_has_timestamp_level_event_and_bound_fields(log_lines: LogLines) -> None:
    """One JSON object per line with an ISO UTC timestamp, the level, the event and bound fields."""
    logs.get(vendor="collegeboard").info("delivery.skipped", filename="a.txt", reason="format")
    (event,) = log_lines.events()
    assert event["event"] == "delivery.skipped" and event["level"] == "info"
    assert event["vendor"] == "collegeboard" and event["reason"] == "format"
    assert str(event["timestamp"]).endswith("Z")


@pytest.mark.parametrize(
    "field",
    ["password", "api_key", "apikey", "session_token", "secret", "Authorization", "x_api_key"],
)
def test_secret_named_fields_are_masked(log_lines: LogLines, field: str) -> None:
    """A field named like a secret never shows its value, whatever the caller passed."""
    logs.get().warning("oops", **{field: "hunter2-very-secret"})
    assert "hunter2-very-secret" not in log_lines.getvalue()
    assert log_lines.events()[0][field] == "********"


@pytest.mark.parametrize(
    "field",
    [
        "client_secret",
        "refresh_token",
        "access_token",
        "token",
        "certificate",
        "private_key",
        "client_assertion",
    ],
)
def test_oauth_secret_fields_are_masked(log_lines: LogLines, field: str) -> None:
    """The OAuth2 settings and values (imap.auth) are masked like passwords."""
    logs.get().info("imap.token_obtained", **{field: "ya29.very-secret"})
    assert "ya29.very-secret" not in log_lines.getvalue()
    assert log_lines.events()[0][field] == "********"


def test_token_event_fields_stay_readable(log_lines: LogLines) -> None:
    """The fields imap.token_* events do carry are not secrets and are not masked."""
    logs.get().info("imap.token_obtained", provider="microsoft", expires_in_s=3599)
    assert log_lines.events()[0]["provider"] == "microsoft"
    assert log_lines.events()[0]["expires_in_s"] == 3599


def test_url_queries_are_cut_everywhere(log_lines: LogLines) -> None:
    """Presigned URLs keep scheme, host and path; their query never reaches the line."""
    url = "https://bucket.s3.amazonaws.com/4300_1.csv?X-Amz-Signature=abc123&Expires=1700000000"
    logs.get().error("delivery.failed", error=f"403 for url: {url}", urls=[url], nested=(url,))
    text = log_lines.getvalue()
    assert "X-Amz-Signature" not in text and "abc123" not in text and "Expires=" not in text
    assert "https://bucket.s3.amazonaws.com/4300_1.csv?…" in log_lines.events()[0]["error"]


def test_level_filter(log_lines: LogLines) -> None:
    """Below the configured level nothing is written."""
    logs.configure("json", "warning", log_lines)
    logs.get().info("quiet")
    logs.get().warning("loud")
    assert [e["event"] for e in log_lines.events()] == ["loud"]


def test_strip_query_leaves_plain_text() -> None:
    """Text without URLs, and URLs without a query, are unchanged."""
    assert logs.strip_query("no url here ?x=1") == "no url here ?x=1"
    assert logs.strip_query("see https://h/p") == "see https://h/p"


def test_readme_lists_every_event_the_daemon_logs() -> None:
    """Event names are an interface: each one the daemon can log is in the README's table,
    and the table names none that the code never logs."""
    root = Path(__file__).resolve().parents[1]
    call = re.compile(r'\.(?:debug|info|warning|error|critical)\(\s*"([a-z_]+\.[a-z_]+)"')
    logged = {
        name
        for path in (root / "daemon" / "scorefetch").rglob("*.py")
        if "sandbox" not in path.parts
        for name in call.findall(path.read_text())
    }
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Log events") : readme.index("## Running it under systemd")]
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", table))
    assert len(logged) >= 25  # the pattern still finds the calls
    assert logged - documented == set(), "logged but not in the README"
    assert documented - logged == set(), "in the README but never logged"


@pytest.mark.parametrize("name", ["stdout", "stderr"])
def test_logging_writes_to_the_stream_of_the_moment(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Configured for stdout or stderr, a line goes to whatever `sys.<name>` is when it is
    written: a stream captured while logging was configured (doctor run in-process under
    capture, a test's captured output) is closed afterwards and must not break the next line,
    from structlog or from a library through the standard library."""
    import io
    import logging
    import sys

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, name, first)
    try:
        logs.configure("json", "info", logs.STDOUT if name == "stdout" else logs.STDERR)
        first.close()
        monkeypatch.setattr(sys, name, second)
        logs.get().warning("probe.line", n=1)
        logging.getLogger("somelib").warning("library line")
    finally:
        logs.configure("json", "info")
    text = second.getvalue()
    assert '"probe.line"' in text
    assert ("library line" in text) == (name == "stderr")  # libraries speak on stderr


@given(st.text(alphabet=st.characters(blacklist_characters="?=:"), max_size=200))
def test_scrub_text_shortcut_changes_nothing_the_patterns_would(text: str) -> None:
    """Text without `?`, `=` or `:` skips the patterns; none of them could have matched it."""
    slow = logs._ANY_QUERY.sub("?…", logs.strip_query(text))
    slow = logs._SECRET_PARAM.sub(r"\1=…", slow)
    slow = logs._SECRET_MEMBER.sub(r"\1\2…\2", slow)
    assert logs._SECRET_HEADER.sub(r"\1\2…", slow) == logs.scrub_text(text) == text
