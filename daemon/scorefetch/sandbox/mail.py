"""Notification emails shaped like College Board's: multipart/alternative, a base64 text
part, a quoted-printable HTML part carrying `<span id="fileName"> NAME </span>`.

Variants (other encodings, quote styles, senders) are for the tests: real mail
arrives in many shapes.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from email.policy import SMTP

SENDER = "College Board Reporting <reportingportal@collegeboard.org>"
RECIPIENT = "scores@example.edu"

HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Score report file available</title></head>
<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#1e1e1e">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0"><tr><td style="padding:24px 32px 8px 32px">
<p style="margin:0 0 16px 0">Dear Higher Education Professional,</p>
<p style="margin:0 0 16px 0">A new electronic score report data file has been posted to the Higher Ed Reporting Portal for your institution and is now available for download.</p>
<p style="margin:0 0 16px 0">File name: {span}</p>
<p style="margin:0 0 16px 0">You can download this file from the reporting portal or through the score download web service using your credentials. Files remain available for one year from the date posted.</p>
<p style="margin:0 0 16px 0">Sincerely,<br>The College Board</p>
</td></tr></table>
<p style="font-size:11px;color:#6f6f6f">&copy; 2026 College Board. Please do not reply to this email; this mailbox is not monitored.</p>
</body></html>
"""
TEXT = """Dear Higher Education Professional,

A new electronic score report data file has been posted to the Higher Ed Reporting Portal.

File name: {name}

Sincerely,
The College Board
"""


def _message(sender: str, subject: str, id_domain: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = RECIPIENT
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=id_domain)
    return message


def notification(
    filename: str,
    *,
    sender: str = SENDER,
    html_encoding: str = "quoted-printable",
    charset: str = "utf-8",
    span: str | None = None,
    with_text: bool = True,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A notification for `filename` as raw RFC 5322 bytes with CRLF line ends.

    `html_encoding`: quoted-printable (the vendor's), base64, 7bit or 8bit.
    `span`: the fileName element to use instead of `<span id="fileName"> NAME </span>`.
    """
    message = _message(sender, "New score report file available", "notify.collegeboard.org")
    for key, value in (headers or {}).items():
        message[key] = value
    html = HTML.format(
        span=span if span is not None else f'<span id="fileName"> {filename} </span>'
    )
    if with_text:
        message.set_content(TEXT.format(name=filename), charset="utf-8", cte="base64")
        message.add_alternative(html, subtype="html", charset=charset, cte=html_encoding)
    else:
        message.set_content(html, subtype="html", charset=charset, cte=html_encoding)
    return message.as_bytes(policy=SMTP)


def marketing(sender: str = SENDER) -> bytes:
    """A College Board email that announces no file (a webinar invitation)."""
    message = _message(
        sender, "Join our upcoming webinar on the digital SAT Suite", "news.collegeboard.org"
    )
    message.set_content("Register for the webinar.\n")
    message.add_alternative(
        "<html><body><p>Register for the <b>webinar</b>.</p>"
        '<span id="promo">x</span></body></html>',
        subtype="html",
        cte="quoted-printable",
    )
    return message.as_bytes(policy=SMTP)
