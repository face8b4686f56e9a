"""The fileName reader (collegeboard/html.py) against the bs4 reading it replaced, which is
kept here as the reference: generated tag soup around every feature either reads, explicit
cases of each quirk of bs4 kept on purpose, and every HTML part of the test corpus and the
samples, as it is and with every element made a fileName element. The two must agree on
every input, exceptions included: a vendor's email must read as it always did."""

from __future__ import annotations

import re
import warnings
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.entities import html5
from pathlib import Path

import pytest
from bs4 import BeautifulSoup, Tag
from bs4.dammit import EntitySubstitution, UnicodeDammit
from hypothesis import example, given
from hypothesis import strategies as st

from scorefetch.collegeboard import html as html_module
from scorefetch.collegeboard.html import _WINDOWS_1252, _entity, is_file_name_id
from scorefetch.collegeboard.notifications import MAX_NAMES, file_names_in_html
from scorefetch.sandbox import mail
from tests.test_corpus import corpus_files

TESTS = Path(__file__).parent
LIMIT = MAX_NAMES + 1  # what read_notification asks for


def bs4_names(html: str, limit: int = LIMIT) -> list[str]:
    """The daemon's reading until bs4 left it, word for word (warnings aside: bs4 warns
    about markup that looks like a URL, a file name or XML, and the daemon ignored that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soup = BeautifulSoup(html, "html.parser")
    names: dict[str, None] = {}  # an ordered set
    for element in soup.find_all(id=is_file_name_id, limit=limit):
        if isinstance(element, Tag):
            text = element.get_text().strip()
            if text:
                names[text] = None
    return list(names)


def outcome(read: object, html: str, limit: int) -> tuple[str, object]:
    """('names', the list) or ('raises', the exception's class name, as a Rejection's
    detail would name it)."""
    try:
        return "names", read(html, limit)  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - which one is the point
        return "raises", type(exc).__name__


def assert_same(html: str, limit: int = LIMIT) -> None:
    assert outcome(file_names_in_html, html, limit) == outcome(bs4_names, html, limit), html[:300]


# --- generated tag soup ------------------------------------------------------------------

TAGS = [
    "span", "SPAN", "Span", "div", "p", "b", "i", "a", "td", "table", "font", "x-y",
    "pre", "textarea", "title", "script", "style", "template", "rt", "rp", "noscript",
    "br", "img", "hr", "meta", "input", "wbr", "col",
]  # fmt: skip
FILE_NAME_IDS = [
    ' id="fileName"', " id='fileName'", " id=fileName", " ID=FILENAME", ' Id = " filename "',
    ' id="\tfileName\n"', " id=file&#78;ame", ' id="fileNameX"', " id", ' id=""',
    ' id="fileName" id="other"', ' id="other" id="fileName"', ' id="fileName" ID="FileName"',
    ' class="fileName"', ' data-id="fileName"', ' name="fileName"', " id='fileName'/",
    ' id="fileName"x', ' id="fileName" style="color: red"', ' id="fi\u0130lename"',
]  # fmt: skip
TEXTS = [
    "4300_20261_report.csv", "a", "b.txt", " ", "  ", "\n", " \t\r\n ", "\x0c", "\x0b",
    "\xa0", "\u2003", "é名", "\ufffd", "<", ">", "=", "/", "'", '"', ";",
]  # fmt: skip
REFERENCES = [
    "&amp;", "&amp", "&AMP;", "&nbsp;", "&nbsp", "&notin;", "&notit;", "&not", "&foo;",
    "&foo", "&", "& ", "&;", "&lt", "&ampx;", "&amp.x;", "&#", "&#;", "&#x;", "&#12a;",
    "&#65", "&#x41", "&#X41;", "&#x41g", "&#1" + "0" * 4400 + ";", "&#x" + "0" * 5000 + "41;",
]  # fmt: skip
CODE_POINTS = [
    0, 9, 10, 12, 13, 32, 65, 127, 128, 129, 141, 143, 144, 150, 157, 159, 160, 0xD800,
    0xDFFF, 0xFDD0, 0xFFFE, 0x1FFFF, 0x10FFFF, 0x110000, 10**12,
]  # fmt: skip
MARKUP = [
    "<!-- c -->", "<!---->", "<!--", "<!-- <span id=fileName>x</span> -->", "<!x>", "<!>",
    "<!DOCTYPE html>", "<!doctype", "<![CDATA[x]]>", "<![CDATA[]]>", "<![CDATA[ \n ]]>",
    "<![cdata[y]]>", "<![CDATA [z]]>", "<![CDATA[", "<![if mso]>", "<![endif]>",
    "<![foo[x]]>", "<![ x", "<?php echo 1 ?>", "<?xml version='1.0'?>", "<?", "</>", "</ >",
    "</", "< span>", "<1>", "<", "<span", "<span id=fileName", "</span x>", "</span\n>",
]  # fmt: skip


@st.composite
def start_tags(draw: st.DrawFn) -> str:
    tag = draw(st.sampled_from(TAGS))
    attrs = "".join(draw(st.lists(st.sampled_from(FILE_NAME_IDS), max_size=2)))
    end = draw(st.sampled_from([">", ">", "/>", " />", " / >", "\n>"]))
    return f"<{tag}{attrs}{end}"


end_tags = st.builds(
    lambda tag, form: form.format(tag),
    st.sampled_from(TAGS),
    st.sampled_from(["</{}>", "</{}>", "</ {}>", "</{} x>", "</{}\t>"]),
)
charrefs = st.builds(
    lambda n, form: form.format(n),
    st.one_of(st.sampled_from(CODE_POINTS), st.integers(0, 0x110000)),
    st.sampled_from(["&#{};", "&#x{:x};", "&#X{:X};", "&#{} ", "&#x{:x}<b>"]),
)
tokens = st.one_of(
    start_tags(),
    start_tags(),
    end_tags,
    st.sampled_from(TEXTS),
    st.text(max_size=5),
    charrefs,
    st.sampled_from(REFERENCES),
    st.sampled_from(MARKUP),
)
soup = st.lists(tokens, max_size=40).map("".join)
limits = st.integers(-1, 4)


@given(html=soup, limit=limits)
@example(html='<span id="fileName">a</span><span id="fileName">b</span>', limit=1)
def test_tag_soup_reads_as_bs4_read_it(html: str, limit: int) -> None:
    assert_same(html, limit)


@given(html=soup)
def test_tag_soup_reads_as_bs4_read_it_at_the_daemons_limit(html: str) -> None:
    assert_same(html)


# Raw characters of markup in any order: the tokenizer's own corners, whatever they are.
raw = st.text(alphabet="<>/!?-[]&#;=\"' \n\txabcdeilmnpstAFN0123456789", max_size=60)


@given(html=raw.map(lambda s: '<span id="fileName">' + s), limit=limits)
def test_raw_markup_in_a_file_name_element_reads_as_bs4_read_it(html: str, limit: int) -> None:
    assert_same(html, limit)


@st.composite
def nested(draw: st.DrawFn, depth: int = 0) -> str:
    """Elements inside elements, fileName ones inside each other, each closed or not."""
    tag = draw(st.sampled_from(TAGS))
    attrs = draw(st.sampled_from([*FILE_NAME_IDS[:6], "", ""]))
    inner = draw(
        st.lists(st.one_of(tokens, nested(depth + 1)) if depth < 3 else tokens, max_size=4)
    )
    other = draw(st.sampled_from(TAGS))
    close = draw(st.sampled_from([f"</{tag}>", f"</{tag}>", "", f"</{other}>"]))
    return f"<{tag}{attrs}>{''.join(inner)}{close}"


@given(html=st.lists(nested(), max_size=4).map("".join), limit=limits)
def test_nested_file_name_elements_read_as_bs4_read_them(html: str, limit: int) -> None:
    assert_same(html, limit)


# --- each quirk, spelled out -------------------------------------------------------------

QUIRKS = [
    # Blank strings: ASCII whitespace only becomes one space, or one newline if it has one.
    ("blank-between", "<span id=fileName>a<i></i> \t <i></i>b</span>", ["a b"]),
    ("blank-newline", "<span id=fileName>a<i></i> \n <i></i>b</span>", ["a\nb"]),
    ("blank-nbsp", "<span id=fileName>a<i></i>\xa0<i></i>b</span>", ["a\xa0b"]),
    ("blank-vt", "<span id=fileName>a<i></i>\x0b<i></i>b</span>", ["a\x0bb"]),
    ("blank-charrefs", "<span id=fileName>a<i></i>&#32;&#9;<i></i>b</span>", ["a b"]),
    ("blank-in-pre", "<pre id=fileName>a<i></i> \t <i></i>b</pre>", ["a \t b"]),
    ("blank-in-textarea", "<span id=fileName>a<textarea> \t </textarea>b</span>", ["a \t b"]),
    ("pre-unclosed", "<span id=fileName>a<pre></b> \t <i></i>b</span>", ["a \t b"]),
    # A void tag's end tag is ignored whole: the strings either side of it are one.
    ("void-end-tag", "<span id=fileName>a<br>  </br>  <i></i>b</span>", ["a b"]),
    ("void-self-closed", "<span id=fileName>a<br/>  </br>  <i></i>b</span>", ["a  b"]),
    ("void-twice", "<span id=fileName>a<br><br></br> </br> </br> <i></i>b</span>", ["a  b"]),
    ("void-with-id", "<img id=fileName>x<span id=fileName>y</span>", ["y"]),
    ("void-with-id-limit", "<img id=fileName>x<span id=fileName>y</span>", []),
    ("self-closed-span", "<span id=fileName/>x<span id=fileName>y</span>", ["y"]),
    # CDATA: a string of its own, counted as text, empty reads as a space.
    ("cdata", "<span id=fileName>a<![CDATA[b<c>]]>d</span>", ["ab<c>d"]),
    ("cdata-empty", "<span id=fileName>a<![CDATA[]]>b</span>", ["a b"]),
    ("cdata-empty-in-pre", "<pre id=fileName>a<![CDATA[]]>b</pre>", ["ab"]),
    ("cdata-lower-case", "<span id=fileName><![cdata[x]]></span>", ["x"]),
    ("cdata-spaced", "<span id=fileName><![CDATA [x]]>y</span>", ["y"]),
    ("cdata-in-rt", "<span id=fileName><rt><![CDATA[x]]>y</rt></span>", ["x"]),
    ("ms-section", "<span id=fileName><![if mso]>x<![endif]></span>", ["x"]),
    ("unknown-section", "<span id=fileName>x</span><![foo[y]]>", "ParserRejectedMarkup"),
    # Comments, doctypes, processing instructions: no text, but they end a string.
    ("comment", "<span id=fileName>a<!-- b -->c</span>", ["ac"]),
    ("comment-splits-blank", "<span id=fileName>a<i></i> <!-- --> <i></i>b</span>", ["a  b"]),
    ("comment-unterminated", "<span id=fileName>a<!-- b", ["a<!-- b"]),
    ("bogus-comment", "<span id=fileName>a<!b>c</span>", ["ac"]),
    ("doctype", "<span id=fileName>a<!DOCTYPE x>c</span>", ["ac"]),
    ("pi", "<span id=fileName>a<?b?>c</span>", ["ac"]),
    # Strings of a kind of their own, counted only by a tag of that kind.
    ("script-inside", "<span id=fileName>a<script>b</script>c</span>", ["ac"]),
    ("style-inside", "<span id=fileName>a<style>b</style>c</span>", ["ac"]),
    ("template-inside", "<span id=fileName>a<template><b>b</b></template>c</span>", ["ac"]),
    ("rt-inside", "<span id=fileName>a<rt>b</rt><rp>(</rp>c</span>", ["ac"]),
    ("script-itself", "<script id=fileName>x.csv</script>", ["x.csv"]),
    ("script-unclosed", "<script id=fileName>x.csv", []),
    ("style-itself", "<style id=fileName>x.csv</style>", ["x.csv"]),
    ("template-itself", "<template id=fileName><b>x</b><rt>y</rt><![CDATA[z]]></template>", ["x"]),
    ("rt-itself", "<rt id=fileName>x<rp>y</rp></rt>", ["x"]),
    (
        "textarea-title",
        "<textarea id=fileName><b>x</b></textarea><title id=fileName>y</title>",
        ["x", "y"],
    ),
    # Numeric references: windows-1252 for 128-159, U+FFFD for the impossible.
    ("charref-1252", "<span id=fileName>&#150;&#x80;&#159;</span>", ["–€Ÿ"]),
    ("charref-1252-hole", "<span id=fileName>&#129;&#x9D;</span>", ["\x81\x9d"]),
    (
        "charref-invalid",
        "<span id=fileName>&#0;&#xD800;&#x110000;&#99999999999;</span>",
        ["\ufffd" * 4],
    ),
    ("charref-nonchar", "<span id=fileName>&#xFFFE;&#xFDD0;</span>", ["\ufffe\ufdd0"]),
    ("charref-no-semicolon", "<span id=fileName>&#65 &#x42<b>c</b></span>", ["A Bc"]),
    ("charref-bad", "<span id=fileName>&#12a;</span>", ["&#12a;"]),
    ("charref-too-long", "<span id=fileName>&#1" + "0" * 4400 + ";</span>", "ValueError"),
    ("charref-long-hex", "<span id=fileName>&#x" + "0" * 5000 + "41;</span>", ["A"]),
    # Named references: known with or without `;`, unknown ones lose their `;`.
    ("entity", "<span id=fileName>&amp;&amp &lt;&nbsp;x</span>", ["&& <\xa0x"]),
    ("entity-unknown", "<span id=fileName>&foo;bar &ampx; &AMP;</span>", ["&foobar &ampx &"]),
    ("entity-alone", "<span id=fileName>a & b &</span>", ["a & b &"]),
    ("entity-notin", "<span id=fileName>&notin; &notit;</span>", ["∉ &notit"]),  # no prefixes
    # Ids: the last of repeated ones, trimmed, any case; no value is "".
    ("id-last-wins", '<span id="fileName" id="x">a</span><b id="x" id="fileName">b</b>', ["b"]),
    ("id-case-space", "<B ID=' FILENAME\n'>x</B>", ["x"]),
    ("id-no-value", "<span id>x</span>", []),
    ("id-reference", "<span id=file&#78;ame>x</span>", ["x"]),
    # Structure: nesting, mis-nesting, stray end tags, unclosed tags.
    ("nested", "<span id=fileName>a<span id=fileName>b</span>c</span>", ["abc", "b"]),
    ("nested-limit", "<span id=fileName>a<span id=fileName>b</span>c</span>", ["abc"]),
    ("misnested", "<span id=fileName>a<b>b</span>c</b>d", ["ab"]),
    ("stray-end", "<span id=fileName>a</div>b</span>c", ["ab"]),
    ("unclosed", "<span id=fileName>a<div>b", ["ab"]),
    ("closed-by-outer", "<div><span id=fileName>a</div>b</span>", ["a"]),
    ("duplicates", "<i id=fileName>x</i><b id=fileName> x </b>", ["x"]),
    ("empty-counts", "<i id=fileName> </i><b id=fileName>x</b>", []),
]


# Read with a limit of 1 (the others at the daemon's): an element counts, text or none.
LIMITED = frozenset({"void-with-id-limit", "nested-limit", "empty-counts"})


@pytest.mark.parametrize(("name", "html", "expected"), QUIRKS, ids=[q[0] for q in QUIRKS])
def test_each_quirk_of_bs4(name: str, html: str, expected: list[str] | str) -> None:
    """The reading named, as bs4 gave it (the exception's class name where it raised)."""
    limit = 1 if name in LIMITED else LIMIT
    got = outcome(file_names_in_html, html, limit)
    assert got == outcome(bs4_names, html, limit)
    assert got == (("raises", expected) if isinstance(expected, str) else ("names", expected))


@pytest.mark.parametrize("limit", [-5, -1, 0, 1, 2, 3, 100])
def test_limit_counts_elements_as_find_all_did(limit: int) -> None:
    """The first `limit` fileName elements, empty or repeated ones too; under 1 is 1."""
    html = "".join(
        f"<span id=fileName>{text}</span>" for text in ["", "a", "a", " ", "b", "c", "d"]
    )
    assert_same(html, limit)


def test_entities_and_windows_1252_are_bs4s() -> None:
    """The two tables bs4 read references with, checked whole."""
    for name in {n.rstrip(";") for n in html5}:
        assert _entity(name) == EntitySubstitution.HTML_ENTITY_TO_CHARACTER[name], name
    assert _entity("nosuchentity") == "&nosuchentity"
    table = UnicodeDammit.WINDOWS_1252_TO_UTF8  # bs4 looks only at 128-159 in it
    expected = {n: b.decode("utf8") for n, b in table.items() if 0x80 <= n <= 0x9F}
    assert expected == _WINDOWS_1252


def test_deep_nesting_reads_as_bs4_read_it() -> None:
    """A quarter megabyte of unclosed tags (far past Python's recursion limit), a fileName
    element deep inside, closed by its own end tag and then at the end of the document."""
    depth = 256 * 1024 // 9
    html = "<div><b>" * (depth // 2) + "<span id=fileName>x.csv</span>" + "</b>" * 100
    assert file_names_in_html(html) == bs4_names(html) == ["x.csv"]


# --- real mail ---------------------------------------------------------------------------


def html_of(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def corpus_htmls() -> list[tuple[str, str]]:
    """Every text/html part of every message in tests/corpus and tests/samples (attached
    ones too), and of the sandbox's notification."""
    paths = corpus_files() + sorted(TESTS.glob("samples/*.eml"))
    messages = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in paths]
    messages.append(("sandbox", mail.notification("4300_20261_report.csv")))
    found = []
    for name, raw in messages:
        message = BytesParser(policy=policy.default).parsebytes(raw)
        for i, part in enumerate(message.walk()):
            if part.get_content_type() == "text/html":
                found.append((f"{name}#{i}", html_of(part)))
    return found


CORPUS = corpus_htmls()
_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)")


def test_the_corpus_has_html() -> None:
    assert len(CORPUS) >= 70
    assert sum("fileName" in html for _, html in CORPUS) >= 3  # the samples, the sandbox


@pytest.mark.parametrize("html", [h for _, h in CORPUS], ids=[n for n, _ in CORPUS])
def test_corpus_html_reads_as_bs4_read_it(html: str) -> None:
    """As it is, and with every element given id=fileName (real markup's structure: each
    element's text, nested in each other, at the daemon's limit and with none)."""
    assert_same(html)
    spiked = _TAG.sub(r'<\1 id="fileName"', html)
    assert_same(spiked)
    assert_same(spiked, 10**6)


# --- an unclosed tail, read in linear time ----------------------------------------------


def just_over(piece: str, head: str = "") -> str:
    """`head` then `piece` repeated until the tail after the last `>` costs html.parser just
    over SLOW_TAIL: the reader escapes it, bs4 (same tokenizer) still reads it in ~0.2 s."""
    n = 1
    while piece.count("<") * n * len(piece) * n < html_module.SLOW_TAIL:
        n += 1
    return head + piece * n


@pytest.mark.parametrize(
    "html",
    [
        just_over("<a"),
        just_over("</"),
        just_over("<?"),
        just_over("< "),
        just_over("<!-"),
        just_over("<a&amp;&#65;&"),
        just_over("<a", head="<p id=fileName>x.csv</p>"),
        just_over("<b", head="<p><span id=fileName>x"),
        just_over("<\n", head="<pre id=fileName>x"),
    ],
    ids=["lt-a", "lt-slash", "lt-q", "lt-space", "lt-bang", "refs", "after", "inside", "pre"],
)
def test_an_unclosed_tail_reads_as_bs4_read_it(html: str) -> None:
    """Stray `<` after the last `>`, enough of them that html.parser's scan of each to the
    end would cost SLOW_TAIL or more (256 KiB of `<a` took 47 s): the reader escapes the
    tail and reads it as the text bs4 made of it, in one pass."""
    assert html_module._bounded(html) != html  # the escaped path is the one under test
    assert_same(html)


@pytest.mark.parametrize(
    ("piece", "head", "expected"),
    [
        # bs4 made a tag of `<a'` (a quote ends the scan before the end) and refused an
        # unknown marked section; an escaped tail is text whatever it holds.
        ("<a'", "<span id=fileName>x", ["x" + "<a'" * 5774]),
        ("<![foo[", "<span id=fileName>x", ["x" + "<![foo[" * 3780]),
        # bs4 decoded the references of the last piece only (the scan's end was there).
        ("<b&lt;", "<span id=fileName>x", ["x" + "<b&lt;" * 4083]),
    ],
)
def test_an_unclosed_tail_is_text_where_bs4_read_more_into_it(
    piece: str, head: str, expected: list[str]
) -> None:
    html = just_over(piece, head)
    assert html_module._bounded(html) != html
    assert file_names_in_html(html) == expected


def test_every_corpus_html_is_read_unescaped() -> None:
    """No real mail comes near the bound: each corpus HTML part is read as it is."""
    assert [name for name, html in CORPUS if html_module._bounded(html) != html] == []
