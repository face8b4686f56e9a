"""Rows as units of work: what the engine asks of a ledger table (deliveries, forwards).

A row is due when it is `pending` or `retrying`, its `due_at` has passed (or is unset) and
no live process holds it. Holding is a lease: the holder's identity (pid and the process's
start time, so a recycled pid is not mistaken for it) and a time after which anyone may
take the row. A row a dead process held is free at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scorefetch.core.logs import scrub_text

Execute = Callable[..., Any]  # Ledger._execute: rows read in full, under its lock
Job = tuple[str, ...]  # the row's key within its lane: (key,) or (vendor, key)


def now_iso(offset_s: float = 0.0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset_s)
    return moment.isoformat(timespec="milliseconds")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if no such pid
    (or only its zombie is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive_without_proc(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_ME: dict[int, str] = {}  # pid -> its holder name (a forked child has its own)


def me() -> str:
    """This process as a lease holder: `pid:start` (read from /proc once per process)."""
    pid = os.getpid()
    if pid not in _ME:
        _ME[pid] = f"{pid}:{_start_time(pid) or '?'}"
    return _ME[pid]


def holder_alive(holder: str) -> bool:
    pid_text, _, start = holder.partition(":")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if start == "?" or not Path("/proc/self/stat").exists():
        return _alive_without_proc(pid)
    return _start_time(pid) == start


class WorkRows:
    """One lane's rows: `table` filtered by `lane` (the vendor, or the destination)."""

    def __init__(
        self,
        execute: Execute,
        table: str,
        lane_column: str,
        lane: str,
        job_columns: tuple[str, ...],
    ) -> None:
        self._execute = execute
        self.table = table
        self._lane = (lane_column, lane)
        self._columns = job_columns
        self._where = " AND ".join(f"{c} = ?" for c in (lane_column, *job_columns))

    def _key(self, job: Job) -> tuple[str, ...]:
        return (self._lane[1], *job)

    def due(self, limit: int) -> list[Job]:
        """Rows to start now, oldest first, that no other live process holds. Rows this
        process holds are included: the engine knows which of them it is running (a lease
        left behind by a write that failed must not hide a row from its own process)."""
        now = now_iso()
        columns = ", ".join(self._columns)
        mine = me()
        rows = self._execute(
            f"SELECT {columns}, lease, lease_until FROM {self.table}"  # noqa: S608
            f" WHERE {self._lane[0]} = ? AND state IN ('pending', 'retrying')"
            " AND (due_at IS NULL OR due_at <= ?) ORDER BY created_at LIMIT ?",
            (self._lane[1], now, limit + 16),
        ).fetchall()
        free = [
            row
            for row in rows
            if row[-2] is None or row[-2] == mine or row[-1] < now or not holder_alive(row[-2])
        ]
        return [tuple(row[: len(self._columns)]) for row in free[:limit]]

    def take(self, job: Job, lease_s: float) -> bool:
        """Hold `job` for this process if it is unfinished and free (or its holder died)."""
        now = now_iso()
        cursor = self._execute(
            f"UPDATE {self.table} SET lease = ?, lease_until = ?"  # noqa: S608
            f" WHERE {self._where} AND state IN ('pending', 'retrying')"
            " AND (lease IS NULL OR lease = ? OR lease_until < ?)",
            (me(), now_iso(lease_s), *self._key(job), me(), now),
            durable=False,
        )
        if cursor.rowcount == 1:
            return True
        holder = self.holder(job)
        if holder is None or holder == me() or holder_alive(holder):
            return False
        cursor = self._execute(
            f"UPDATE {self.table} SET lease = ?, lease_until = ?"  # noqa: S608
            f" WHERE {self._where} AND state IN ('pending', 'retrying') AND lease = ?",
            (me(), now_iso(lease_s), *self._key(job), holder),
            durable=False,
        )
        return bool(cursor.rowcount == 1)

    def renew(self, job: Job, lease_s: float) -> bool:
        """Hold `job` `lease_s` longer while this process still works on it: a round may
        outlast its first lease (three URL tries of a slow download), and a lease run out
        lets another process take the row while this one still writes its file."""
        cursor = self._execute(
            f"UPDATE {self.table} SET lease_until = ?"  # noqa: S608
            f" WHERE {self._where} AND lease = ?",
            (now_iso(lease_s), *self._key(job), me()),
            durable=False,
        )
        return bool(cursor.rowcount == 1)

    def next_due(self) -> str | None:
        """When the earliest row waiting on its schedule is due (ISO, UTC), if any."""
        row = self._execute(
            f"SELECT min(due_at) FROM {self.table} WHERE {self._lane[0]} = ?"  # noqa: S608
            " AND state = 'retrying' AND due_at IS NOT NULL",
            (self._lane[1],),
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def ledger_file(self) -> str:
        """The ledger's file ("" for an in-memory one): names the daemon's doorbell."""
        rows = self._execute("PRAGMA database_list").fetchall()
        return next((str(row[2] or "") for row in rows if row[1] == "main"), "")

    def data_version(self) -> int:
        """SQLite's count of commits by other connections: the cheap "did another process
        write?" that spares a query per lane and poll while nothing happens."""
        row = self._execute("PRAGMA data_version").fetchone()
        return int(row[0]) if row else 0

    def holder(self, job: Job) -> str | None:
        row = self._execute(
            f"SELECT lease FROM {self.table} WHERE {self._where}",  # noqa: S608
            self._key(job),
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def release(self, job: Job) -> None:
        """Let go of `job` unfinished (shutting down): it is due again at once."""
        self._execute(
            f"UPDATE {self.table} SET lease = NULL, lease_until = NULL"  # noqa: S608
            f" WHERE {self._where} AND lease = ?",
            (*self._key(job), me()),
            durable=False,
        )

    def attempt(self, job: Job) -> int:
        """Count one more attempt; the new count."""
        row = self._execute(
            f"UPDATE {self.table} SET attempts = attempts + 1, updated_at = ?"  # noqa: S608
            f" WHERE {self._where} RETURNING attempts",
            (now_iso(), *self._key(job)),
            durable=False,
        ).fetchone()
        return int(row[0]) if row else 0

    def progress(self, job: Job) -> tuple[int, int]:
        """(attempts, rounds) so far."""
        row = self._execute(
            f"SELECT attempts, rounds FROM {self.table} WHERE {self._where}",  # noqa: S608
            self._key(job),
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def failed(
        self, job: Job, error: str, retry_in_s: float | None, kind: str | None = None
    ) -> None:
        """One round failed: `retrying` and due again in `retry_in_s`, or `failed` (None);
        `kind` is the Failure that decided it."""
        self._execute(
            f"UPDATE {self.table} SET state = ?, error = ?, rounds = rounds + 1,"  # noqa: S608
            " kind = ?, due_at = ?, lease = NULL, lease_until = NULL, updated_at = ?"
            f" WHERE {self._where} AND state IN ('pending', 'retrying')",
            (
                "retrying" if retry_in_s is not None else "failed",
                scrub_text(error),
                kind,
                now_iso(retry_in_s) if retry_in_s is not None else None,
                now_iso(),
                *self._key(job),
            ),
        )

    def deferred(self) -> list[Job]:
        """Unfinished rows whose last round was DEFERRED (listed, not generated yet)."""
        columns = ", ".join(self._columns)
        rows = self._execute(
            f"SELECT {columns} FROM {self.table} WHERE {self._lane[0]} = ?"  # noqa: S608
            " AND state = 'retrying' AND kind = 'deferred'",
            (self._lane[1],),
        ).fetchall()
        return [tuple(row) for row in rows]

    def again(self, job: Job) -> None:
        """Due now with a fresh retry budget (re-announced, fetched by hand, resumed)."""
        self._execute(
            f"UPDATE {self.table} SET due_at = NULL, rounds = 0, updated_at = ?"  # noqa: S608
            f" WHERE {self._where} AND state IN ('pending', 'retrying')",
            (now_iso(), *self._key(job)),
            durable=False,
        )
