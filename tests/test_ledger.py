"""The SQLite ledger: claims, states, crash recovery rows, the mailbox position."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from scorefetch.core.ledger import Ledger


def test_claim_once_then_duplicate(tmp_path: Path) -> None:
    """A key is claimed once; a second claim while pending or downloaded is refused."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    assert not ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 10, "00" * 32)
    assert not ledger.claim("collegeboard", "a.csv", "a.csv", "listing")
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and row.state == "downloaded" and row.bytes == 10


def test_failed_row_can_be_claimed_again(tmp_path: Path) -> None:
    """A file that failed for good is tried afresh when announced again."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    assert ledger.attempt("collegeboard", "a.csv") == 1
    ledger.failed("collegeboard", "a.csv", "HTTP 404", will_retry=False)
    assert ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and (row.state, row.attempts, row.error) == ("pending", 0, None)


def test_unfinished_survive_reopen(tmp_path: Path) -> None:
    """Pending and retrying rows outlive the process; downloaded ones are not listed."""
    path = tmp_path / "state" / "ledger.sqlite3"
    ledger = Ledger(path)
    for name in ("a.csv", "b.csv", "c.csv"):
        ledger.claim("collegeboard", name, name, "notification")
    ledger.failed("collegeboard", "b.csv", "503", will_retry=True)
    ledger.downloaded("collegeboard", "c.csv", tmp_path / "c.csv", 1, "ab" * 32)
    ledger.close()
    reopened = Ledger(path)
    assert [(d.key, d.state) for d in reopened.unfinished("collegeboard")] == [
        ("a.csv", "pending"),
        ("b.csv", "retrying"),
    ]
    assert reopened.counts() == {"pending": 1, "retrying": 1, "downloaded": 1}


def test_durability_settings_and_permissions(tmp_path: Path) -> None:
    """WAL journal, a 0600 database file in a 0700 folder."""
    path = tmp_path / "state" / "ledger.sqlite3"
    Ledger(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_mailbox_position(tmp_path: Path) -> None:
    """The (UIDVALIDITY, last UID) pair per folder is stored and replaced."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.mailbox_position("INBOX") is None
    ledger.save_mailbox_position("INBOX", 7, 101)
    ledger.save_mailbox_position("INBOX", 7, 105)
    ledger.save_mailbox_position("Other", 9, 3)
    assert ledger.mailbox_position("INBOX") == (7, 105)
    assert ledger.mailbox_position("Other") == (9, 3)
