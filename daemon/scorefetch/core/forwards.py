"""The ledger's rows for forwarding: one per (destination, landed file), written before
the upload starts, so a crash leaves a row the next start resumes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Execute = Callable[..., sqlite3.Cursor]


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ForwardRows:
    """`ledger.forwards`: shares the ledger's connection and lock through `execute`."""

    def __init__(self, execute: Execute) -> None:
        self._execute = execute

    def claim(
        self,
        destination: str,
        vendor: str,
        key: str,
        path: Path,
        size: int,
        product: str | None = None,
    ) -> bool:
        """Record that `destination` wants this landed file; False when already recorded."""
        now = _now()
        cursor = self._execute(
            "INSERT INTO forwards (destination, vendor, key, filename, product, path, bytes,"
            " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
            " ON CONFLICT DO NOTHING",
            (destination, vendor, key, path.name, product, str(path), size, now, now),
        )
        return cursor.rowcount == 1

    def backfill(self, destination: str, vendors: tuple[str, ...]) -> int:
        """Remember when `destination` was first configured, and claim every file landed
        since then that it has no row for (a crash between landing and claiming, or a
        `scorefetch fetch` run while the daemon was down). Files older than the
        destination are not sent: adding a destination does not replay the archive."""
        now = _now()
        self._execute(
            "INSERT INTO destinations (name, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (destination, now),
        )
        cursor = self._execute(
            "INSERT INTO forwards (destination, vendor, key, filename, product, path, bytes,"
            " state, created_at, updated_at)"
            " SELECT ?, d.vendor, d.key, d.filename, d.product, d.path, d.bytes, 'pending', ?, ?"
            " FROM deliveries d WHERE d.state = 'downloaded' AND d.removed_at IS NULL"
            " AND d.path IS NOT NULL AND d.vendor IN (SELECT value FROM json_each(?))"
            " AND d.updated_at >= (SELECT since FROM destinations WHERE name = ?)"
            " ON CONFLICT DO NOTHING",
            (destination, now, now, json.dumps(vendors), destination),
        )
        return cursor.rowcount

    def get(self, destination: str, vendor: str, key: str) -> Forward | None:
        row = self._execute(
            "SELECT * FROM forwards WHERE destination = ? AND vendor = ? AND key = ?",
            (destination, vendor, key),
        ).fetchone()
        return Forward(**dict(row)) if row else None

    def attempt(self, destination: str, vendor: str, key: str) -> int:
        """Count one more attempt; returns the new count."""
        row = self._execute(
            "UPDATE forwards SET attempts = attempts + 1, updated_at = ?"
            " WHERE destination = ? AND vendor = ? AND key = ? RETURNING attempts",
            (_now(), destination, vendor, key),
        ).fetchone()
        return int(row[0]) if row else 0

    def uploaded(self, destination: str, vendor: str, key: str, remote_path: str) -> None:
        self._execute(
            "UPDATE forwards SET state = 'uploaded', remote_path = ?, error = NULL,"
            " updated_at = ? WHERE destination = ? AND vendor = ? AND key = ?",
            (remote_path, _now(), destination, vendor, key),
        )

    def failed(
        self, destination: str, vendor: str, key: str, error: str, *, will_retry: bool
    ) -> None:
        self._execute(
            "UPDATE forwards SET state = ?, error = ?, updated_at = ?"
            " WHERE destination = ? AND vendor = ? AND key = ?",
            ("retrying" if will_retry else "failed", error, _now(), destination, vendor, key),
        )

    def unfinished(self, destination: str) -> list[Forward]:
        """Rows not uploaded yet, given-up ones included: a restart tries them again."""
        rows = self._execute(
            "SELECT * FROM forwards WHERE destination = ? AND state != 'uploaded'"
            " ORDER BY created_at",
            (destination,),
        ).fetchall()
        return [Forward(**dict(r)) for r in rows]

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

    def states(self, vendor: str, key: str) -> dict[str, str]:
        """Destination → state of each forward row of one landed file."""
        rows = self._execute(
            "SELECT destination, state FROM forwards WHERE vendor = ? AND key = ?", (vendor, key)
        ).fetchall()
        return {name: state for name, state in rows}
