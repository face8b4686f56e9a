"""One email names one file. A spoofed From (the allowlist is by address unless
Authentication-Results is required) naming thousands of files was accepted whole: every
name a ledger row, an authenticated College Board call and its retries, all in one log
line. And a refused name was quoted whole (up to the 5 MB message) in `detail`."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from scorefetch.collegeboard.notifications import (
    MAX_NAMES,
    Notification,
    Rejection,
    read_notification,
)
from scorefetch.sandbox.mail import notification

SENDERS = ["@collegeboard.org"]


def _spans(names: list[str]) -> str:
    return "".join(f'<span id="fileName"> {name} </span><br>' for name in names)


def test_thousands_of_file_names_in_one_email_are_refused_whole() -> None:
    """An email naming 2,000 files (under the HTML bound) is too_many_filenames, briefly."""
    names = [f"4300_20260101_{i:06d}.csv" for i in range(2_000)]
    result = read_notification(notification(names[0], span=_spans(names)), SENDERS)
    assert isinstance(result, Rejection)
    assert result.reason == "too_many_filenames"
    assert len(result.detail) < 200


def test_a_few_names_and_repeats_are_still_a_notification() -> None:
    """Up to MAX_NAMES distinct names, each repeated, is still a notification."""
    names = [f"4300_20260101_{i:06d}.csv" for i in range(MAX_NAMES)]
    result = read_notification(notification(names[0], span=_spans(names + names)), SENDERS)
    assert isinstance(result, Notification)
    assert result.filenames == tuple(names)


def test_names_spread_over_several_html_parts_count_together() -> None:
    """Names are counted across every HTML part of the email, not per part."""
    message = EmailMessage()
    message["From"] = "scores@collegeboard.org"
    message["Message-ID"] = "<two-parts@notify.collegeboard.org>"
    message.set_content("File names below.")
    for part in "ab":
        names = [f"{part}{i}.csv" for i in range(MAX_NAMES // 2 + 1)]
        message.add_attachment(_spans(names), subtype="html", disposition="inline")
    result = read_notification(message.as_bytes(), SENDERS)
    assert isinstance(result, Rejection)
    assert result.reason == "too_many_filenames"


@pytest.mark.parametrize(
    "name",
    [
        "x" * 100_000 + ".csv",  # over 255 bytes, and quoted in the detail
        "4300_2026\u202eVSC.exe",  # RTL override
        "4300\u200b_20260101.csv",  # zero-width space
        "4300&#0;.csv",  # NUL as an entity
        "..&#47;..&#47;etc&#47;passwd",  # separators as entities
        "con.csv",
    ],
)
def test_hostile_names_are_refused_and_quoted_briefly(name: str) -> None:
    """Names hidden by entities, invisible characters or sheer length are unsafe_filename."""
    result = read_notification(notification("a.csv", span=_spans([name])), SENDERS)
    assert isinstance(result, Rejection)
    assert result.reason == "unsafe_filename"
    assert len(result.detail) < 300


@pytest.mark.parametrize("tail", ["<a", "</", "<?", "<!-"], ids=["tag", "end", "pi", "bang"])
def test_a_hostile_unclosed_tail_costs_one_pass_and_keeps_the_name_before_it(tail: str) -> None:
    """Under the HTML bound, a notification whose HTML ends in ~250 KiB of unclosed `<`
    (html.parser scanned each to the end: 47 s for `<a`) is read in one pass, and the
    file named before that tail is still the notification's. (Its time is measured in
    the notes, not asserted: the reading is what this checks.)"""
    span = '<span id="fileName">4300_20260101_000001.csv</span>' + tail * (120_000 // len(tail))
    result = read_notification(notification("4300_20260101_000001.csv", span=span), SENDERS)
    assert isinstance(result, Notification)
    assert result.filenames == ("4300_20260101_000001.csv",)
