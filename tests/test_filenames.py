"""File names from vendors and emails: what check_name lets through, formats, twins, URLs."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scorefetch.core.errors import RefusedError
from scorefetch.core.filenames import (
    MAX_NAME_BYTES,
    check_name,
    file_format,
    name_from_url,
)

ACCEPTED = [
    pytest.param("4300_20180410_111604.csv", id="cb-current-csv"),
    pytest.param("4300_20180410_111604.txt", id="cb-current-txt"),
    pytest.param("4300_20180410_000123.txt", id="cb-older-serial"),
    pytest.param("00000020150717000005.csv", id="cb-k12"),
    pytest.param("essays.zip", id="essays-zip"),
    pytest.param("4300_20261121_101544.csv", id="sample-name"),
    pytest.param("prospect-2026-11-21.csv", id="encoura-like"),
    pytest.param("aos_export 2026 (1).csv", id="spaces-parens"),
    pytest.param("résultats_été.csv", id="latin-letters"),
    pytest.param("名前.csv", id="cjk"),
    pytest.param("Ünïcödé.TXT", id="upper-ext"),
    pytest.param("noextension", id="no-extension"),
    pytest.param("a.tar.gz", id="double-ext"),
    pytest.param("x..csv", id="inner-dots"),
    pytest.param("a", id="one-char"),
    pytest.param("a" * 251 + ".csv", id="255-bytes"),
    pytest.param("é" * 125 + ".csv", id="254-bytes-utf8"),
    pytest.param("conx.csv", id="con-prefix"),
    pytest.param("com10.csv", id="com10"),
    pytest.param("my.con.csv", id="con-not-first"),
    pytest.param("~", id="tilde"),
    pytest.param("-rf", id="dash"),
    pytest.param("a\u00a0b.csv", id="inner-nbsp"),
]

REFUSED = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot"),
    pytest.param("...", id="dots"),
    pytest.param("../../etc/passwd", id="traversal"),
    pytest.param("..\\..\\windows\\win.ini", id="win-traversal"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a/b.csv", id="slash"),
    pytest.param("a\\b.csv", id="backslash"),
    pytest.param("x.csv/", id="trailing-slash"),
    pytest.param(".hidden.csv", id="hidden"),
    pytest.param(".4300.csv.part", id="part-file"),
    pytest.param("a\x00b.csv", id="nul"),
    pytest.param("a.csv\x00.exe", id="nul-truncation"),
    pytest.param("a\x01b.csv", id="ctrl-01"),
    pytest.param("a\x1b[2Jb.csv", id="escape"),
    pytest.param("a\nb.csv", id="newline"),
    pytest.param("a\rb.csv", id="cr"),
    pytest.param("a\tb.csv", id="tab"),
    pytest.param("a\x7fb.csv", id="del"),
    pytest.param("a\x85b.csv", id="nel"),
    pytest.param("evil\u202ecsv.exe", id="rtl-override"),
    pytest.param("a\u200bb.csv", id="zero-width-space"),
    pytest.param("a\u200db.csv", id="zwj"),
    pytest.param("\ufeffa.csv", id="bom"),
    pytest.param("a\u2028b.csv", id="line-separator"),
    pytest.param("a\u2029b.csv", id="paragraph-separator"),
    pytest.param("a\ue000b.csv", id="private-use"),
    pytest.param("a\U000e0041b.csv", id="tag-char"),
    pytest.param("a\u0378.csv", id="unassigned"),
    pytest.param("a\ud800.csv", id="lone-surrogate"),
    pytest.param("a" * 300, id="300-bytes"),
    pytest.param("a" * 252 + ".csv", id="256-bytes"),
    pytest.param("é" * 126 + ".csv", id="256-bytes-utf8"),
    pytest.param("😀" * 64, id="256-bytes-emoji"),
    pytest.param("CON.csv", id="con"),
    pytest.param("con", id="con-bare"),
    pytest.param("Prn.txt", id="prn"),
    pytest.param("aux.tar.gz", id="aux-double-ext"),
    pytest.param("NUL", id="nul-device"),
    pytest.param("com1.csv", id="com1"),
    pytest.param("COM9", id="com9"),
    pytest.param("lpt1.txt", id="lpt1"),
    pytest.param("LPT9.csv", id="lpt9"),
    pytest.param("x.csv.", id="trailing-dot"),
    pytest.param("x.csv..", id="trailing-dots"),
    pytest.param("x.csv ", id="trailing-space"),
    pytest.param(" x.csv", id="leading-space"),
    pytest.param("x.csv\u3000", id="trailing-ideographic-space"),
    pytest.param("x.csv\u00a0", id="trailing-nbsp"),
    pytest.param(" ", id="space"),
    pytest.param(
        "COM¹.csv",
        id="com-superscript",
    ),
    pytest.param(
        "LPT².txt",
        id="lpt-superscript",
    ),
    pytest.param(
        "CONIN$.csv",
        id="conin",
    ),
    pytest.param(
        "con .csv",
        id="con-space-ext",
    ),
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_check_name_accepts(name: str) -> None:
    """Plain names (the vendors' real shapes, unicode letters) come back unchanged."""
    assert check_name(name) is name


@pytest.mark.parametrize("name", REFUSED)
def test_check_name_refuses(name: str) -> None:
    """Empty, dotted, separated, control-bearing, overlong, padded or device names are refused."""
    with pytest.raises(RefusedError):
        check_name(name)


def test_length_limit_is_in_utf8_bytes() -> None:
    """The 255 limit counts UTF-8 bytes, not characters: 255 passes, 256 does not."""
    assert MAX_NAME_BYTES == 255
    assert check_name("€" * 85)  # 255 bytes, 85 characters
    with pytest.raises(RefusedError, match="255 bytes"):
        check_name("€" * 85 + "a")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("a/b", "separator"),
        (".x", "dot"),
        ("a\x00", "U\\+0000"),
        ("a\u202e", "U\\+202E"),
        ("x.", "ends"),
        ("a" * 256, "255 bytes"),
        ("CON", "reserved"),
    ],
    ids=["empty", "separator", "dot", "nul", "rtl", "trailing-dot", "long", "device"],
)
def test_refusal_says_why(name: str, message: str) -> None:
    """Each refusal names its reason (the log line is the only explanation an operator gets)."""
    with pytest.raises(RefusedError, match=message):
        check_name(name)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("4300_20180410_111604.csv", "csv"),
        ("4300_20180410_111604.txt", "txt"),
        ("essays.zip", "zip"),
        ("A.CSV", "csv"),
        ("a.TxT", "txt"),
        ("a.tar.gz", "gz"),
        ("noext", ""),
        (".csv", ""),
        ("a.", ""),
        ("", ""),
        ("x..csv", "csv"),
    ],
    ids=["csv", "txt", "zip", "upper", "mixed", "double", "none", "dotfile", "trailing", "empty",
         "inner-dots"],
)  # fmt: skip
def test_file_format(name: str, fmt: str) -> None:
    """The lower-cased last extension without its dot, or '' when there is none."""
    assert file_format(name) == fmt


@pytest.mark.parametrize(
    ("url", "name"),
    [
        (
            "https://bucket.s3.amazonaws.com/exports/4300_20180410_111604.csv"
            "?X-Amz-Signature=abc&Expires=1700000000",
            "4300_20180410_111604.csv",
        ),
        ("https://s3.amazonaws.com/bucket/a/b/My%20Export.csv", "My Export.csv"),
        ("https://s3.amazonaws.com/bucket/%C3%A9t%C3%A9.csv", "été.csv"),
        ("https://h.example/x/prospect_2026.csv#frag", "prospect_2026.csv"),
        ("https://h.example/x/a.csv?next=/../../etc/passwd", "a.csv"),
        ("https://h.example/x/a.csv?name=..%2F..%2Fx", "a.csv"),
        ("https://h.example/x/a%252Fb.csv", "a%2Fb.csv"),
        ("https://h.example/x/a+b.csv", "a+b.csv"),
        ("https://h.example/x/%ZZ.csv", "%ZZ.csv"),
        ("https://h.example/a/../b.csv", "b.csv"),
        ("https://user:pw@h.example:8443/x/c.csv", "c.csv"),
        ("/relative/path/d.csv", "d.csv"),
        ("e.csv", "e.csv"),
    ],
    ids=[
        "s3-virtual-host",
        "encoded-space",
        "encoded-utf8",
        "fragment",
        "query-traversal",
        "query-encoded-slash",
        "decoded-once",
        "plus-kept",
        "bad-escape-kept",
        "dotdot-earlier-segment",
        "userinfo-port",
        "path-only",
        "bare-name",
    ],
)
def test_name_from_url(url: str, name: str) -> None:
    """The last path segment, URL-decoded once; query and fragment are ignored."""
    assert name_from_url(url) == name


@pytest.mark.parametrize(
    "url",
    [
        "https://h.example/x/%2E%2E%2Fx",
        "https://h.example/x/..%2Fx",
        "https://h.example/x/..%2fetc%2fpasswd",
        "https://h.example/x/a%2Fb.csv",
        "https://h.example/x/a%5Cb.csv",
        "https://h.example/x/..%5C..%5Cwin.ini",
        "https://h.example/x/%2E%2E",
        "https://h.example/x/.%2e",
        "https://h.example/x/%2e",
        "https://h.example/x/..",
        "https://h.example/x/.hidden",
        "https://h.example/x/",
        "https://h.example",
        "https://h.example/x/%00.csv",
        "https://h.example/x/a.csv%00.exe",
        "https://h.example/x/%E2%80%AEvsc.exe",
        "https://h.example/x/CON.csv",
        "https://h.example/x/x.csv%20",
        "https://h.example/x/" + "a" * 300,
    ],
    ids=[
        "encoded-traversal",
        "half-encoded-traversal",
        "lower-hex-traversal",
        "encoded-slash",
        "encoded-backslash",
        "encoded-win-traversal",
        "encoded-dotdot",
        "mixed-dotdot",
        "encoded-dot",
        "dotdot",
        "hidden",
        "trailing-slash",
        "no-path",
        "encoded-nul",
        "nul-truncation",
        "encoded-rtl",
        "device",
        "encoded-trailing-space",
        "overlong",
    ],
)
def test_name_from_url_refuses(url: str) -> None:
    """A last segment that decodes to anything but a plain name is refused."""
    with pytest.raises(RefusedError):
        name_from_url(url)


@pytest.mark.parametrize(
    "url",
    ["https://[bad/x.csv", "https://[::1/x.csv", "http://h.example]/x.csv"],
    ids=["bracket", "ipv6-unclosed", "stray-bracket"],
)
def test_name_from_url_malformed_url_refused(url: str) -> None:
    """A URL urlsplit cannot parse is refused with RefusedError, like any other bad input."""
    with pytest.raises(RefusedError):
        name_from_url(url)


# -------------------------------------------------------------------- properties

NAME_PIECES = st.sampled_from(
    [".", "..", "/", "\\", "a", "Z", "é", "名", "_", "-", " ", "\x00", "\u202e", "\u00a0",
     "csv", ".csv", "CON", "nul", "~", "%2F", "\ufffd", "😀"]
)  # fmt: skip
NAMES = st.one_of(
    st.text(max_size=300),
    st.lists(NAME_PIECES, max_size=12).map("".join),
    st.text(st.characters(codec="utf-8"), max_size=80),
)


@pytest.fixture(scope="module")
def download_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real folder standing in for the download folder."""
    return tmp_path_factory.mktemp("downloads")


@given(name=NAMES)
@example(name="..")
@example(name="../x")
@example(name="a/../../x")
@example(name=".")
def test_no_accepted_name_escapes_the_folder(download_dir: Path, name: str) -> None:
    """Whatever check_name accepts names a direct child of the download folder, nothing else."""
    try:
        accepted = check_name(name)
    except RefusedError:
        return
    assert accepted == name
    assert "/" not in name and "\\" not in name
    assert os.sep not in name and (os.altsep is None or os.altsep not in name)
    assert name not in {"", ".", ".."}
    target = (download_dir / name).resolve()
    assert target.parent == download_dir.resolve()
    assert target.name == name
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES


@given(name=NAMES)
def test_check_name_only_refuses(name: str) -> None:
    """check_name returns its argument or raises RefusedError, never anything else."""
    try:
        assert check_name(name) is name
    except RefusedError as exc:
        assert str(exc)


@given(name=NAMES, query=st.text(max_size=30))
def test_name_from_url_round_trip(name: str, query: str) -> None:
    """A percent-encoded segment decodes to exactly the name when, and only when, it is plain."""
    url = "https://bucket.s3.amazonaws.com/exports/" + quote(name, safe="")
    url += "?" + quote(query, safe="=&")
    try:
        expected: str | None = check_name(name)
    except RefusedError:
        expected = None
    if expected is None:
        with pytest.raises(RefusedError):
            name_from_url(url)
    else:
        assert name_from_url(url) == expected
