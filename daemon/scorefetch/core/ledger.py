"""The SQLite ledger: what was announced, what landed, where the mailbox watcher and each
source's listing stand.

One row per (vendor, key) — the key is the file name for College Board. A row
is written before any request is made for it, so a crash leaves a `pending`
row that the next start redoes. WAL and synchronous=FULL: a row said to be
committed survives a power cut.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scorefetch.core.errors import ScorefetchError
from scorefetch.core.forwards import ForwardRows
from scorefetch.core.logs import scrub_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    vendor      TEXT NOT NULL,
    key         TEXT NOT NULL,
    filename    TEXT NOT NULL,
    product     TEXT,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'retrying', 'downloaded', 'failed')),
    source      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    path        TEXT,
    bytes       INTEGER,
    sha256      TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (vendor, key)
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state);
CREATE TABLE IF NOT EXISTS mailbox (
    folder      TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS forwards (
    destination TEXT NOT NULL,
    vendor      TEXT NOT NULL,
    key         TEXT NOT NULL,
    filename    TEXT NOT NULL,
    product     TEXT,
    path        TEXT NOT NULL,
    bytes       INTEGER,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'retrying', 'uploaded', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    remote_path TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (destination, vendor, key)
);
CREATE INDEX IF NOT EXISTS forwards_state ON forwards (destination, state);
CREATE TABLE IF NOT EXISTS destinations (
    name        TEXT PRIMARY KEY,
    since       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS watcher (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
-- Before there was a positions table, College Board's listing cursor lived in `watcher`.
INSERT OR IGNORE INTO positions SELECT * FROM watcher WHERE name = 'collegeboard.last_listing';
DELETE FROM watcher WHERE name = 'collegeboard.last_listing';
"""


@dataclass(frozen=True)
class Delivery:
    vendor: str
    key: str
    filename: str
    product: str | None
    state: str
    source: str
    attempts: int
    path: str | None
    bytes: int | None
    sha256: str | None
    error: str | None
    updated_at: str
    created_at: str = ""  # when the file was first announced (mail, listing, fetch)
    removed_at: str | None = None  # retention deleted the local copy; the row stays


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Ledger:
    """Thread-safe: one connection behind a lock (writes are tiny; downloads dominate)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """`readonly`: for `status` and other readers, who may not own the ledger: nothing
        is created, upgraded or chmod-ed, and nothing can be written."""
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    check_same_thread=False,
                    isolation_level=None,
                    timeout=30,
                )
                self._db.row_factory = sqlite3.Row
            else:
                self._db = self._open_for_writing(path)
        except (OSError, sqlite3.Error) as exc:
            raise ScorefetchError(f"cannot open the ledger {path}: {exc}") from exc
        self.path = path
        self._lock = threading.Lock()
        self.forwards = ForwardRows(self._execute)

    @staticmethod
    def _open_for_writing(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
        if "removed_at" not in columns:  # a ledger from before retention
            db.execute("ALTER TABLE deliveries ADD COLUMN removed_at TEXT")
        path.chmod(0o600)
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise ScorefetchError(f"ledger {self.path}: {exc}") from exc

    def claim(
        self, vendor: str, key: str, filename: str, source: str, product: str | None = None
    ) -> bool:
        """Record that `key` is wanted. False when it is already downloaded or under way."""
        now = _now()
        cursor = self._execute(
            "INSERT INTO deliveries"
            " (vendor, key, filename, product, state, source, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)"
            " ON CONFLICT (vendor, key) DO UPDATE SET state = 'pending', attempts = 0,"
            "   error = NULL, source = excluded.source, updated_at = excluded.updated_at"
            " WHERE deliveries.state = 'failed'",
            (vendor, key, filename, product, source, now, now),
        )
        return cursor.rowcount == 1

    def claim_all(self, vendor: str, keys: list[tuple[str, str | None]], source: str) -> list[str]:
        """Record many (key, product) pairs in one transaction; returns the newly claimed keys.
        One commit, so a listing is remembered whole or not at all."""
        now = _now()
        claimed = []
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for key, product in keys:
                        cursor = self._db.execute(
                            "INSERT INTO deliveries (vendor, key, filename, product, state,"
                            " source, created_at, updated_at)"
                            " VALUES (?, ?, '', ?, 'pending', ?, ?, ?)"
                            " ON CONFLICT (vendor, key) DO NOTHING",
                            (vendor, key, product, source, now, now),
                        )
                        if cursor.rowcount == 1:
                            claimed.append(key)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise ScorefetchError(f"ledger {self.path}: {exc}") from exc
        return claimed

    def get(self, vendor: str, key: str) -> Delivery | None:
        row = self._execute(
            "SELECT * FROM deliveries WHERE vendor = ? AND key = ?", (vendor, key)
        ).fetchone()
        return _delivery(row) if row else None

    def attempt(self, vendor: str, key: str) -> int:
        """Count one more attempt; returns the new count."""
        self._execute(
            "UPDATE deliveries SET attempts = attempts + 1, updated_at = ?"
            " WHERE vendor = ? AND key = ?",
            (_now(), vendor, key),
        )
        row = self.get(vendor, key)
        return row.attempts if row else 0

    def downloaded(self, vendor: str, key: str, path: Path, size: int, sha256: str) -> None:
        self._execute(
            "UPDATE deliveries SET state = 'downloaded', filename = ?, path = ?, bytes = ?,"
            " sha256 = ?, error = NULL, updated_at = ? WHERE vendor = ? AND key = ?",
            (path.name, str(path), size, sha256, _now(), vendor, key),
        )

    def failed(self, vendor: str, key: str, error: str, *, will_retry: bool) -> None:
        self._execute(
            "UPDATE deliveries SET state = ?, error = ?, updated_at = ?"
            " WHERE vendor = ? AND key = ?",
            ("retrying" if will_retry else "failed", scrub_text(error), _now(), vendor, key),
        )

    def unfinished(self, vendor: str) -> list[Delivery]:
        """Rows announced but not landed: redone at start-up."""
        rows = self._execute(
            "SELECT * FROM deliveries WHERE vendor = ? AND state IN ('pending', 'retrying')"
            " ORDER BY created_at",
            (vendor,),
        ).fetchall()
        return [_delivery(r) for r in rows]

    def recent(self, limit: int = 20) -> list[Delivery]:
        rows = self._execute(
            "SELECT * FROM deliveries ORDER BY updated_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_delivery(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def mailbox_position(self, folder: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last handled UID) of `folder`, or None before the first start."""
        row = self._execute(
            "SELECT uidvalidity, last_uid FROM mailbox WHERE folder = ?", (folder,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def save_mailbox_position(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        self._execute(
            "INSERT INTO mailbox (folder, uidvalidity, last_uid, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (folder) DO UPDATE SET uidvalidity = excluded.uidvalidity,"
            "   last_uid = excluded.last_uid, updated_at = excluded.updated_at",
            (folder, uidvalidity, last_uid, _now()),
        )

    def set_watcher(self, name: str, value: str) -> None:
        """A line of watcher state for `scorefetch status` (connected, last round-trip …)."""
        self._execute(
            "INSERT INTO watcher (name, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
            "   updated_at = excluded.updated_at",
            (name, scrub_text(value), _now()),
        )

    def redo(self, vendor: str, key: str, source: str) -> bool:
        """Make a downloaded row pending again (its file is gone, or `fetch --force`)."""
        cursor = self._execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, error = NULL, source = ?,"
            " updated_at = ? WHERE vendor = ? AND key = ? AND state = 'downloaded'",
            (source, _now(), vendor, key),
        )
        return cursor.rowcount == 1

    def last_downloaded(self) -> dict[str, str]:
        """Per vendor, when its latest file landed (ISO 8601, UTC)."""
        rows = self._execute(
            "SELECT vendor, max(updated_at) FROM deliveries WHERE state = 'downloaded'"
            " GROUP BY vendor"
        ).fetchall()
        return {vendor: at for vendor, at in rows}

    def pending_counts(self) -> dict[str, int]:
        """Per vendor, rows announced but not landed (pending or retrying)."""
        rows = self._execute(
            "SELECT vendor, count(*) FROM deliveries WHERE state IN ('pending', 'retrying')"
            " GROUP BY vendor"
        ).fetchall()
        return {vendor: n for vendor, n in rows}

    def position(self, name: str) -> str | None:
        """Where a source stands (`collegeboard.last_listing`, an Encoura key's last pass …)."""
        row = self._execute("SELECT value FROM positions WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def set_position(self, name: str, value: str) -> None:
        self._execute(
            "INSERT INTO positions (name, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
            "   updated_at = excluded.updated_at",
            (name, value, _now()),
        )

    def positions(self) -> dict[str, tuple[str, str]]:
        rows = self._execute("SELECT name, value, updated_at FROM positions").fetchall()
        return {name: (value, at) for name, value, at in rows}

    def watcher(self) -> dict[str, tuple[str, str]]:
        rows = self._execute("SELECT name, value, updated_at FROM watcher").fetchall()
        return {name: (value, at) for name, value, at in rows}

    def kept(self) -> list[Delivery]:
        """Landed files whose local copy retention has not removed."""
        rows = self._execute(
            "SELECT * FROM deliveries WHERE state = 'downloaded' AND removed_at IS NULL"
            " AND path IS NOT NULL ORDER BY updated_at"
        ).fetchall()
        return [_delivery(r) for r in rows]

    def removed(self, vendor: str, key: str) -> None:
        """The local copy is gone; the row (name, sha256) stays, so it is never fetched again."""
        self._execute(
            "UPDATE deliveries SET removed_at = ? WHERE vendor = ? AND key = ?",
            (_now(), vendor, key),
        )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        vendor=row["vendor"],
        key=row["key"],
        filename=row["filename"],
        product=row["product"],
        state=row["state"],
        source=row["source"],
        attempts=row["attempts"],
        path=row["path"],
        bytes=row["bytes"],
        sha256=row["sha256"],
        error=scrub_text(row["error"]) if row["error"] else None,  # rows of older versions
        updated_at=row["updated_at"],
        removed_at=row["removed_at"],
        created_at=row["created_at"],
    )
