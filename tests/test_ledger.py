"""The SQLite ledger: claims, states, crash recovery rows, the mailbox position."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scorefetch.core.errors import ScorefetchError
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


def test_only_writes_whose_loss_costs_nothing_skip_the_flush(tmp_path: Path) -> None:
    """A claim and a landing are flushed to disk at their commit (synchronous=FULL); a
    lease, an attempt counted, a row made due and the mailbox position are not: their
    commits run under synchronous=NORMAL and the connection is FULL again after each, even
    after a statement that failed. Each write takes effect for another connection."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    seen: list[str] = []
    ledger._db.set_trace_callback(seen.append)
    rows = ledger.work("collegeboard")

    def light(sql: str) -> bool:
        """Whether the one statement starting `sql` ran between NORMAL and FULL."""
        (i,) = [n for n, statement in enumerate(seen) if statement.startswith(sql)]
        return seen[i - 1 : i + 2 : 2] == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]

    assert ledger.claim("collegeboard", "a.csv", "a.csv", "mail")
    assert rows.take(("a.csv",), 60)
    assert rows.attempt(("a.csv",)) == 1
    ledger.save_mailbox_position("INBOX", 7, 101)
    rows.release(("a.csv",))
    assert light("UPDATE deliveries SET lease = '")  # taken
    assert light("UPDATE deliveries SET attempts")
    assert light("INSERT INTO mailbox")
    assert light("UPDATE deliveries SET lease = NULL")
    assert not light("INSERT INTO deliveries")  # the claim: flushed
    ledger.downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 1, "0" * 64)
    assert "PRAGMA synchronous=NORMAL" not in seen[seen.index("BEGIN IMMEDIATE") :]

    other = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert other.execute("SELECT attempts, state, lease FROM deliveries").fetchall() == [
        (1, "downloaded", None)
    ]
    assert other.execute("SELECT last_uid FROM mailbox").fetchall() == [(101,)]
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    with pytest.raises(ScorefetchError):
        ledger._execute("UPDATE no_such_table SET x = 1", durable=False)
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_ctrl_c_inside_a_light_write_leaves_the_flush_on(tmp_path: Path) -> None:
    """`fetch` and `sync` raise KeyboardInterrupt on Ctrl-C wherever Python is: raised just
    after the connection went to synchronous=NORMAL, it must not leave every later claim
    and landing unflushed."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    real = ledger._db

    class Interrupted:
        def execute(self, sql: str, *args: object) -> object:
            done = real.execute(sql, *args)
            if sql == "PRAGMA synchronous=NORMAL":
                raise KeyboardInterrupt
            return done

    ledger._db = Interrupted()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        ledger.save_mailbox_position("INBOX", 7, 101)
    assert real.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_mailbox_position(tmp_path: Path) -> None:
    """The (UIDVALIDITY, last UID) pair per folder is stored and replaced."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.mailbox_position("INBOX") is None
    ledger.save_mailbox_position("INBOX", 7, 101)
    ledger.save_mailbox_position("INBOX", 7, 105)
    ledger.save_mailbox_position("Other", 9, 3)
    assert ledger.mailbox_position("INBOX") == (7, 105)
    assert ledger.mailbox_position("Other") == (9, 3)
