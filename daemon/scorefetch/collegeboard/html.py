"""The texts of an HTML document's `fileName` elements, exactly as Beautiful Soup 4.15 read
them with its "html.parser" builder (`find_all(id=…)`, then each one's `get_text()`).

The daemon read notifications with Beautiful Soup ("the soup" below) until its tree was
found to cost ~1.8 MB and ~15% of a notification's CPU. This reader listens to the same
tokenizer (the standard library's `HTMLParser` with `convert_charrefs=False`, fed the whole
text then closed, as the soup does) and keeps only what the answer needs: the stack of open
elements and the strings of the open `fileName` ones. Where the soup reads oddly, the
oddity is kept, so that a vendor's email reads as it always did: tests/test_html_names.py
holds the soup's reading and compares the two on generated tag soup and on every HTML part
of the test corpus.
"""

from __future__ import annotations

import re
from html.entities import html5
from html.parser import HTMLParser


class ParserRejectedMarkup(Exception):
    """html.parser gave up on the markup (it raises AssertionError, e.g. at `<![foo[`).

    The soup raised its own ParserRejectedMarkup there; this one has the same name, so a
    notification's rejection still reads `unparseable message: ParserRejectedMarkup`."""


def is_file_name_id(value: object) -> bool:
    """An id that names the file: `fileName`, any case, trimmed."""
    return isinstance(value, str) and value.strip().lower() == "filename"


def file_names_in_html(html: str, limit: int) -> list[str]:
    """Trimmed texts of the elements whose id is `fileName` (either quote style, any tag
    case), distinct, in document order, from the first `limit` such elements (a `limit`
    under 1 counts as 1, as the soup's `find_all` did). Raises ParserRejectedMarkup where
    the soup did, and ValueError where the soup let one out (a decimal `&#…;` of over 4300
    digits: int()'s limit)."""
    reader = _Reader(limit if limit > 0 else 1)
    try:
        reader.feed(_bounded(html))
        reader.close()
    except AssertionError as exc:
        raise ParserRejectedMarkup(str(exc)) from exc
    reader.flush()  # the soup ends the last string at the end of the document
    names: dict[str, None] = {}  # an ordered set
    for strings in reader.found:
        text = "".join(strings).strip()
        if text:
            names[text] = None
    return list(names)


# html.parser (before CPython 3.14 and its backports of gh-135462) reads each `<` left
# unclosed after the document's last `>` by scanning to the end: `<a` repeated over 256 KiB
# took 47 s. Past this much work ((such `<`) × (their span)), the rest is read as the text
# the scan would have ended in (as the soup read it, but for a `<tag'` the scan made a tag
# of): linear. No real notification ends in thousands of stray `<`.
SLOW_TAIL = 10**8


def _bounded(html: str) -> str:
    """`html`, or, when its unclosed tail would cost html.parser SLOW_TAIL or more, with
    that tail's `&` and `<` escaped (the reader decodes them back: the same characters)."""
    cut = html.rfind(">") + 1
    tail = html[cut:]
    if tail.count("<") * len(tail) < SLOW_TAIL:
        return html
    return html[:cut] + tail.replace("&", "&amp;").replace("<", "&lt;")


# The soup's HTMLTreeBuilder.DEFAULT_EMPTY_ELEMENT_TAGS: closed as soon as they open.
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "menuitem",
     "meta", "param", "source", "track", "wbr", "basefont", "bgsound", "command", "frame",
     "image", "isindex", "nextid", "spacer"}
)  # fmt: skip
# DEFAULT_PRESERVE_WHITESPACE_TAGS: inside one, a blank string is kept as it is.
_PRESERVE = frozenset({"pre", "textarea"})
# DEFAULT_STRING_CONTAINERS: a string inside one (the innermost) is of that tag's kind
# (Script, Stylesheet, TemplateString, RubyTextString, RubyParenthesisString), and such a
# tag's get_text() counts only strings of its own kind.
_CONTAINERS = frozenset({"script", "style", "template", "rt", "rp"})
# The kinds of string get_text() counts for any other tag: NavigableString and CData.
# Comments, doctypes, declarations and processing instructions count for no tag.
_TEXT = "#text"
_CDATA = "#cdata"
_MAIN = frozenset({_TEXT, _CDATA})
_KINDS = {name: frozenset({name}) for name in _CONTAINERS}
_ASCII_SPACES = "\x20\x0a\x09\x0c\x0d"  # BeautifulSoup.ASCII_SPACES
# The soup reads `&#128;`–`&#159;` as the windows-1252 characters of those bytes (`&#150;`
# is an en dash), except the five windows-1252 leaves undefined, which stay C1 controls.
_WINDOWS_1252 = {
    n: bytes([n]).decode("cp1252") for n in range(0x80, 0xA0) if n not in b"\x81\x8d\x8f\x90\x9d"
}
_DECIMAL_REST = re.compile("^([0-9]+)(.*)")  # the soup's, for a reference int() refuses
_HEX_REST = re.compile("^([0-9a-f]+)(.*)")


def _numeric_reference(name: str) -> tuple[str, str]:
    """The soup's reading of `&#name;`: (character, text after it). Zero, a surrogate or a
    number past U+10FFFF is U+FFFD; noncharacters and other controls are kept as they are."""
    digits, base, rest = name, 10, _DECIMAL_REST
    if name.startswith(("x", "X")):
        digits, base, rest = name[1:], 16, _HEX_REST
    extra = ""
    try:
        number: int | None = int(digits, base)
    except ValueError:
        # html.parser only passes digits, so this is int()'s 4300-digit limit; the soup
        # then calls int() on the same digits again, and that ValueError escapes.
        match = rest.search(digits)
        number = None
        if match is not None:
            number, extra = int(match.group(1), base), match.group(2)
    if number is None:
        return "", digits
    if number == 0 or number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
        return "\ufffd", extra
    return _WINDOWS_1252.get(number) or chr(number), extra


def _entity(name: str) -> str:
    """The soup's reading of `&name` (with or without `;`): the HTML5 entity of that name,
    its no-semicolon form first (no prefix of it: `&notit;` is not `¬it`), or else the text
    `&name` (the `;` html.parser took is lost)."""
    character = html5.get(name)
    if character is None:
        character = html5.get(name + ";")
    return "&" + name if character is None else character


class _Reader(HTMLParser):
    """The soup's tree building, less the tree: which element each string lands in, and of
    which kind, for the first `limit` elements whose id is fileName."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=False)
        self._limit = limit
        self._stack: list[str] = []  # open elements' names, outermost first
        self._open: dict[str, int] = {}  # how many of each name are open
        self._containers: list[str] = []  # open string containers, outermost first
        self._preserving = 0  # open <pre> and <textarea>
        self._closed_void: dict[str, int] = {}  # void tags whose end tag will be ignored
        self._data: list[str] = []  # the string being gathered (only while reading)
        # The open fileName elements: depth in the stack, kinds counted, their strings.
        self._reading: list[tuple[int, frozenset[str], list[str]]] = []
        self.found: list[list[str]] = []  # each fileName element's strings, in order

    def flush(self, kind: str | None = None) -> None:
        """The soup's endData: the data gathered since the last tag or comment is one string.
        Blank (ASCII whitespace only, or empty) outside <pre>/<textarea>, it becomes one
        newline or one space: `a<b></b> \\t <b></b>b` reads `a b`, an empty CDATA a space."""
        if not self._data:
            return
        text = "".join(self._data)
        self._data = []
        if not self._preserving and not text.strip(_ASCII_SPACES):
            text = "\n" if "\n" in text else " "
        if kind is None:
            kind = self._containers[-1] if self._containers else _TEXT
        for _, kinds, strings in self._reading:
            if kind in kinds:
                strings.append(text)

    def _push(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.flush()
        depth = len(self._stack)
        self._stack.append(tag)
        self._open[tag] = self._open.get(tag, 0) + 1
        if tag in _PRESERVE:
            self._preserving += 1
        if tag in _CONTAINERS:
            self._containers.append(tag)
        if len(self.found) < self._limit:
            # A repeated attribute: the last one wins (the soup's on_duplicate_attribute
            # "replace"); `<span id>` has the value "", not None.
            ids = [value for key, value in attrs if key == "id"]
            if ids and is_file_name_id(ids[-1]):
                strings: list[str] = []
                self.found.append(strings)
                self._reading.append((depth, _KINDS.get(tag, _MAIN), strings))

    def _pop_to(self, tag: str) -> None:
        """The soup's _popToTag: close up to the innermost open `tag`; a stray end tag
        closes nothing."""
        self.flush()
        if not self._open.get(tag):
            return
        while True:
            name = self._stack.pop()
            self._open[name] -= 1
            if name in _PRESERVE:
                self._preserving -= 1
            if name in _CONTAINERS:
                self._containers.pop()
            if self._reading and self._reading[-1][0] == len(self._stack):
                self._reading.pop()
            if name == tag:
                return

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._push(tag, attrs)
        if tag in _VOID:
            # A void tag closes at once; its next end tag, if any, is then ignored
            # whole: it does not even end the string being gathered.
            self._pop_to(tag)
            self._closed_void[tag] = self._closed_void.get(tag, 0) + 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # `<tag/>`, void or not, opens and closes; it leaves no end tag to ignore.
        self._push(tag, attrs)
        self._pop_to(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._closed_void.get(tag):
            self._closed_void[tag] -= 1
        else:
            self._pop_to(tag)

    def handle_data(self, data: str) -> None:
        # Data gathered while no fileName element is open is dropped at the next flush
        # (an element opens only after one), so it need not be kept.
        if self._reading:
            self._data.append(data)

    def handle_charref(self, name: str) -> None:
        character, extra = _numeric_reference(name)
        self.handle_data(character)
        self.handle_data(extra)

    def handle_entityref(self, name: str) -> None:
        self.handle_data(_entity(name))

    def unknown_decl(self, data: str) -> None:
        # `<![CDATA[x]]>` is a string of its own, of its own kind (CData, even inside a
        # <script> or <template>), counted as text; other marked sections (`<![if …]>`)
        # are declarations, counted as nothing. Either ends the string before it.
        self.flush()
        if data.upper().startswith("CDATA[") and self._reading:
            self._data.append(data[len("CDATA[") :])
            self.flush(_CDATA)

    def handle_comment(self, data: str) -> None:
        self.flush()

    def handle_decl(self, decl: str) -> None:
        self.flush()

    def handle_pi(self, data: str) -> None:
        self.flush()
