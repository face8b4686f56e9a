"""Every vendor response parser, fed arbitrary JSON: the result is a typed value or a
VendorError, never another exception (hypothesis)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scorefetch.collegeboard.client import ListedFile, parse_file_url, parse_listing, parse_token
from scorefetch.core.answers import parse_json
from scorefetch.core.errors import VendorError
from scorefetch.encoura.client import (
    KNOWN_PRODUCT_KEYS,
    UNLISTED,
    Export,
    parse_download_url,
    parse_exports,
    parse_login,
    parse_refresh,
)

CONFIGURED = ("score-reporter", "my-new-key")
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
KEYS = st.sampled_from(
    [
        "files",
        "fileName",
        "fileSize",
        "deliveryDate",
        "fileUrl",
        "token",
        "sessionToken",
        "user",
        "organizations",
        "uid",
        "name",
        "productKey",
        "status",
        "created",
        "createdAt",
        "date",
        "downloadUrl",
        "message",
    ]
) | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=30,
)


def outcome(parse: Callable[[Any], Any], value: Any) -> Any:
    """The parser's result, or None when it raised VendorError (any other exception fails)."""
    try:
        return parse(value)
    except VendorError:
        return None


@given(JSON)
def test_collegeboard_listing(value: Any) -> None:
    """/pascoredwnld/files/list: a list of ListedFile with typed fields, or VendorError."""
    listed = outcome(parse_listing, value)
    if listed is not None:
        assert isinstance(listed, list)
        for item in listed:
            assert isinstance(item, ListedFile) and isinstance(item.name, str)
            assert item.size is None or (type(item.size) is int and item.size >= 0)
            assert item.delivered is None or isinstance(item.delivered, str)


@given(JSON)
@pytest.mark.parametrize(
    "parse",
    [parse_token, parse_file_url, parse_download_url, parse_refresh],
    ids=lambda f: f.__name__,
)
def test_string_answers(parse: Callable[[Any], str], value: Any) -> None:
    """login token, fileUrl, downloadUrl, refreshed sessionToken: a non-empty str or
    VendorError."""
    result = outcome(parse, value)
    assert result is None or (isinstance(result, str) and result)


@given(JSON)
def test_encoura_login(value: Any) -> None:
    """/login: (token, organizations as {uid: str, name: str}) or VendorError."""
    result = outcome(parse_login, value)
    if result is not None:
        token, organizations = result
        assert isinstance(token, str) and token
        for org in organizations:
            assert isinstance(org["uid"], str) and org["uid"] and isinstance(org["name"], str)


@given(JSON, st.sampled_from([None, "score-reporter"]))
@example([{"uid": "ok-1", "quantity": 3, "isExpired": True, "productKey": "x"}], None)
@example([{"uid": 7, "listGenerated": False, "created": {"createdAt": 1}}], "score-reporter")
def test_encoura_listing(value: Any, asked: str | None) -> None:
    """/datacenter/exports: Exports with typed fields (text, flags, a count or None) and a
    product key of ours, whatever the listing claims, or VendorError. (The text fields
    only were checked as text, and every field was: a valid export was so rare an input
    that the check never ran, until a uid sent as a number made them common.)"""
    exports = outcome(lambda v: parse_exports(v, asked, CONFIGURED), value)
    if exports is not None:
        for export in exports:
            assert isinstance(export, Export)
            texts = (export.uid, export.product_key, export.status, export.created)
            assert all(isinstance(text, str) for text in texts)
            assert isinstance(export.expired, bool) and isinstance(export.generated, bool)
            assert export.quantity is None or (
                type(export.quantity) is int and export.quantity >= 0
            )
            allowed = {asked} if asked else {*CONFIGURED, *KNOWN_PRODUCT_KEYS, UNLISTED}
            assert export.product_key in allowed
            assert "/" not in export.uid and export.uid not in {".", ".."}


@given(
    st.lists(
        st.fixed_dictionaries(
            {"uid": st.text(max_size=12), "productKey": st.text(max_size=12) | SCALARS}
        ),
        max_size=5,
    )
)
def test_encoura_listing_never_spells_a_path(records: list[dict[str, Any]]) -> None:
    """Whatever text productKey and uid hold, the folder is ours and the uid plain."""
    for export in parse_exports(records, None, CONFIGURED):
        assert export.product_key in {*CONFIGURED, *KNOWN_PRODUCT_KEYS, UNLISTED}
        assert export.uid.isascii() and "/" not in export.uid and export.uid[0] not in ".-"


@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_answer_bytes_parse_or_value_error(raw: bytes) -> None:
    """Any answer body is a JSON value or a ValueError (bad UTF-8, NaN text, deep nesting)."""
    with contextlib.suppress(ValueError):
        parse_json(raw)


def test_deep_nesting_is_a_value_error() -> None:
    """A body nested deeper than the interpreter's stack is a ValueError, not a crash."""
    with pytest.raises(ValueError):
        parse_json(b"[" * 200_000 + b"]" * 200_000)
