"""The ledger's tables and their numbered migrations (`PRAGMA user_version`).

Version 1 is the schema of the first two releases (a ledger without a version is read as
one, once `removed_at` is added). Each later step runs once, in one transaction, after an
online backup of the file (`ledger.sqlite3.v<N>.bak`): a failed step leaves the ledger as
it was, and the backup is there for a person if the new release must be rolled back.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

VERSION_1 = """
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
    removed_at  TEXT,
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

# One work engine: each row is a unit of work with its retry round, when it is next due,
# and which process holds it now (a lease, so `fetch` and the daemon never both run it).
# Forward rows remember the bytes they promise (sha256) and deliveries when they landed
# and whether a person was told they are late.
VERSION_2 = """
ALTER TABLE deliveries ADD COLUMN rounds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN due_at TEXT;
ALTER TABLE deliveries ADD COLUMN lease TEXT;
ALTER TABLE deliveries ADD COLUMN lease_until TEXT;
ALTER TABLE deliveries ADD COLUMN landed_at TEXT;
ALTER TABLE deliveries ADD COLUMN overdue_at TEXT;
ALTER TABLE deliveries ADD COLUMN recovered_at TEXT;
ALTER TABLE deliveries ADD COLUMN kind TEXT;
ALTER TABLE deliveries ADD COLUMN expected_bytes INTEGER;
ALTER TABLE deliveries ADD COLUMN expected_rows INTEGER;
ALTER TABLE deliveries ADD COLUMN suspect TEXT;
ALTER TABLE forwards ADD COLUMN rounds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE forwards ADD COLUMN due_at TEXT;
ALTER TABLE forwards ADD COLUMN lease TEXT;
ALTER TABLE forwards ADD COLUMN lease_until TEXT;
ALTER TABLE forwards ADD COLUMN sha256 TEXT;
ALTER TABLE forwards ADD COLUMN renaming TEXT;
ALTER TABLE forwards ADD COLUMN kind TEXT;
UPDATE deliveries SET landed_at = updated_at WHERE state = 'downloaded';
UPDATE forwards SET sha256 = (SELECT d.sha256 FROM deliveries d
    WHERE d.vendor = forwards.vendor AND d.key = forwards.key);
-- A file given up before this release was told of then (on_failure): no second alert for it.
-- Files still under way are watched like any other.
UPDATE deliveries SET overdue_at = updated_at, recovered_at = updated_at WHERE state = 'failed';
-- Uploads the previous release began: it counted a same-size file at the final name as
-- its own; its rename was never recorded, so a file with these very bytes there is ours.
UPDATE forwards SET renaming = 'legacy' WHERE state != 'uploaded';
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (vendor, state, due_at);
CREATE INDEX IF NOT EXISTS forwards_due ON forwards (destination, state, due_at);
"""

MIGRATIONS: tuple[str, ...] = (VERSION_1, VERSION_2)  # index + 1 is the version it makes
CURRENT = len(MIGRATIONS)


def version(db: sqlite3.Connection) -> int:
    """The ledger's schema version; a ledger of the first releases (no version) is 1."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if (
        found == 0
        and db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
        ).fetchone()
    ):
        return 1
    return found


def migrate(db: sqlite3.Connection, path: Path, *, backups: bool = True) -> list[int]:
    """Bring the ledger to CURRENT; the versions applied. A ledger newer than this
    release is refused (a downgrade would misread it). `backups=False`: no copy before
    each step (an in-memory copy a reader upgrades for itself)."""
    have = version(db)
    if have > CURRENT:
        raise sqlite3.DatabaseError(
            f"ledger schema version {have} is newer than this release knows ({CURRENT}): "
            "run the release that wrote it, or restore the backup taken before the upgrade"
        )
    applied = []
    if have == 1:
        _fix_version_1(db)
    for number in range(have + 1, CURRENT + 1):
        # The copy is taken before the write lock (SQLite cannot copy from a connection
        # holding it) under a name of this process's own; it becomes the backup only if
        # this process then applies the step, so a racing opener never overwrites it.
        taken = None
        if backups and number > 1 and have > 0:
            taken = path.with_name(f"{path.name}.v{number - 1}.bak.{os.getpid()}")
            backup(db, taken)
        db.execute("BEGIN IMMEDIATE")
        try:
            if version(db) >= number:  # another process got here first
                db.execute("ROLLBACK")
                if taken is not None:
                    taken.unlink(missing_ok=True)
                continue
            for statement in _statements(MIGRATIONS[number - 1]):
                if not _already(db, statement):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            if taken is not None:
                taken.replace(path.with_name(f"{path.name}.v{number - 1}.bak"))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            if taken is not None:
                taken.unlink(missing_ok=True)
            raise
        applied.append(number)
    if have == 1 and not applied:
        db.execute(f"PRAGMA user_version = {CURRENT}")
    return applied


def _fix_version_1(db: sqlite3.Connection) -> None:
    """Ledgers from before retention lack `removed_at`; set the version explicitly."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
    if "removed_at" not in columns:
        db.execute("ALTER TABLE deliveries ADD COLUMN removed_at TEXT")
    for statement in _statements(VERSION_1):  # tables added late in version 1
        db.execute(statement)
    if int(db.execute("PRAGMA user_version").fetchone()[0]) == 0:
        db.execute("PRAGMA user_version = 1")


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


def _already(db: sqlite3.Connection, statement: str) -> bool:
    """An ADD COLUMN whose column is there (a ledger whose version was lost or reset)."""
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    table, column = match.groups()
    return column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def backup(db: sqlite3.Connection, target: Path) -> None:
    """A consistent copy of the open ledger (SQLite's online backup: safe under WAL while
    others write), created 0600."""
    target.unlink(missing_ok=True)
    fd = target.open("xb")  # exclusive: never through a planted link
    fd.close()
    target.chmod(0o600)
    copy = sqlite3.connect(target)
    try:
        db.backup(copy)
    finally:
        copy.close()
