"""The SQLite ledger: what was announced, what landed, where the mailbox watcher and each
source's listing stand.

One row per (vendor, key) — the key is the file name for College Board. A row
is written before any request is made for it, so a crash leaves a `pending`
row that the next start redoes. WAL and synchronous=FULL: a row said to be
committed survives a power cut. The writes whose loss would cost nothing (leases, counters,
the mailbox position) are not flushed on their own (`_execute(durable=False)`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from scorefetch.core import schema
from scorefetch.core.errors import LedgerError, ScorefetchError
from scorefetch.core.forwards import ForwardRows
from scorefetch.core.logs import scrub_text
from scorefetch.core.work import WorkRows

T = TypeVar("T")


class Result:
    """A statement's rows and row count, read in full."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._rows: list[Any] = cursor.fetchall()
        self.rowcount = cursor.rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


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
    landed_at: str | None = None
    due_at: str | None = None  # when a retrying row is tried again
    lease: str | None = None  # the process working on it now (pid:start)
    overdue_at: str | None = None  # a person was told it is late (delivery.overdue)
    suspect: str | None = None  # how it disagrees with the vendor's figures (delivery.suspect)
    kind: str | None = None  # the last failure's kind (`Failure`), for a retrying or failed row


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Ledger:
    """Thread-safe: one connection behind a lock (writes are tiny; downloads dominate)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """`readonly`: for `status` and other readers, who may not own the ledger: nothing
        is created, upgraded or chmod-ed, and nothing can be written."""
        self.upgraded_from: int | None = None  # a reader's ledger of an older release
        self.trouble: tuple[float, str] | None = None  # since when writes fail, and why
        self.on_trouble: Callable[[], None] | None = None  # told when trouble begins
        try:
            if readonly:
                self._db = self._open_for_reading(path)
            else:
                self._db = self._open_for_writing(path)
        except (OSError, sqlite3.Error) as exc:
            raise ScorefetchError(f"cannot open the ledger {path}: {exc}") from exc
        self.path = path
        self._lock = threading.Lock()
        self.forwards = ForwardRows(self._execute)

    def _open_for_reading(self, path: Path) -> sqlite3.Connection:
        """Read-only. A ledger of an older release (the daemon not restarted since the
        upgrade) is read through an upgraded copy in memory: `status` works meanwhile, and
        the daemon's next start upgrades the file itself, with its backup."""
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
            timeout=30,
        )
        found = schema.version(db)
        if 0 < found < schema.CURRENT:
            memory = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            db.backup(memory)
            db.close()
            schema.migrate(memory, path, backups=False)
            db, self.upgraded_from = memory, found
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _open_for_writing(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The ledger and its -wal/-shm side files are created 0600 whatever the umask.
        umask = os.umask(0o077)
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            schema.migrate(db, path)
        finally:
            os.umask(umask)
        for side in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if side.exists():
                side.chmod(0o600)
        return db

    @property
    def schema_version(self) -> int:
        return schema.version(self._db)

    def backup(self, target: Path) -> None:
        """A consistent copy of the ledger at `target` (online: the daemon may be writing)."""
        try:
            with self._lock:
                schema.backup(self._db, target)
        except (OSError, sqlite3.Error) as exc:
            raise ScorefetchError(f"cannot back up the ledger to {target}: {exc}") from exc

    def work(self, vendor: str) -> WorkRows:
        """A vendor's download rows as units of work (core/engine.py)."""
        return WorkRows(self._execute, "deliveries", "vendor", vendor, ("key",))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have
                        self._db.execute("ROLLBACK")  # rolled back already (disk full)
                    raise
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self.trouble = None

    def _failed(self, exc: sqlite3.Error) -> LedgerError:
        """The error to raise, remembered (with when it began) for the daemon's alarm."""
        text = f"ledger {self.path}: {exc}"
        if self.trouble is None:
            self.trouble = (time.time(), text)
            if self.on_trouble is not None:  # called without the lock held
                self.on_trouble()
        return LedgerError(text)

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the connection in one transaction."""
        with self._transaction() as db:
            return work(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: tuple[Any, ...] = (), *, durable: bool = True) -> Result:
        """One statement, its rows read before the lock is let go: a statement left open
        on the shared connection would make another thread's COMMIT fail.

        `durable=False` is for a write whose loss in a power cut costs nothing: a lease, an
        attempt counted, a row made due now, the mailbox position (which then lags, and the
        messages after it are read again and found known). Its commit is not flushed to
        disk (synchronous=NORMAL); the next durable commit flushes it with its own, since
        the WAL is written in order. A killed process loses neither kind."""
        try:
            with self._lock:
                if durable:
                    result = Result(self._db.execute(sql, params))
                else:
                    try:  # FULL again whatever happens, a Ctrl-C after NORMAL too
                        self._db.execute("PRAGMA synchronous=NORMAL")
                        result = Result(self._db.execute(sql, params))
                    finally:
                        self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        if self.trouble is not None and sql.lstrip()[:6].upper() in _WRITES:
            self.trouble = None  # a write went through: the ledger works again
        return result

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement, as tuples (for readers elsewhere: alerts, status)."""
        return [tuple(row) for row in self._execute(sql, params).fetchall()]

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
            "   rounds = 0, due_at = NULL, lease = NULL, lease_until = NULL, error = NULL,"
            "   overdue_at = NULL, recovered_at = NULL,"
            "   source = excluded.source, updated_at = excluded.updated_at"
            " WHERE deliveries.state = 'failed'",
            (vendor, key, filename, product, source, now, now),
        )
        return cursor.rowcount == 1

    def claim_all(self, vendor: str, keys: list[tuple[str, str | None]], source: str) -> list[str]:
        """Record many (key, product) pairs in one transaction; returns the newly claimed keys.
        One commit, so a listing is remembered whole or not at all."""
        now = _now()
        claimed = []
        with self._transaction() as db:
            for key, product in keys:
                cursor = db.execute(
                    "INSERT INTO deliveries (vendor, key, filename, product, state,"
                    " source, created_at, updated_at)"
                    " VALUES (?, ?, '', ?, 'pending', ?, ?, ?)"
                    " ON CONFLICT (vendor, key) DO NOTHING",
                    (vendor, key, product, source, now, now),
                )
                if cursor.rowcount == 1:
                    claimed.append(key)
        return claimed

    def expect(self, vendor: str, key: str, size: int | None, rows: int | None) -> None:
        """What the vendor's listing says the file holds (bytes, data rows), when it says."""
        self._execute(
            "UPDATE deliveries SET expected_bytes = coalesce(?, expected_bytes),"
            " expected_rows = coalesce(?, expected_rows) WHERE vendor = ? AND key = ?",
            (size, rows, vendor, key),
        )

    def expected(self, vendor: str, key: str) -> tuple[int | None, int | None]:
        row = self._execute(
            "SELECT expected_bytes, expected_rows FROM deliveries WHERE vendor = ? AND key = ?",
            (vendor, key),
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def suspect(self, vendor: str, key: str, why: str) -> None:
        """The landed file disagrees with the vendor's own figures (kept, not retried)."""
        self._execute(
            "UPDATE deliveries SET suspect = ? WHERE vendor = ? AND key = ?",
            (why, vendor, key),
        )

    def get(self, vendor: str, key: str) -> Delivery | None:
        row = self._execute(
            "SELECT * FROM deliveries WHERE vendor = ? AND key = ?", (vendor, key)
        ).fetchone()
        return _delivery(row) if row else None

    def attempt(self, vendor: str, key: str) -> int:
        """Count one more attempt; returns the new count."""
        return self.work(vendor).attempt((key,))

    def failed(self, vendor: str, key: str, error: str, *, will_retry: bool) -> None:
        """A round failed: `retrying` (due again now) or `failed` for good."""
        self.work(vendor).failed((key,), error, 0.0 if will_retry else None)

    def downloaded(
        self,
        vendor: str,
        key: str,
        path: Path,
        size: int,
        sha256: str,
        forward_to: Sequence[str] = (),
    ) -> None:
        """The file landed: in the same transaction, a forward row for each destination in
        `forward_to`, so whichever process landed it, the daemon's engine uploads it. A row
        given up before is tried again; one already uploaded stays so."""
        now = _now()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = 'downloaded', filename = ?, path = ?, bytes = ?,"
                " sha256 = ?, error = NULL, due_at = NULL, lease = NULL, lease_until = NULL,"
                " removed_at = NULL, landed_at = ?, updated_at = ? WHERE vendor = ? AND key = ?",
                (path.name, str(path), size, sha256, now, now, vendor, key),
            )
            if not forward_to:
                return
            product = db.execute(
                "SELECT product FROM deliveries WHERE vendor = ? AND key = ?", (vendor, key)
            ).fetchone()
            for destination in forward_to:
                self.forwards.claim_in(
                    db,
                    destination,
                    vendor,
                    key,
                    path,
                    size,
                    sha256,
                    product[0] if product else None,
                )

        self.transaction(write)

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
            durable=False,  # lost in a power cut, it lags: each message's claim is durable
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
            "UPDATE deliveries SET state = 'pending', attempts = 0, rounds = 0, due_at = NULL,"
            " lease = NULL, lease_until = NULL, error = NULL, source = ?,"
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

    def relocate(self, download_dir: Path) -> list[tuple[Path, Path]]:
        """After `download_dir` moved (a new server mounts the share elsewhere): each landed
        file whose recorded path is outside it, found at the same place under it (vendor
        folder onwards, a regular file), is recorded there, for its uploads too. What is
        found nowhere stays as it is (its upload says the local copy is missing). Returns
        (old, new) per file moved; the bytes are checked when they are sent."""
        prefix = str(download_dir).rstrip("/") + "/"
        rows = self._execute(
            "SELECT vendor, key, path FROM deliveries WHERE state = 'downloaded'"
            " AND removed_at IS NULL AND path IS NOT NULL AND substr(path, 1, ?) != ?",
            (len(prefix), prefix),
        ).fetchall()
        moved: list[tuple[Path, Path]] = []
        for vendor, key, path in rows:
            old = Path(path)
            tail = _from_vendor_folder(old, vendor)
            new = download_dir / tail if tail is not None else None
            if new is None or new.is_symlink() or not new.is_file():
                continue

            def write(db: sqlite3.Connection, v: str = vendor, k: str = key, p: Path = new) -> None:
                db.execute(
                    "UPDATE deliveries SET path = ? WHERE vendor = ? AND key = ?", (str(p), v, k)
                )
                db.execute(
                    "UPDATE forwards SET path = ? WHERE vendor = ? AND key = ?", (str(p), v, k)
                )

            self.transaction(write)
            moved.append((old, new))
        return moved

    def removed(self, vendor: str, key: str) -> None:
        """The local copy is gone; the row (name, sha256) stays, so it is never fetched again."""
        self._execute(
            "UPDATE deliveries SET removed_at = ? WHERE vendor = ? AND key = ?",
            (_now(), vendor, key),
        )


_WRITES = {"INSERT", "UPDATE", "DELETE", "REPLAC"}


def _from_vendor_folder(path: Path, vendor: str) -> Path | None:
    """`vendor/…/NAME` of a landed file's path (download_dir/vendor/[product/]NAME)."""
    parts = path.parts
    for back in (2, 3):  # collegeboard/NAME, encoura/PRODUCT/NAME
        if len(parts) > back and parts[-back] == vendor:
            return Path(*parts[-back:])
    return None


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
        **{name: row[name] for name in _LATER if name in row.keys()},  # noqa: SIM118
    )


# columns of schema version 2
_LATER = ("landed_at", "due_at", "lease", "overdue_at", "suspect", "kind")
