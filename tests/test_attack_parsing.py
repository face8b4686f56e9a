"""Parse as real mail and real files are written. A genuine notification whose From
display name is an encoded word inside quotes was refused; pymap's flat-string
Content-Disposition let HTML attachments count as inline parts; a known_hosts file with
`@revoked` or `@cert-authority` crashed config loading (exit 1, not 78), and a second key
of one type (a rotation) was dropped."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import textwrap
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from scorefetch import sources
from scorefetch.cli import main
from scorefetch.collegeboard.notifications import (
    Notification,
    may_be_notification,
    read_notification,
)
from scorefetch.core.errors import ConfigError
from scorefetch.mailbox.messages import html_parts
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess
from scorefetch.sandbox.sshd import new_ed25519_key

SENDERS = ["@collegeboard.org"]
QUOTED_WORD = '"=?utf-8?q?College_Board_Reporting?=" <reportingportal@collegeboard.org>'
HOST = "ft.technolutions.net"


def test_an_encoded_word_inside_quotes_is_a_display_name_not_a_doubt() -> None:
    """The shape seen twice in real mail: screened in and read as a notification."""
    raw = mail.notification("4300_20261201_000002.csv", sender=QUOTED_WORD)
    headers = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert may_be_notification(headers, SENDERS)
    result = read_notification(raw, SENDERS)
    assert isinstance(result, Notification)
    assert result.sender == "reportingportal@collegeboard.org"


@pytest.mark.parametrize(
    "disposition",
    [b"attachment", b"attachment; filename=a.html", (b"attachment", (b"filename", b"a.html"))],
    ids=["flat", "flat-with-params", "rfc3501-list"],
)
def test_an_attachment_is_skipped_in_either_disposition_form(disposition: Any) -> None:
    """BODYSTRUCTURE's disposition as a list (RFC 3501) or a flat string (pymap)."""
    html = (b"text", b"html", None, None, None, b"7bit", 20, 1, None, None, None, None)
    attached = (*html[:9], disposition, None, None)
    structure = ([html, attached], b"mixed", None, None)
    parts = html_parts(structure)
    assert parts is not None and [p.section for p in parts] == ["1"]


def _with_html_attachments(filename: str, count: int) -> bytes:
    message = EmailMessage()
    message["From"] = mail.SENDER
    message["Message-ID"] = "<attachments@notify.collegeboard.org>"
    message.set_content(mail.HTML.format(span=f'<span id="fileName"> {filename} </span>'), "html")
    for n in range(count):
        message.add_attachment(f"<p>report {n}</p>", subtype="html", filename=f"r{n}.html")
    return message.as_bytes(policy=SMTP)


def test_html_attachments_do_not_make_a_notification_too_large(
    start_daemon: Callable[..., DaemonProcess],
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
) -> None:
    """Five HTML attachments beside the notification's HTML: its file lands, on a server
    that sends the disposition as a string (pymap) and one that sends a list (Dovecot)."""
    cb_sim.publish("4300_20261201_000003.csv", b"a\r\n")
    imap_server.deliver(_with_html_attachments("4300_20261201_000003.csv", 5), imap_folder)
    daemon = start_daemon()
    daemon.wait_event("delivery.downloaded", filename="4300_20261201_000003.csv")
    assert not daemon.named("notification.rejected")
    assert daemon.stop() == 0


# --- known_hosts ---


def _key() -> str:
    return new_ed25519_key()[1]


def _config(folder: Path, known: Path) -> Path:
    path = folder / "config.yaml"
    private, _ = new_ed25519_key()
    (folder / "slate_ed25519").write_text(private)
    path.write_text(
        f"download_dir: {folder / 'files'}\nstate_dir: {folder / 'state'}\n"
        + textwrap.dedent(f"""\
        forward:
          slate:
            type: sftp
            host: {HOST}
            username: "example@ft.technolutions.net"
            private_key_file: slate_ed25519
            known_hosts_file: {known}
            remote_dir: /incoming
        """)
    )
    return path


def _hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_every_key_of_every_type_is_pinned_and_revoked_ones_never(tmp_path: Path) -> None:
    """A rotation (two ed25519 keys), a hashed name, a pattern, another host's key and a
    revoked one: exactly the host's unrevoked keys are pinned."""
    old, new, hashed, wild, other, bad = (_key() for _ in range(6))
    known = tmp_path / "known_hosts"
    known.write_text(
        f"# Slate\n{HOST},10.0.0.1 {old}\n{HOST} {new} rotated\n{_hashed(HOST)} {hashed}\n"
        f"*.technolutions.net,!other.technolutions.net {wild}\nother.example {other}\n"
        f"{HOST} {bad}\n@revoked * {bad}\n"
    )
    pinned = sources.load(_config(tmp_path, known), environ={}).forward["slate"].pinned_keys()
    pinned_text = {f"{k.get_name()} {k.get_base64()}" for k in pinned}
    assert pinned_text == {" ".join(k.split()[:2]) for k in (old, new, hashed, wild)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"@cert-authority *.technolutions.net {_key()}", "@cert-authority is not supported"),
        (f"{HOST} ssh-ed25519 AAAA%%%%", "not a public key"),
        (f"{HOST} ssh-ed25519", "expected 'HOSTS TYPE BASE64"),
        (f"@marker {HOST} {_key()}", "unknown marker"),
    ],
    ids=["cert-authority", "bad-base64", "short", "unknown-marker"],
)
def test_a_bad_known_hosts_line_is_a_config_error_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    """Exit 78 with the file and the line number, never a traceback."""
    known = tmp_path / "known_hosts"
    known.write_text(f"{HOST} {_key()}\n{line}\n")
    path = _config(tmp_path, known)
    with pytest.raises(ConfigError, match=message):
        sources.load(path, environ={})
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{known}, line 2" in err and message in err and "Traceback" not in err


def test_only_revoked_keys_for_the_host_is_a_config_error(tmp_path: Path) -> None:
    """A host whose every listed key is revoked has nothing to pin: said so."""
    key = _key()
    known = tmp_path / "known_hosts"
    known.write_text(f"{HOST} {key}\n@revoked {HOST} {key}\n")
    with pytest.raises(ConfigError, match="that is not @revoked"):
        sources.load(_config(tmp_path, known), environ={})
