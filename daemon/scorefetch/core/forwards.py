"""The ledger's rows for forwarding: one per (destination, landed file), written before
the upload starts, so a crash leaves a row the next start resumes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scorefetch.core.logs import scrub_text
from scorefetch.core.work import WorkRows

Execute = Callable[..., Any]  # Ledger._execute: rows read in full, under its lock


@dataclass(frozen=True)
class Forward:
    """One landed file and one destination that wants it."""

    destination: str
    vendor: str
    key: str
    filename: str
    product: str | None
    path: str
    bytes: int | None
    state: str
    attempts: int
    remote_path: str | None
    error: str | None
    created_at: str
    updated_at: str
    rounds: int = 0
    due_at: str | None = None
    lease: str | None = None
    lease_until: str | None = None
    sha256: str | None = None
    renaming: str | None = None  # the remote name a rename was sent for (then: ours)
    kind: str | None = None  # the Failure of the last failed round


def _forward(row: sqlite3.Row) -> Forward:
    fields = dict(row)
    if fields.get("error"):
        fields["error"] = scrub_text(fields["error"])
    return Forward(**fields)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ForwardRows:
    """`ledger.forwards`: shares the ledger's connection and lock through `execute`."""

    def __init__(self, execute: Execute) -> None:
        self._execute = execute

    def work(self, destination: str) -> WorkRows:
        """A destination's rows as units of work (core/engine.py)."""
        return WorkRows(self._execute, "forwards", "destination", destination, ("vendor", "key"))

    @staticmethod
    def claim_in(
        db: sqlite3.Connection,
        destination: str,
        vendor: str,
        key: str,
        path: Path,
        size: int,
        sha256: str,
        product: str | None = None,
    ) -> None:
        """Within the caller's transaction: `destination` owes this landed file. A row given
        up before is due again (the file landed anew); an uploaded one stays uploaded —
        unless these are other bytes (the vendor posted the file again, `fetch --force`
        landed them beside the first as NAME-1): then they are owed too."""
        now = _now()
        db.execute(
            "INSERT INTO forwards (destination, vendor, key, filename, product, path, bytes,"
            " sha256, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
            " ON CONFLICT DO UPDATE SET state = 'pending', path = excluded.path,"
            "   filename = excluded.filename, bytes = excluded.bytes, sha256 = excluded.sha256,"
            "   attempts = 0, rounds = 0, due_at = NULL, error = NULL,"
            "   renaming = CASE WHEN forwards.state = 'uploaded' THEN NULL"
            "     ELSE forwards.renaming END,"
            "   updated_at = excluded.updated_at WHERE forwards.state != 'uploaded'"
            "   OR (forwards.sha256 IS NOT NULL AND forwards.sha256 != excluded.sha256)",
            (destination, vendor, key, path.name, product, str(path), size, sha256, now, now),
        )

    def sent_as(self, destination: str, remote_path: str, sha256: str) -> bool:
        """A row's upload of these very bytes put (or sent the rename to put) a file at
        `remote_path` there: two exports of one name and the same bytes land as one file,
        and what is there may be the other's upload — ours, once its bytes are checked."""
        row = self._execute(
            "SELECT 1 FROM forwards WHERE destination = ? AND sha256 = ?"
            " AND ((state = 'uploaded' AND remote_path = ?) OR renaming = ?) LIMIT 1",
            (destination, sha256, remote_path, remote_path),
        ).fetchone()
        return row is not None

    def renaming(self, destination: str, vendor: str, key: str, remote_path: str) -> None:
        """About to rename our upload to `remote_path`: from now on a file there is ours."""
        self._execute(
            "UPDATE forwards SET renaming = ?, updated_at = ?"
            " WHERE destination = ? AND vendor = ? AND key = ?",
            (remote_path, _now(), destination, vendor, key),
        )

    def backfill(self, destination: str, wants: Callable[[str], bool]) -> int:
        """Remember when `destination` was first configured, and claim every file of a
        vendor it `wants` landed since then that it has no row for (a crash between
        landing and claiming, or a `scorefetch fetch` run while the daemon was down). Files
        older than the destination are not sent: adding a destination does not replay the
        archive."""
        now = _now()
        landed = self._execute("SELECT DISTINCT vendor FROM deliveries").fetchall()
        vendors = [row[0] for row in landed if wants(row[0])]
        self._execute(
            "INSERT INTO destinations (name, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (destination, now),
        )
        cursor = self._execute(
            "INSERT INTO forwards (destination, vendor, key, filename, product, path, bytes,"
            " sha256, state, created_at, updated_at)"
            " SELECT ?, d.vendor, d.key, d.filename, d.product, d.path, d.bytes, d.sha256,"
            "   'pending', ?, ?"
            " FROM deliveries d WHERE d.state = 'downloaded' AND d.removed_at IS NULL"
            " AND d.path IS NOT NULL AND d.vendor IN (SELECT value FROM json_each(?))"
            " AND coalesce(d.landed_at, d.updated_at)"
            "   >= (SELECT since FROM destinations WHERE name = ?)"
            " ON CONFLICT DO NOTHING",
            (destination, now, now, json.dumps(vendors), destination),
        )
        return int(cursor.rowcount)

    def get(self, destination: str, vendor: str, key: str) -> Forward | None:
        row = self._execute(
            "SELECT * FROM forwards WHERE destination = ? AND vendor = ? AND key = ?",
            (destination, vendor, key),
        ).fetchone()
        return _forward(row) if row else None

    def uploaded(self, destination: str, vendor: str, key: str, remote_path: str) -> None:
        self._execute(
            "UPDATE forwards SET state = 'uploaded', remote_path = ?, error = NULL,"
            " due_at = NULL, lease = NULL, lease_until = NULL,"
            " updated_at = ? WHERE destination = ? AND vendor = ? AND key = ?",
            (remote_path, _now(), destination, vendor, key),
        )

    def retry(self, destination: str, vendor: str, key: str) -> None:
        """A row given up on is tried again (a restart: someone may have fixed the cause)."""
        self._execute(
            "UPDATE forwards SET state = 'retrying', rounds = 0, due_at = NULL, updated_at = ?"
            " WHERE destination = ? AND vendor = ? AND key = ? AND state = 'failed'",
            (_now(), destination, vendor, key),
        )

    def orphans(self, wanted: Mapping[str, Callable[[str], bool]]) -> dict[str, int]:
        """Files owed from before a configuration change and not sent: to a destination no
        longer configured, or of a vendor its `vendors:` no longer lists (`wanted`: each
        configured destination's `wants`). Destination → how many."""
        rows = self._execute(
            "SELECT destination, vendor, count(*) FROM forwards WHERE state != 'uploaded'"
            " GROUP BY destination, vendor"
        ).fetchall()
        found: dict[str, int] = {}
        for name, vendor, n in rows:
            if name not in wanted or not wanted[name](vendor):
                found[name] = found.get(name, 0) + n
        return found

    def unfinished(self, destination: str) -> list[Forward]:
        """Rows not uploaded yet, given-up ones included: a restart tries them again."""
        rows = self._execute(
            "SELECT * FROM forwards WHERE destination = ? AND state != 'uploaded'"
            " ORDER BY created_at",
            (destination,),
        ).fetchall()
        return [_forward(r) for r in rows]

    def report(self) -> dict[str, dict[str, Any]]:
        """Per destination: rows by state, the backlog, the last error and the last upload."""
        report: dict[str, dict[str, Any]] = {}
        for name, state, n in self._execute(
            "SELECT destination, state, count(*) FROM forwards GROUP BY destination, state"
        ).fetchall():
            entry = report.setdefault(
                name, {"counts": {}, "backlog": 0, "last_error": None, "last_uploaded_at": None}
            )
            entry["counts"][state] = n
            entry["backlog"] += n if state != "uploaded" else 0
        for name, entry in report.items():
            failed = self._execute(
                "SELECT filename, error, updated_at FROM forwards WHERE destination = ?"
                " AND state IN ('retrying', 'failed') ORDER BY updated_at DESC LIMIT 1",
                (name,),
            ).fetchone()
            if failed:
                entry["last_error"] = {"filename": failed[0], "error": failed[1], "at": failed[2]}
            uploaded = self._execute(
                "SELECT max(updated_at) FROM forwards WHERE destination = ? AND state = 'uploaded'",
                (name,),
            ).fetchone()
            entry["last_uploaded_at"] = uploaded[0] if uploaded else None
        return report

    def since(self) -> dict[str, str]:
        """Each destination ever configured → when it was first."""
        rows = self._execute("SELECT name, since FROM destinations").fetchall()
        return {name: at for name, at in rows}

    def states(self, vendor: str, key: str) -> dict[str, str]:
        """Destination → state of each forward row of one landed file."""
        rows = self._execute(
            "SELECT destination, state FROM forwards WHERE vendor = ? AND key = ?", (vendor, key)
        ).fetchall()
        return {name: state for name, state in rows}
