"""College Board notification emails → file names: samples, MIME shapes, spans, senders, junk.

Messages are built three ways: the shared samples, the `email` package, and raw bytes
written by hand (real mail arrives in shapes the `email` package would never produce).
"""

from __future__ import annotations

import base64
import gc
import quopri
import random
import tracemalloc
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scorefetch.collegeboard.notifications import (
    MAX_HTML_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_NAMES,
    Notification,
    Rejection,
    file_names_in_html,
    html_parts,
    may_be_notification,
    read_notification,
    sender_allowed,
)
from scorefetch.core.errors import RefusedError
from scorefetch.core.filenames import check_name
from scorefetch.sandbox import mail
from tests.standins.fakeimap import header_fields

SAMPLES = Path(__file__).parent / "samples"  # the project's own copies
SENDERS = ("@collegeboard.org",)
FROM = "College Board Reporting <reportingportal@collegeboard.org>"
NAME = "4300_20180410_111604.csv"
SPAN = f'<span id="fileName"> {NAME} </span>'


def page(span: str = SPAN) -> str:
    """A small vendor-like HTML page around `span`."""
    return (
        "<!DOCTYPE html><html><head><title>Score report file available</title></head>\n"
        "<body><p>A new electronic score report data file has been posted.</p>\n"
        f"<p>File name: {span}</p>\n<p>&copy; College Board</p></body></html>\n"
    )


def built(
    html: str | None = None,
    *,
    charset: str = "utf-8",
    cte: str = "quoted-printable",
    with_text: bool = True,
    sender: str = FROM,
) -> bytes:
    """A notification built with the `email` package (multipart/alternative when with_text)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "scores@example.edu"
    message["Subject"] = "New score report file available"
    message["Message-ID"] = "<built@notify.collegeboard.org>"
    html = page() if html is None else html
    if with_text:
        message.set_content("File name: see the HTML part\n", charset="utf-8", cte="base64")
        message.add_alternative(html, subtype="html", charset=charset, cte=cte)
    else:
        message.set_content(html, subtype="html", charset=charset, cte=cte)
    return message.as_bytes(policy=SMTP)


def raw(
    body: bytes,
    *,
    headers: list[bytes] | None = None,
    content_type: bytes | None = b"text/html; charset=utf-8",
    cte: bytes | None = b"7bit",
    nl: bytes = b"\r\n",
) -> bytes:
    """A single-part message written byte by byte; `headers` replaces From and Message-ID."""
    lines = (
        [b"From: College Board <reportingportal@collegeboard.org>", b"Message-ID: <raw@cb>"]
        if headers is None
        else list(headers)
    )
    lines += [b"To: scores@example.edu", b"Subject: New score report file", b"MIME-Version: 1.0"]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    if cte is not None:
        lines.append(b"Content-Transfer-Encoding: " + cte)
    return nl.join(lines) + nl + nl + body + nl


def names_of(message: bytes, senders: tuple[str, ...] = SENDERS) -> tuple[str, ...]:
    """The names of an accepted notification; fails the test on a Rejection."""
    result = read_notification(message, senders)
    assert isinstance(result, Notification), result
    return result.filenames


def reason_of(message: bytes, senders: tuple[str, ...] = SENDERS) -> str:
    """The reason of a Rejection; fails the test on an accepted notification."""
    result = read_notification(message, senders)
    assert isinstance(result, Rejection), result
    return result.reason


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize(
    ("sample", "name"),
    [
        ("cb-notification-csv.eml", "4300_20261121_101544.csv"),
        ("cb-notification-txt.eml", "4300_20261121_101544.txt"),
    ],
    ids=["csv", "txt"],
)
def test_sample_notification_names_its_file(sample: str, name: str) -> None:
    """Each sample notification yields its one file name, sender and Message-ID."""
    result = read_notification((SAMPLES / sample).read_bytes(), SENDERS)
    assert isinstance(result, Notification), result
    assert result.filenames == (name,)
    assert result.sender == "reportingportal@collegeboard.org"
    assert result.message_id.startswith("<179532409715.13624.")
    assert result.message_id.endswith("@notify.collegeboard.org>")


def test_sample_marketing_rejected() -> None:
    """The marketing sample (allowed sender, no fileName element) is no_filename."""
    result = read_notification((SAMPLES / "cb-marketing.eml").read_bytes(), SENDERS)
    assert isinstance(result, Rejection)
    assert result.reason == "no_filename"
    assert result.message_id.endswith("@news.collegeboard.org>")


@pytest.mark.parametrize(
    "sample", ["cb-notification-csv.eml", "cb-notification-txt.eml"], ids=["csv", "txt"]
)
def test_sample_with_bare_lf_line_ends(sample: str) -> None:
    """A sample rewritten with bare LF line ends (as a Maildir stores it) parses the same."""
    data = (SAMPLES / sample).read_bytes()
    assert b"\r\n" in data
    assert names_of(data.replace(b"\r\n", b"\n")) == names_of(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"html_encoding": "base64"},
        {"html_encoding": "7bit"},
        {"html_encoding": "8bit"},
        {"charset": "iso-8859-1"},
        {"with_text": False},
        {"span": f"<span id='fileName'>{NAME}</span>"},
        {"sender": "REPORTINGPORTAL@COLLEGEBOARD.ORG"},
        {"headers": {"X-Mailer": "vendor"}},
    ],
    ids=["default", "base64", "7bit", "8bit", "latin1", "html-only", "squote", "upper", "hdr"],
)
def test_sandbox_builder_variants(kwargs: dict[str, object]) -> None:
    """Every variant of the sandbox mail builder is read back to its one file name."""
    assert names_of(mail.notification(NAME, **kwargs)) == (NAME,)


def test_sandbox_marketing_rejected() -> None:
    """The sandbox marketing email is rejected with no_filename."""
    assert reason_of(mail.marketing()) == "no_filename"


# --------------------------------------------------------------- MIME shapes


ACCENTED = "résultats_4300_été.csv"
LATIN = "résultats_4300.csv"
ENCODINGS = [
    ("quoted-printable", "utf-8", ACCENTED),
    ("quoted-printable", "iso-8859-1", LATIN),
    ("quoted-printable", "windows-1252", LATIN),
    ("base64", "utf-8", ACCENTED),
    ("base64", "iso-8859-1", LATIN),
    ("base64", "windows-1252", LATIN),
    ("base64", "utf-16", ACCENTED),
    ("8bit", "utf-8", ACCENTED),
    ("8bit", "iso-8859-1", LATIN),
    ("8bit", "windows-1252", LATIN),
    ("7bit", "utf-8", NAME),
    ("7bit", "iso-8859-1", NAME),
    ("7bit", "windows-1252", NAME),
]


@pytest.mark.parametrize(
    ("cte", "charset", "name"), [pytest.param(*e, id=f"{e[0]}-{e[1]}") for e in ENCODINGS]
)
@pytest.mark.parametrize("with_text", [True, False], ids=["alternative", "html-only"])
def test_transfer_encodings_and_charsets(
    cte: str, charset: str, name: str, with_text: bool
) -> None:
    """Every transfer encoding and charset the email package can write decodes to the name."""
    html = page(f'<span id="fileName"> {name} </span>')
    message = built(html, charset=charset, cte=cte, with_text=with_text)
    assert f"charset={charset}".encode() in message.replace(b'"', b"")
    assert names_of(message) == (name,)


@pytest.mark.parametrize(
    ("cte", "encode"),
    [
        ("quoted-printable", lambda b: quopri.encodestring(b, quotetabs=True)),
        ("base64", base64.encodebytes),
        ("8bit", lambda b: b),
    ],
    ids=["qp", "base64", "8bit"],
)
@pytest.mark.parametrize("charset", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_written_by_hand(cte: str, encode: object, charset: str) -> None:
    """UTF-16 HTML (which the email package cannot write as QP or 8bit) is decoded."""
    body = encode(page().encode(charset))
    message = raw(body, content_type=f'text/html; charset="{charset}"'.encode(), cte=cte.encode())
    assert names_of(message) == (NAME,)


def test_windows_1252_specific_bytes() -> None:
    """windows-1252 bytes that latin-1 lacks (€, ’) around the span do not disturb the name."""
    html = page(f"€ ’ <span id='fileName'>{NAME}</span> ‘…’").encode("windows-1252")
    message = raw(html, content_type=b"text/html; charset=windows-1252", cte=b"8bit")
    assert names_of(message) == (NAME,)


def test_html_only_single_part() -> None:
    """A message whose whole body is text/html (no multipart) is read."""
    assert names_of(raw(page().encode())) == (NAME,)


@pytest.mark.parametrize(
    "content_type",
    [b"TEXT/HTML", b"Text/Html; Charset=UTF-8", b'text/html; charset="utf-8"; format=flowed'],
    ids=["upper", "mixed-case", "extra-params"],
)
def test_content_type_spellings(content_type: bytes) -> None:
    """The HTML part is found however its Content-Type is cased or parametrised."""
    assert names_of(raw(page().encode(), content_type=content_type)) == (NAME,)


@pytest.mark.parametrize(
    ("content_type", "cte"),
    [
        (b"text/plain; charset=utf-8", b"7bit"),
        (None, None),
        (b"text/enriched", b"7bit"),
        (b"application/octet-stream", b"7bit"),
    ],
    ids=["text-plain", "no-content-type", "enriched", "octet-stream"],
)
def test_non_html_single_part_rejected(content_type: bytes | None, cte: bytes | None) -> None:
    """Span markup outside a text/html part is never read: no_filename."""
    assert reason_of(raw(page().encode(), content_type=content_type, cte=cte)) == "no_filename"


def test_text_plain_only_built_rejected() -> None:
    """A text/plain-only message that names the file in prose is rejected with no_filename."""
    message = EmailMessage()
    message["From"] = FROM
    message.set_content(f"File name: {NAME}\n{SPAN}\n")
    assert reason_of(message.as_bytes(policy=SMTP)) == "no_filename"


def test_mixed_wrapping_alternative() -> None:
    """multipart/mixed around multipart/alternative (plus a PDF attachment) is read."""
    message = EmailMessage()
    message["From"] = FROM
    message.set_content(f"File name: {NAME}\n")
    message.add_alternative(page(), subtype="html")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
    data = message.as_bytes(policy=SMTP)
    assert b"multipart/mixed" in data and b"multipart/alternative" in data
    assert names_of(data) == (NAME,)


def test_mixed_wrapping_alternative_by_hand() -> None:
    """A hand-written mixed/alternative tree with odd boundaries and a preamble is read."""
    html = quopri.encodestring(page().encode())
    data = b"\r\n".join(
        [
            b"From: reportingportal@collegeboard.org",
            b"MIME-Version: 1.0",
            b'Content-Type: multipart/mixed; boundary="outer \'()+_,-./:=?"',
            b"",
            b"This is a multi-part message in MIME format.",
            b"--outer '()+_,-./:=?",
            b"Content-Type: multipart/alternative; boundary=inner",
            b"",
            b"--inner",
            b"Content-Type: text/plain",
            b"",
            b"plain",
            b"--inner",
            b"Content-Type: text/html; charset=us-ascii",
            b"Content-Transfer-Encoding: Quoted-Printable",
            b"",
            html,
            b"--inner--",
            b"--outer '()+_,-./:=?--",
            b"epilogue",
        ]
    )
    assert names_of(data) == (NAME,)


@pytest.mark.parametrize(
    "disposition",
    [b"attachment", b'attachment; filename="notice.html"', b"ATTACHMENT", b"Attachment ; x=y"],
    ids=["bare", "filename", "upper", "params"],
)
def test_html_attachment_not_used(disposition: bytes) -> None:
    """An HTML part with Content-Disposition: attachment is set aside, even a hostile one."""
    attached = page('<span id="fileName">../../evil.csv</span>').encode()
    data = b"\r\n".join(
        [
            b"From: reportingportal@collegeboard.org",
            b"MIME-Version: 1.0",
            b"Content-Type: multipart/mixed; boundary=B",
            b"",
            b"--B",
            b"Content-Type: text/html",
            b"",
            page().encode(),
            b"--B",
            b"Content-Type: text/html",
            b"Content-Disposition: " + disposition,
            b"",
            attached,
            b"--B--",
            b"",
        ]
    )
    assert names_of(data) == (NAME,)


def test_html_attachment_only_is_no_filename() -> None:
    """A message whose only fileName element sits in an HTML attachment is no_filename."""
    message = EmailMessage()
    message["From"] = FROM
    message.set_content("See the attachment.\n")
    message.add_attachment(page(), subtype="html", filename="notice.html")
    assert reason_of(message.as_bytes(policy=SMTP)) == "no_filename"


def test_inline_html_part_is_used() -> None:
    """An HTML part marked inline (even with a filename) is body, not attachment."""
    message = EmailMessage()
    message["From"] = FROM
    message.set_content("text\n")
    message.add_attachment(page(), subtype="html", disposition="inline", filename="n.html")
    assert names_of(message.as_bytes(policy=SMTP)) == (NAME,)


def test_attached_message_not_used() -> None:
    """A forwarded notification attached as message/rfc822 is not read: no_filename."""
    inner = EmailMessage()
    inner["From"] = "someone@evil.example"
    inner.set_content(page('<span id="fileName">forwarded.csv</span>'), subtype="html")
    outer = EmailMessage()
    outer["From"] = FROM
    outer.set_content("Forwarding this for you.\n")
    outer.add_attachment(inner)
    data = outer.as_bytes(policy=SMTP)
    assert b"Content-Disposition: attachment" in data
    assert reason_of(data) == "no_filename"


@pytest.mark.parametrize("nl", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
@pytest.mark.parametrize("cte", [b"7bit", b"quoted-printable"])
def test_line_ends(nl: bytes, cte: bytes) -> None:
    """CRLF, bare LF and bare CR line ends in headers and body all parse."""
    body = page().encode()
    if cte == b"quoted-printable":
        body = quopri.encodestring(body)
    body = body.replace(b"\n", nl)
    assert names_of(raw(body, cte=cte, nl=nl)) == (NAME,)


def test_mixed_line_ends() -> None:
    """A message mixing CRLF and LF line ends (a relay's doing) parses."""
    data = raw(page().encode()).replace(b"\r\n", b"\n", 3)
    assert b"\r\n" in data and data.count(b"\n") > data.count(b"\r\n")
    assert names_of(data) == (NAME,)


@pytest.mark.parametrize(
    ("headers", "message_id"),
    [
        (
            [
                b"From:\r\n College Board Reporting\r\n\t<reportingportal@collegeboard.org>",
                b"Message-ID:\r\n <folded@notify.collegeboard.org>",
            ],
            "<folded@notify.collegeboard.org>",
        ),
        (
            [
                b"From: reportingportal@collegeboard.org",
                b"Subject: " + b"\r\n ".join(b"word%d" % i for i in range(3000)),
            ],
            "",
        ),
        (
            [
                b"From: reportingportal@collegeboard.org",
                b"References: " + b"\r\n\t".join(b"<%d@x.example>" % i for i in range(3000)),
                b"Message-ID: <m@cb>",
            ],
            "<m@cb>",
        ),
        (
            [b"From: reportingportal@collegeboard.org", b"X-Long: " + b"a" * 200_000],
            "",
        ),
        (
            [b"From: reportingportal@collegeboard.org"]
            + [b"Received: from relay%d by mx; Sun, 22 Nov 2026" % i for i in range(500)],
            "",
        ),
    ],
    ids=["folded-from-and-id", "subject-3000-folds", "references-3000", "200k-line", "500-hdrs"],
)
def test_long_and_folded_headers(headers: list[bytes], message_id: str) -> None:
    """Folded From and Message-ID, very long or numerous headers: the name is still read."""
    result = read_notification(raw(page().encode(), headers=headers), SENDERS)
    assert isinstance(result, Notification), result
    assert result.filenames == (NAME,)
    assert result.sender == "reportingportal@collegeboard.org"
    assert result.message_id == message_id


# --------------------------------------------------------------- span variants

SPAN_VARIANTS = [
    ("double", f'<span id="fileName">{NAME}</span>', [NAME]),
    ("single", f"<span id='fileName'>{NAME}</span>", [NAME]),
    ("unquoted", f"<span id=fileName>{NAME}</span>", [NAME]),
    ("upper-tag", f"<SPAN ID=fileName>{NAME}</SPAN>", [NAME]),
    ("upper-value", f'<Span Id="FILENAME">{NAME}</Span>', [NAME]),
    ("padded-id", f'<span id=" fileName ">{NAME}</span>', [NAME]),
    ("div", f'<div id="fileName">{NAME}</div>', [NAME]),
    ("td", f'<table><tr><td id="fileName">{NAME}</td></tr></table>', [NAME]),
    ("p", f'<p id="fileName">{NAME}</p>', [NAME]),
    ("attr-newlines", f'<span\n  class="x"\n  id="fileName"\n>{NAME}</span\n>', [NAME]),
    ("vendor-spaces", f'<span id="fileName"> {NAME} </span>', [NAME]),
    ("newlines-tabs", f'<span id="fileName">\n\t  {NAME}\r\n  </span>', [NAME]),
    ("nbsp-entity", f'<span id="fileName">&nbsp;{NAME}&nbsp;&nbsp;</span>', [NAME]),
    ("nbsp-char", f'<span id="fileName">\xa0{NAME}\u2003\u3000</span>', [NAME]),
    ("entities", '<span id="fileName">4300&#95;20180410&#x5F;111604&period;csv</span>', [NAME]),
    ("nested-b", f'<span id="fileName"><b> {NAME} </b></span>', [NAME]),
    ("nested-deep", f'<span id="fileName"><a href="#"><b><i> {NAME}</i></b></a></span>', [NAME]),
    ("split-tags", '<span id="fileName"><b>4300_</b><i>20180410_111604.csv</i></span>', [NAME]),
    ("comment-inside", '<span id="fileName">4300_<!-- x -->20180410_111604.csv</span>', [NAME]),
    ("unclosed", f'<span id="fileName">{NAME}', [NAME]),
    ("two-names", f'<span id="fileName">{NAME}</span><b id=fileName>b.txt</b>', [NAME, "b.txt"]),
    ("same-twice", f'<span id="fileName">{NAME}</span><div id="fileName"> {NAME} </div>', [NAME]),
    ("twin", '<span id="fileName">a.csv</span><span id=fileName>a.txt</span>', ["a.csv", "a.txt"]),
    ("unicode", '<span id="fileName">Résultats_名前.csv</span>', ["Résultats_名前.csv"]),
]  # fmt: skip

NOT_A_SPAN = [
    ("class", f'<span class="fileName">{NAME}</span>'),
    ("name-attr", f'<span name="fileName">{NAME}</span>'),
    ("data-id", f'<span data-id="fileName">{NAME}</span>'),
    ("other-id", f'<span id="file_name">{NAME}</span>'),
    ("id-prefix", f'<span id="fileNameX">{NAME}</span>'),
    ("comment", f'<!-- <span id="fileName">{NAME}</span> -->'),
    ("script", f"<script>var s = '<span id=\"fileName\">{NAME}</span>';</script>"),
    ("empty", '<span id="fileName"></span>'),
    ("blank", '<span id="fileName"> &nbsp; \n </span>'),
    ("escaped", f'&lt;span id="fileName"&gt;{NAME}&lt;/span&gt;'),
]


@pytest.mark.parametrize(
    ("span", "expected"), [v[1:] for v in SPAN_VARIANTS], ids=[v[0] for v in SPAN_VARIANTS]
)
def test_span_variants_in_html(span: str, expected: list[str]) -> None:
    """file_names_in_html finds each fileName element shape, trimmed, each name once."""
    assert file_names_in_html(page(span)) == expected


@pytest.mark.parametrize(
    ("span", "expected"), [v[1:] for v in SPAN_VARIANTS], ids=[v[0] for v in SPAN_VARIANTS]
)
@pytest.mark.parametrize("cte", ["quoted-printable", "base64"])
def test_span_variants_in_email(span: str, expected: list[str], cte: str) -> None:
    """Each fileName element shape survives the trip through an encoded email."""
    assert names_of(built(page(span), cte=cte)) == tuple(expected)


@pytest.mark.parametrize("span", [v[1] for v in NOT_A_SPAN], ids=[v[0] for v in NOT_A_SPAN])
def test_not_a_filename_element(span: str) -> None:
    """Markup that is not an element with id=fileName, or one with no text: no_filename."""
    assert file_names_in_html(page(span)) == []
    assert reason_of(built(page(span))) == "no_filename"


@pytest.mark.parametrize(
    ("body", "nl"),
    [
        (b'<span id=3D"fileName"> 4300_2018=\r\n0410_111604.csv </span>', b"\r\n"),
        (b'<span id=3D"fileName"> 4300_2018=\n0410_111604.csv </span>', b"\n"),
        (b'<span id=3D"fileName">4=\r\n3=\r\n0=\r\n0_20180410_111604.c=\r\nsv</span>', b"\r\n"),
        (b'<span id=3D"file=\r\nName"> 4300_20180410_111604=\r\n.csv </span>', b"\r\n"),
        (b'<span id=3D"fileName">4300=5F20180410=5f111604.csv</span>', b"\r\n"),
        (b'<span id=3D"fileName">=204300_20180410_111604.csv=20=\r\n</span>', b"\r\n"),
        pytest.param(
            b'<span id=3D"fileName"> 4300_2018=  \r\n0410_111604.csv </span>',
            b"\r\n",
        ),
    ],
    ids=["crlf", "lf", "many", "in-attribute", "qp-underscore", "qp-spaces", "ws-after-equals"],
)
def test_quoted_printable_soft_breaks(body: bytes, nl: bytes) -> None:
    """QP soft line breaks (=CRLF, =LF, even mid-name or mid-attribute) are undone first."""
    assert names_of(raw(body, cte=b"quoted-printable", nl=nl)) == (NAME,)


def test_html_parts_skips_text_and_attachments() -> None:
    """html_parts returns the decoded text/html body parts only."""
    message = EmailMessage()
    message["From"] = FROM
    message.set_content("plain <span id='fileName'>p.csv</span>\n")
    message.add_alternative("<p>é</p>", subtype="html", cte="base64")
    message.add_attachment("<p>attached</p>", subtype="html", filename="x.html")
    parts = html_parts(message)
    assert len(parts) == 1
    assert parts[0].strip() == "<p>é</p>"


# --------------------------------------------------------------------- senders


@pytest.mark.parametrize(
    ("address", "senders", "allowed"),
    [
        ("reportingportal@collegeboard.org", ["@collegeboard.org"], True),
        ("x@notify.collegeboard.org", ["@collegeboard.org"], True),
        ("x@a.b.collegeboard.org", ["@collegeboard.org"], True),
        ("X@COLLEGEBOARD.ORG", ["@collegeboard.org"], True),
        ("x@collegeboard.org", ["@CollegeBoard.Org"], True),
        ("x@collegeboard.org.evil.com", ["@collegeboard.org"], False),
        ("x@evilcollegeboard.org", ["@collegeboard.org"], False),
        ("x@evil-collegeboard.org", ["@collegeboard.org"], False),
        ("collegeboard.org@evil.com", ["@collegeboard.org"], False),
        ("x@collegeboard.org@evil.com", ["@collegeboard.org"], False),
        ("x@collegeboard.com", ["@collegeboard.org"], False),
        ("x@collegeboard.org", [], False),
        ("reportingportal@collegeboard.org", ["reportingportal@collegeboard.org"], True),
        ("REPORTINGPORTAL@collegeboard.org", ["reportingportal@CollegeBoard.org"], True),
        ("other@collegeboard.org", ["reportingportal@collegeboard.org"], False),
        ("reportingportal@notify.collegeboard.org", ["reportingportal@collegeboard.org"], False),
        ("xreportingportal@collegeboard.org", ["reportingportal@collegeboard.org"], False),
        ("a@x.edu", ["reportingportal@collegeboard.org", "@x.edu"], True),
        ("a@y.edu", ["reportingportal@collegeboard.org", "@x.edu"], False),
    ],
    ids=[
        "domain",
        "subdomain",
        "deep-subdomain",
        "upper-address",
        "upper-allowlist",
        "suffix-lookalike",
        "prefix-lookalike",
        "hyphen-lookalike",
        "domain-as-local-part",
        "two-ats",
        "other-tld",
        "empty-allowlist",
        "exact",
        "exact-any-case",
        "exact-other-user",
        "exact-no-subdomain",
        "exact-prefix",
        "second-entry",
        "no-entry",
    ],
)
def test_sender_allowed(address: str, senders: list[str], allowed: bool) -> None:
    """Exact addresses match whole (any case); @domain matches it and its subdomains only."""
    assert sender_allowed(address, senders) is allowed


@pytest.mark.parametrize(
    "address", ["collegeboard.org", "evil@x@collegeboard.org"], ids=["no-at", "two-ats"]
)
def test_sender_allowed_needs_one_address(address: str) -> None:
    """A string that is not exactly one local@domain address is never allowed."""
    assert not sender_allowed(address, ["@collegeboard.org"])


RP = "reportingportal@collegeboard.org"
A = "a@collegeboard.org"
FROM_HEADERS = [
    ("plain", [b"From: reportingportal@collegeboard.org"], RP),
    ("display", [b"From: College Board <reportingportal@collegeboard.org>"], RP),
    ("quoted-display", [b'From: "Board, College" <reportingportal@collegeboard.org>'], RP),
    ("subdomain", [b"From: <alerts@notify.collegeboard.org>"], "alerts@notify.collegeboard.org"),
    ("uppercase", [b"From: REPORTINGPORTAL@COLLEGEBOARD.ORG"], RP),
    ("header-case", [b"FROM: reportingportal@collegeboard.org"], RP),
    ("encoded-display", [b"From: =?utf-8?q?Coll=C3=A8ge?= <a@collegeboard.org>"], A),
    ("comment", [b"From: a@collegeboard.org (College Board)"], A),
    ("folded", [b"From: College\r\n Board\r\n <a@collegeboard.org>"], A),
    ("suffix-lookalike", [b"From: a@collegeboard.org.evil.com"], None),
    ("prefix-lookalike", [b"From: a@evilcollegeboard.org"], None),
    ("domain-local-part", [b"From: collegeboard.org@evil.com"], None),
    ("quoted-local-part", [b'From: "a@collegeboard.org"@evil.com'], None),
    ("quoted-evil-local", [b'From: "a@evil.com"@collegeboard.org'], None),
    ("two-ats", [b"From: reportingportal@collegeboard.org@evil.com"], None),
    ("display-lookalike", [b'From: "reportingportal@collegeboard.org" <x@evil.com>'], None),
    ("bare-display-lookalike", [b"From: reportingportal@collegeboard.org <x@evil.com>"], None),
    ("encoded-lookalike", [b"From: =?utf-8?q?a=40collegeboard.org?= <x@evil.com>"], None),
    ("comment-lookalike", [b"From: x@evil.com (reportingportal@collegeboard.org)"], None),
    ("angle-prefix", [b"From: <x@evil.com>reportingportal@collegeboard.org"], None),
    ("two-addresses", [b"From: a@collegeboard.org, b@collegeboard.org"], None),
    ("allowed-and-evil", [b"From: a@collegeboard.org, x@evil.com"], None),
    ("two-from-headers", [b"From: a@collegeboard.org", b"From: a@collegeboard.org"], None),
    ("evil-then-good", [b"From: x@evil.com", b"From: a@collegeboard.org"], None),
    ("no-from", [b"Sender: a@collegeboard.org", b"Reply-To: a@collegeboard.org"], None),
    ("empty-from", [b"From: "], None),
    ("null-address", [b"From: <>"], None),
    ("group-empty", [b"From: undisclosed-recipients:;"], None),
    ("group-mixed", [b"From: G: a@collegeboard.org, x@evil.com;"], None),
    ("ip-literal", [b"From: a@[127.0.0.1]"], None),
    ("trailing-dot", [b"From: a@collegeboard.org."], None),
    ("idn-lookalike", [b"From: a@xn--collegeboard-v1a.org"], None),
    ("unicode-dot", [b"From: a@collegeboard\xe2\x80\xa4org"], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "sender"), [v[1:] for v in FROM_HEADERS], ids=[v[0] for v in FROM_HEADERS]
)
def test_from_header_variants(headers: list[bytes], sender: str | None) -> None:
    """Only one unambiguous From address on the allowlist is trusted; else reason sender."""
    result = read_notification(raw(page().encode(), headers=headers), SENDERS)
    if sender is None:
        assert isinstance(result, Rejection), result
        assert result.reason == "sender"
    else:
        assert isinstance(result, Notification), result
        assert result.sender == sender
        assert result.filenames == (NAME,)


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("reportingportal@collegeboard.org", True),
        ("ReportingPortal@CollegeBoard.org", True),
        ("Other <other@collegeboard.org>", False),
        ("reportingportal@notify.collegeboard.org", False),
    ],
    ids=["exact", "any-case", "same-domain", "subdomain"],
)
def test_exact_address_allowlist(sender: str, accepted: bool) -> None:
    """With an exact-address allowlist, only that address (in any case) is trusted."""
    result = read_notification(built(sender=sender), ["reportingportal@collegeboard.org"])
    assert isinstance(result, Notification if accepted else Rejection), result
    if not accepted:
        assert isinstance(result, Rejection) and result.reason == "sender"


def test_sender_checked_before_names() -> None:
    """A refused sender is reported as sender, even when the name is hostile."""
    data = built(page('<span id="fileName">../../etc/passwd</span>'), sender="x@evil.com")
    assert reason_of(data) == "sender"


# ---------------------------------------------------------------- hostile names

HOSTILE = [
    pytest.param("../../etc/passwd", id="traversal"),
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param(".hidden.csv", id="hidden"),
    pytest.param(".4300.csv.part", id="part-file"),
    pytest.param("a/b.csv", id="slash"),
    pytest.param("a\\b.csv", id="backslash"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("C:\\Windows\\x.csv", id="windows-abs"),
    pytest.param("a&#47;b.csv", id="encoded-slash"),
    pytest.param("&#46;&#46;&#47;x.csv", id="encoded-dots"),
    pytest.param("a&#1;b.csv", id="ctrl-entity"),
    pytest.param("a\x01b.csv", id="ctrl-char"),
    pytest.param("a\x1b[31mb.csv", id="esc"),
    pytest.param("a&#127;b.csv", id="del"),
    pytest.param("4300_\n20180410.csv", id="newline-inside"),
    pytest.param("a\tb.csv", id="tab-inside"),
    pytest.param("evil\u202ecsv.exe", id="rtl-override"),
    pytest.param("evil&#x202E;vsc.exe", id="rtl-entity"),
    pytest.param("a\u200bb.csv", id="zero-width"),
    pytest.param("a&#xFEFF;b.csv", id="bom"),
    pytest.param("a\u2028b.csv", id="line-sep"),
    pytest.param("a\ue000b.csv", id="private-use"),
    pytest.param("a" * 296 + ".csv", id="300-bytes"),
    pytest.param("é" * 126 + ".csv", id="256-bytes-utf8"),
    pytest.param("CON.csv", id="con"),
    pytest.param("nul.txt", id="nul-lower"),
    pytest.param("COM1.csv", id="com1"),
    pytest.param("lpt9", id="lpt9"),
    pytest.param("x.csv.", id="trailing-dot"),
    pytest.param("x.csv...", id="trailing-dots"),
    pytest.param(f"{NAME}</span><span id='fileName'>../x.csv", id="one-good-one-bad"),
    pytest.param(
        "a&#0;b.csv",
        id="nul-entity",
    ),
]


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("cte", ["quoted-printable", "base64"])
def test_hostile_name_refused(name: str, cte: str) -> None:
    """A hostile name in the fileName element rejects the whole message: unsafe_filename."""
    result = read_notification(built(page(f'<span id="fileName">{name}</span>'), cte=cte), SENDERS)
    assert not isinstance(result, Notification), result
    assert result.reason == "unsafe_filename"


@pytest.mark.parametrize(
    "span",
    [f'<span id="fileName">{NAME} </span>', f'<span id="fileName">{NAME}&nbsp;</span>'],
    ids=["space", "nbsp"],
)
def test_trailing_space_is_trimmed_not_kept(span: str) -> None:
    """Trailing spaces in the element are the vendor's padding: trimmed, never part of a name."""
    assert names_of(built(page(span))) == (NAME,)


def test_raw_nul_byte_in_html_refused() -> None:
    """A literal NUL byte in the decoded HTML name is never accepted."""
    body = b'<span id="fileName">a\x00b.csv</span>'
    result = read_notification(raw(body, cte=b"8bit"), SENDERS)
    assert isinstance(result, Rejection), result
    assert result.reason == "unsafe_filename"


# ------------------------------------------------------------------------- junk


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 1000,
        b"\r\n\r\n\r\n",
        b"From:",
        b"From: reportingportal@collegeboard.org",
        random.Random(1).randbytes(4096),
        random.Random(2).randbytes(65536),
        bytes(range(256)) * 64,
        b"\xff\xfe" + page().encode("utf-16-le"),
        b"From: \xff\xfe\x80@collegeboard.org\r\n\r\n" + page().encode(),
    ],
    ids=["empty", "nuls", "blank-lines", "from-only", "no-body", "rnd4k", "rnd64k", "all-bytes",
         "utf16-file", "binary-from"],
)  # fmt: skip
def test_junk_rejected(data: bytes) -> None:
    """Empty, random or binary input is a Rejection, never an exception."""
    result = read_notification(data, SENDERS)
    assert isinstance(result, Rejection), result
    assert result.reason in {"sender", "no_filename", "malformed"}


def test_missing_message_id_is_empty() -> None:
    """A notification without Message-ID is read, with message_id ''."""
    result = read_notification(raw(page().encode(), headers=[b"From: a@collegeboard.org"]), SENDERS)
    assert isinstance(result, Notification) and result.message_id == ""


def test_too_large() -> None:
    """A 6 MB message is refused unparsed: too_large, with its size and its Message-ID."""
    data = raw(page().encode() + b"\r\n<!--" + b"x" * (6 * 1024 * 1024) + b"-->")
    result = read_notification(data, SENDERS)
    assert isinstance(result, Rejection)
    assert (result.reason, result.message_id) == ("too_large", "<raw@cb>")
    assert str(len(data)) in result.detail


def test_size_limit_boundary() -> None:
    """Exactly MAX_MESSAGE_BYTES is read; one byte more is too_large."""
    head = (
        b"From: reportingportal@collegeboard.org\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: text/html\r\n\r\n" + page().encode() + b"\r\n--XX\r\n"
        b"Content-Type: text/plain\r\n\r\n"
    )
    tail = b"\r\n--XX--\r\n"
    fill = MAX_MESSAGE_BYTES - len(head) - len(tail)
    padding = ((b"x" * 76 + b"\r\n") * (fill // 78 + 1))[:fill]
    data = head + padding + tail
    assert len(data) == MAX_MESSAGE_BYTES
    assert names_of(data) == (NAME,)
    assert reason_of(data + b"\n") == "too_large"


@pytest.mark.parametrize("cte", [b"quoted-printable", b"base64", b"8bit"])
@pytest.mark.parametrize(
    "charset",
    [b"x-unknown", b"utf-99", b'"', b"\xff"],
    ids=["x-unknown", "utf-99", "lone-quote", "non-ascii"],
)
def test_unknown_charset(cte: bytes, charset: bytes) -> None:
    """An HTML part with an unknown charset is decoded leniently and its name still read."""
    body = page().encode()
    body = {b"quoted-printable": quopri.encodestring, b"base64": base64.encodebytes}.get(
        cte, lambda b: b
    )(body)
    data = raw(body, content_type=b"text/html; charset=" + charset, cte=cte)
    assert names_of(data) == (NAME,)


@pytest.mark.parametrize(
    ("cte", "body"),
    [
        (b"base64", b"!!!! not base64 @@@@"),
        (b"base64", base64.encodebytes(page().encode())[:-7]),
        (b"quoted-printable", b"=ZZ=\r\n=" + page().encode()),
        (b"x-uuencode", page().encode()),
        (b"bogus-encoding", page().encode()),
    ],
    ids=["b64-junk", "b64-truncated", "qp-bad-escapes", "uuencode", "unknown-cte"],
)
def test_broken_transfer_encoding_never_raises(cte: bytes, body: bytes) -> None:
    """A broken or unknown transfer encoding gives a result, never an exception."""
    result = read_notification(raw(body, cte=cte), SENDERS)
    assert isinstance(result, Notification | Rejection)
    if isinstance(result, Notification):
        assert all(check_name(n) == n for n in result.filenames)


def test_deeply_nested_multipart_never_raises() -> None:
    """Multipart nested past the recursion limit is a Rejection, not a crash."""
    depth = 1500
    opens = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    closes = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    data = (
        b"From: reportingportal@collegeboard.org\r\n"
        + opens
        + b"Content-Type: text/html\r\n\r\n"
        + SPAN.encode()
        + closes
    )
    assert isinstance(read_notification(data, SENDERS), Notification | Rejection)


def test_unbalanced_multipart_never_raises() -> None:
    """A multipart with no closing boundary, or no boundary parameter at all, still parses."""
    for content_type in (b"multipart/alternative; boundary=B", b"multipart/alternative"):
        body = b"--B\r\nContent-Type: text/html\r\n\r\n" + page().encode()
        result = read_notification(raw(body, content_type=content_type), SENDERS)
        assert isinstance(result, Notification | Rejection)


# -------------------------------------------------------------------- properties


def _assert_result(result: object) -> None:
    assert isinstance(result, Notification | Rejection), result
    if isinstance(result, Notification):
        assert result.filenames
        for name in result.filenames:
            assert check_name(name) == name


@given(st.binary(max_size=4096))
def test_any_bytes_never_raise(data: bytes) -> None:
    """read_notification returns a Notification or Rejection for any bytes at all."""
    _assert_result(read_notification(data, SENDERS))


HEADER_PREFIX = st.sampled_from(
    [
        b"From: reportingportal@collegeboard.org\r\n",
        b"From: reportingportal@collegeboard.org\r\nContent-Type: text/html\r\n\r\n",
        b"From: a@collegeboard.org\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n",
        b"From: a@collegeboard.org\r\nContent-Type: text/html\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        b"From: a@collegeboard.org\r\nContent-Type: text/html\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n",
    ]
)
BODY_PIECES = st.sampled_from(
    [
        b"\r\n",
        b"\n",
        b"--B\r\n",
        b"--B--\r\n",
        b"Content-Type: text/html; charset=utf-16\r\n\r\n",
        b"Content-Disposition: attachment\r\n",
        b'<span id="fileName">',
        b"<span id=fileName>",
        b"</span>",
        b"=\r\n",
        b"=3D",
        b"&#0;",
        b"&#47;",
        b"..",
        b"/",
        b"a.csv",
        b"\x00",
        b"\xff",
    ]
)


@given(HEADER_PREFIX, st.lists(st.one_of(BODY_PIECES, st.binary(max_size=16)), max_size=40))
def test_any_body_after_allowed_sender_never_raises(prefix: bytes, pieces: list[bytes]) -> None:
    """Past the sender check, any MIME/HTML soup gives a result whose names are all safe."""
    _assert_result(read_notification(prefix + b"".join(pieces), SENDERS))


@given(
    st.text(max_size=200),
    st.sampled_from(["quoted-printable", "base64", "8bit"]),
    st.booleans(),
)
def test_any_text_in_span_never_raises(text: str, cte: str, with_text: bool) -> None:
    """Arbitrary text inside the fileName element: any result's names pass check_name."""
    html = page(f'<span id="fileName">{text}</span>')
    _assert_result(read_notification(built(html, cte=cte, with_text=with_text), SENDERS))


def hand_encoded(html: str, cte: str, charset: str) -> bytes:
    """A single-part HTML message encoded by hand (the email package mangles UTF-16 bytes)."""
    data = html.encode(charset)
    body = {
        "quoted-printable": lambda b: quopri.encodestring(b, quotetabs=True),
        "base64": base64.encodebytes,
        "8bit": lambda b: b,
    }[cte](data)
    return raw(body, content_type=f"text/html; charset={charset}".encode(), cte=cte.encode())


@given(
    st.text(
        alphabet=st.characters(categories=["L", "N"], include_characters="_-. "),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from(["quoted-printable", "base64", "8bit"]),
    st.sampled_from(["utf-8", "utf-16", "utf-16-be", "gb18030"]),
    st.booleans(),
)
def test_plain_names_round_trip(text: str, cte: str, charset: str, by_hand: bool) -> None:
    """Any name check_name accepts comes back exactly, whatever the encoding and charset."""
    name = text.strip()
    try:
        check_name(name)
    except RefusedError:
        return
    html = page(f'<span id="fileName"> {name} </span>')
    if by_hand or charset != "utf-8":
        data = hand_encoded(html, cte, charset)
    else:
        data = built(html, cte=cte, charset=charset)
    assert names_of(data) == (name,)


# ------------------------------------------------------- the header screen and the bounds


@pytest.mark.parametrize(
    ("headers", "sender"), [v[1:] for v in FROM_HEADERS], ids=[v[0] for v in FROM_HEADERS]
)
def test_header_screen_agrees_with_the_full_read(headers: list[bytes], sender: str | None) -> None:
    """may_be_notification on the fetched header fields passes exactly the allowed senders,
    so no notification is left unfetched and no other mail's body is fetched."""
    message = raw(page().encode(), headers=headers)
    fields = header_fields(message, {"FROM", "MESSAGE-ID", "AUTHENTICATION-RESULTS"})
    assert may_be_notification(fields, SENDERS) == (sender is not None)


def test_header_screen_checks_authentication_results_when_asked() -> None:
    """With an authserv_id only a message vouched for by that server is a candidate."""
    vouched = [
        b"From: a@collegeboard.org",
        b"Authentication-Results: mx.example.edu; dkim=pass header.d=collegeboard.org",
    ]
    assert may_be_notification(b"\r\n".join(vouched) + b"\r\n\r\n", SENDERS, "mx.example.edu")
    assert not may_be_notification(vouched[0] + b"\r\n\r\n", SENDERS, "mx.example.edu")


def test_too_much_html_is_refused_before_parsing() -> None:
    """A notification-shaped mail with 300 K characters of HTML is too_large, not parsed
    (a 5 MB one took 9 s and 456 MB of memory)."""
    data = built(page() + "<p>" + "x" * 300_000 + "</p>")
    assert reason_of(data) == "too_large"
    assert names_of(built(page() + "<p>" + "x" * (MAX_HTML_CHARS // 2) + "</p>")) == (NAME,)


def test_too_many_names_in_one_mail_are_refused() -> None:
    """At most MAX_NAMES file names are taken from one email; more is too_many_filenames."""
    spans = "".join(f'<span id="fileName">4300_{n:06d}.csv</span>' for n in range(MAX_NAMES + 1))
    assert reason_of(built(page(spans))) == "too_many_filenames"


def _nested(depth: int) -> bytes:
    """A notification whose HTML part sits `depth` multiparts deep."""
    inner = 'Content-Type: text/html\r\n\r\n<span id="fileName">deep.csv</span>\r\n'
    for level in range(depth, 0, -1):
        inner = (
            f'Content-Type: multipart/mixed; boundary="d{level}"\r\n\r\n'
            f"--d{level}\r\n{inner}\r\n--d{level}--\r\n"
        )
    head = "From: College Board <reportingportal@collegeboard.org>\r\nMessage-ID: <n@x>\r\n"
    return (head + "MIME-Version: 1.0\r\n" + inner).encode()


@pytest.mark.parametrize("depth", [1, 2, 16])
def test_a_notification_nested_as_deep_as_the_mailbox_reads_is_read(depth: int) -> None:
    found = read_notification(_nested(depth), SENDERS)
    assert isinstance(found, Notification) and found.filenames == ("deep.csv",)


@pytest.mark.parametrize("depth", [17, 150])
def test_multiparts_nested_deeper_than_the_mailbox_reads_are_malformed(depth: int) -> None:
    """The reader stops where the mailbox's structure reading stops (16 deep): a message
    read whole and one read by its structure get the same answer."""
    found = read_notification(_nested(depth), SENDERS)
    assert isinstance(found, Rejection) and found.reason == "malformed"
    assert "nested more than 16 deep" in found.detail


def _many_addresses(n: int) -> bytes:
    """A spoofed notification whose From lists `n` addresses (~27 bytes each)."""
    addresses = ", ".join(f"person{i}@collegeboard.org" for i in range(n))
    return mail.notification("x.csv").replace(b"From: ", f"From: {addresses}, ".encode(), 1)


def test_long_headers_read_are_not_kept_after_their_message() -> None:
    """Parsed headers are remembered only while one message is read, or when short and
    common (College Board's From): a parsed 27 KB From list weighs ~13 MB, and such
    mails must not stay in memory."""
    read_notification(_many_addresses(10), SENDERS)  # first use of the parser's tables
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3):
            raw = _many_addresses(1_000 + n)
            headers = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            assert not may_be_notification(headers, SENDERS)
            assert isinstance(read_notification(raw, SENDERS), Rejection)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 5_000_000, kept


def _html_parts_message(parts: list[str]) -> bytes:
    body = "".join(f"--b\r\n{part}\r\n" for part in parts) + "--b--\r\n"
    head = (
        "From: College Board <reportingportal@collegeboard.org>\r\nMessage-ID: <p@x>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    )
    return (head + body).encode()


def test_more_html_parts_than_the_mailbox_reads_are_too_large() -> None:
    """Five HTML parts: refused by the reader as the mailbox's structure reading refuses
    them, whichever way the message was fetched."""
    parts = [f'Content-Type: text/html\r\n\r\n<span id="fileName">{n}.csv</span>' for n in range(5)]
    found = read_notification(_html_parts_message(parts), SENDERS)
    assert isinstance(found, Rejection) and found.reason == "too_large"
    four = read_notification(_html_parts_message(parts[:4]), SENDERS)
    assert isinstance(four, Notification) and len(four.filenames) == 4


def test_an_html_part_under_huge_headers_is_too_large() -> None:
    pad = "".join(f"X-Pad-{i}: {'p' * 990}\r\n" for i in range(20))
    part = f'Content-Type: text/html\r\n{pad}\r\n<span id="fileName">h.csv</span>'
    found = read_notification(_html_parts_message([part]), SENDERS)
    assert isinstance(found, Rejection) and found.reason == "too_large"
    assert "headers are over" in found.detail
