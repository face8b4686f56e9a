"""The example hooks in contrib/: run as the daemon runs them (argv, SCOREFETCH_* only)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox.ports import free_port

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
FAILED = {
    "SCOREFETCH_EVENT": "delivery.failed",
    "SCOREFETCH_VENDOR": "collegeboard",
    "SCOREFETCH_FILENAME": "4300_20261121_101544.csv",
    "SCOREFETCH_ERROR": "HTTP 404: not found",
}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, env=base | env, capture_output=True, text=True, timeout=20)


@pytest.fixture
def sendmail(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in sendmail that keeps its arguments and the message it was given."""
    out = tmp_path / "sent"
    fake = tmp_path / "sendmail"
    fake.write_text(f'#!/bin/sh\necho "$@" > {out}.args\ncat > {out}\n')
    fake.chmod(0o755)
    return fake, out


def test_mail_office_sends_one_plain_message_per_failure(sendmail: tuple[Path, Path]) -> None:
    """A final failure is one message to every recipient (`sendmail -t -oi`) with the facts
    and what to do; a delivery sends nothing."""
    fake, out = sendmail
    argv = [str(CONTRIB / "mail-office"), "it@example.edu", "office@example.edu"]
    done = run(argv, FAILED | {"SENDMAIL": str(fake)})
    assert done.returncode == 0, done.stderr
    message = out.read_text()
    assert "To: it@example.edu, office@example.edu\n" in message
    assert "Subject: scorefetch: 4300_20261121_101544.csv was not downloaded\n" in message
    assert "HTTP 404: not found" in message
    assert "scorefetch fetch collegeboard 4300_20261121_101544.csv" in message
    assert Path(f"{out}.args").read_text().split() == ["-t", "-oi"]
    out.unlink()
    auth = {"SCOREFETCH_EVENT": "auth.failing", "SCOREFETCH_VENDOR": "collegeboard"}
    assert run(argv, auth | {"SENDMAIL": str(fake)}).returncode == 0
    assert "refuses our credentials" in out.read_text()
    out.unlink()
    landed = {"SCOREFETCH_EVENT": "delivery.downloaded", "SENDMAIL": str(fake)}
    assert run(argv, landed).returncode == 0
    assert not out.exists()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local incoming-webhook endpoint that keeps what was posted."""
    posted: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            posted.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-part", posted
    server.shutdown()
    server.server_close()


def test_post_webhook_posts_text_read_from_a_url_file(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """The URL comes from a file (it is a secret), the body is {"text": ...}; a URL that is
    not https (off loopback) is refused and a failed post is exit 1 without the URL."""
    url, posted = webhook
    url_file = tmp_path / "webhook_url"
    url_file.write_text(url + "\n")
    hook = str(CONTRIB / "post-webhook")
    landed = {
        "SCOREFETCH_EVENT": "delivery.downloaded",
        "SCOREFETCH_VENDOR": "encoura",
        "SCOREFETCH_FILENAME": "x.csv",
        "SCOREFETCH_BYTES": "12345",
    }
    assert run([hook, str(url_file)], landed).returncode == 0
    assert run([hook, str(url_file)], FAILED).returncode == 0
    assert posted[0] == {"text": "✅ encoura: x.csv landed (12,345 bytes)"}
    assert "HTTP 404: not found" in posted[1]["text"]
    url_file.write_text("http://hooks.example.com/x\n")
    assert run([hook, str(url_file)], landed).returncode == 2
    url_file.write_text(f"http://127.0.0.1:{free_port()}/hook/secret-part\n")  # nobody there
    done = run([hook, str(url_file)], landed)
    assert done.returncode == 1 and "secret-part" not in done.stderr


HOSTILE = FAILED | {
    "SCOREFETCH_FILENAME": "<!channel>.csv",
    "SCOREFETCH_ERROR": "see <https://evil.example/x|click here> & <@U123>\r\nsecond line",
}


def test_post_webhook_escapes_slack_markup_in_every_fact(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """A vendor's file name or error cannot mention @channel or make a link in Slack: `<`,
    `>` and `&` arrive as entities, control characters as spaces."""
    url, posted = webhook
    (tmp_path / "url").write_text(url)
    assert run([str(CONTRIB / "post-webhook"), str(tmp_path / "url")], HOSTILE).returncode == 0
    text = posted[0]["text"]
    assert "<" not in text and ">" not in text and "\n" not in text and "\r" not in text
    assert "&lt;!channel&gt;.csv" in text
    assert "&lt;https://evil.example/x|click here&gt; &amp; &lt;@U123&gt;" in text


def test_post_webhook_teams_sends_an_adaptive_card(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """--teams posts the message shape Teams workflows take: one Adaptive Card attachment
    with the summary and a fact per SCOREFETCH_* value that is set."""
    url, posted = webhook
    (tmp_path / "url").write_text(url)
    hook = [str(CONTRIB / "post-webhook"), "--teams", str(tmp_path / "url")]
    assert run(hook, FAILED).returncode == 0
    (attachment,) = posted[0]["attachments"]
    assert posted[0]["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    summary, table = card["body"]
    assert summary["type"] == "TextBlock" and "HTTP 404: not found" in summary["text"]
    facts = {f["title"]: f["value"] for f in table["facts"]}
    assert facts["Vendor"] == "collegeboard"
    assert facts["File"] == "4300\\_20261121\\_101544.csv"  # Markdown taken literally
    assert set(facts) == {"Event", "Vendor", "File", "Error"}


def test_post_webhook_says_what_a_test_alert_is(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """SCOREFETCH_EVENT=test (doctor --test-alert) reads as a test, not as a failure."""
    url, posted = webhook
    (tmp_path / "url").write_text(url)
    assert (
        run(
            [str(CONTRIB / "post-webhook"), str(tmp_path / "url")], {"SCOREFETCH_EVENT": "test"}
        ).returncode
        == 0
    )
    assert "test alert" in posted[0]["text"]


def test_mail_office_sends_the_test_alert(sendmail: tuple[Path, Path]) -> None:
    """SCOREFETCH_EVENT=test (doctor --test-alert) is mailed, and says nothing is wrong."""
    fake, out = sendmail
    argv = [str(CONTRIB / "mail-office"), "it@example.edu"]
    assert run(argv, {"SCOREFETCH_EVENT": "test", "SENDMAIL": str(fake)}).returncode == 0
    message = out.read_text()
    assert "Subject: scorefetch: test alert from " in message and "Nothing is wrong" in message


@pytest.mark.parametrize(
    "event",
    [
        "delivery.failed",
        "forward.failed",
        "auth.failing",
        "delivery.overdue",
        "delivery.suspect",
        "source.quiet",
        "ledger.failing",
        "daemon.digest",
        "something.new",
    ],
)
def test_mail_office_mails_every_alert_the_daemon_sends(
    sendmail: tuple[Path, Path], event: str
) -> None:
    """Every event on_failure and on_digest carry is mailed with all its facts (the example
    config wires mail-office to both): it mailed three kinds and dropped the rest — a full
    disk, an overdue or suspect file, a ledger failing, the digest — exiting 0."""
    fake, out = sendmail
    facts = {
        "SCOREFETCH_EVENT": event,
        "SCOREFETCH_VENDOR": "encoura",
        "SCOREFETCH_FILENAME": "inquiry 2026.csv",
        "SCOREFETCH_ERROR": "ENOSPC: No space left on device",
        "SCOREFETCH_SUMMARY": "collegeboard: 4 landed",
        "SENDMAIL": str(fake),
    }
    assert run([str(CONTRIB / "mail-office"), "it@example.edu"], facts).returncode == 0
    message = out.read_text()
    assert message.startswith("To: it@example.edu\nSubject: scorefetch")
    assert "ENOSPC: No space left on device" in message and "inquiry 2026.csv" in message
