"""The work engine over a real SQLite ledger: rows as units of work, whoever wrote them;
leases between processes; one failure policy for any exception; versioned migrations."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorefetch.core import engine as engine_module
from scorefetch.core import schema
from scorefetch.core.engine import Engine, Outcome
from scorefetch.core.errors import Failure, ScorefetchError
from scorefetch.core.ledger import Ledger
from scorefetch.core.work import Job, WorkRows, holder_alive, me
from tests.support import wait_until

FIXTURES = Path(__file__).parent / "fixtures"


class Lane:
    """A lane whose rounds do what the test says: raise the next exception, else land."""

    def __init__(self, ledger: Ledger, *raises: BaseException) -> None:
        self.name = "collegeboard"
        self.rows = ledger.work("collegeboard")
        self.capacity = 2
        self.lease_s = 60.0
        self.schedule = (0.2, 0.2, 0.2)
        self.ledger = ledger
        self.raises = list(raises)
        self.outcomes: list[Outcome] = []
        self.done: list[Job] = []
        self.landed = threading.Event()

    def run(self, job: Job) -> str:
        self.rows.attempt(job)
        if self.raises:
            raise self.raises.pop(0)
        path = Path("/nonexistent") / job[0]
        self.ledger.downloaded("collegeboard", job[0], path, 1, "ab" * 32)
        self.done.append(job)
        self.landed.set()
        return "landed"

    def failed(self, job: Job, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


@pytest.fixture(autouse=True)
def _logging(log_lines: object) -> None:
    """The engine logs failures: to a live stream (not one an earlier test closed)."""


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "ledger.sqlite3")
    yield opened
    opened.close()


def test_a_row_another_process_wrote_is_picked_up_by_the_running_engine(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A second connection (as `fetch` in another process) claims a file; the running
    engine, never told in process, runs it on its next poll."""
    lane = Lane(ledger)
    engine = Engine(poll_s=0.2)
    engine.add(lane)
    engine.start()
    try:
        other = Ledger(tmp_path / "ledger.sqlite3")
        other.claim("collegeboard", "a.csv", "a.csv", "fetch")
        other.close()
        assert lane.landed.wait(10)
    finally:
        engine.close(5)
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and row.state == "downloaded" and row.lease is None


def test_a_resting_daemon_engine_is_rung_by_another_process(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's engine listens on the ledger's doorbell and polls only every 10
    minutes here: a row another process's engine wrote and woke itself for (as `fetch`
    does) is run all the same, because that wake-up rang the doorbell."""
    monkeypatch.setattr(engine_module, "ACTIVE_S", 0.0)  # at rest after every look
    lane = Lane(ledger)
    engine = Engine(poll_s=0.2, rest_s=600)
    engine.add(lane)
    assert engine.listen()
    engine.start()
    other = Ledger(tmp_path / "ledger.sqlite3")
    elsewhere = Engine()  # `fetch`'s: never started, never listening
    try:
        elsewhere.add(Lane(other))
        second = Engine()
        second.add(Lane(ledger))
        assert not second.listen(), "one doorbell per ledger"
        engine.wait_idle(5)
        other.claim("collegeboard", "b.csv", "b.csv", "fetch")
        elsewhere.wake()
        assert lane.landed.wait(20)
    finally:
        other.close()
        engine.close(5)


def test_the_engine_runs_its_at_rest_tasks_once_per_rest(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task given to `at_rest` (the daemon's memory trim) runs when the engine goes to
    rest, once, and again only after work woke it; one that raises stops nothing."""
    monkeypatch.setattr(engine_module, "ACTIVE_S", 0.3)
    lane = Lane(ledger)
    engine = Engine(poll_s=0.05, rest_s=600)
    engine.add(lane)
    rests: list[int] = []
    engine.at_rest(lambda: rests.append(len(lane.done)))
    engine.at_rest(lambda: 1 / 0)
    assert engine.listen()
    engine.start()
    try:
        wait_until(lambda: rests == [0], timeout=10)
        ledger.claim("collegeboard", "a.csv", "a.csv", "mail")
        engine.wake()
        wait_until(lambda: len(rests) == 2, timeout=10)
        assert rests == [0, 1]  # after the file landed, not before
        assert lane.done == [("a.csv",)]
    finally:
        engine.close(5)


@pytest.mark.parametrize(
    "exc",
    [
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        EOFError(),
        KeyError("bug"),
        ScorefetchError("the vendor said no, passingly"),
    ],
    ids=["decode", "eof", "bug", "ours"],
)
def test_any_exception_is_recorded_and_retried_never_a_stall(
    ledger: Ledger, exc: BaseException
) -> None:
    """Whatever a round raises — a library's own, a decode error, a bug — the row is
    `retrying` with a due time, the lane is told once, and the next round lands it."""
    lane = Lane(ledger, exc)
    engine = Engine(poll_s=0.1)
    engine.add(lane)
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    done, _ = engine.run_now(lane, ("a.csv",))
    assert not done
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and row.state == "retrying" and row.due_at and row.lease is None
    assert [o.will_retry for o in lane.outcomes] == [True]
    internal = not isinstance(exc, ScorefetchError)
    assert (lane.outcomes[0].kind == Failure.INTERNAL) is internal
    engine.start()
    try:
        assert lane.landed.wait(10)
    finally:
        engine.close(5)


def test_a_final_failure_is_failed_and_a_success_is_never_overwritten(ledger: Ledger) -> None:
    """A refused input is not retried (failed, no due time); a failure recorded after a
    row landed leaves it landed."""
    from scorefetch.core.errors import RefusedError

    lane = Lane(ledger, RefusedError("a hostile name"))
    engine = Engine()
    engine.add(lane)
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    engine.run_now(lane, ("a.csv",))
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and row.state == "failed" and row.due_at is None
    ledger.claim("collegeboard", "b.csv", "b.csv", "notification")
    ledger.downloaded("collegeboard", "b.csv", Path("/x/b.csv"), 1, "cd" * 32)
    ledger.work("collegeboard").failed(("b.csv",), "late news", 1.0)
    row = ledger.get("collegeboard", "b.csv")
    assert row is not None and row.state == "downloaded"


def test_a_lease_of_a_live_process_holds_and_a_dead_ones_does_not(ledger: Ledger) -> None:
    """Another live process's lease keeps the row from us; once that process is gone the
    row is ours at once, without waiting for the lease to run out."""
    ledger.claim("collegeboard", "a.csv", "a.csv", "fetch")
    rows = ledger.work("collegeboard")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        holder = f"{child.pid}:{start}"
        with sqlite3.connect(ledger.path) as db:
            db.execute(
                "UPDATE deliveries SET lease = ?, lease_until = '2999-01-01' WHERE key = 'a.csv'",
                (holder,),
            )
        assert holder_alive(holder) and not holder_alive(f"{child.pid}:1")
        assert rows.due(5) == [] and not rows.take(("a.csv",), 60)
    finally:
        child.kill()
        child.wait()
    assert not holder_alive(holder)
    assert rows.due(5) == [("a.csv",)]
    assert rows.take(("a.csv",), 60) and rows.holder(("a.csv",)) == me()


def test_wait_idle_waits_for_due_rows_but_not_for_later_retries(ledger: Ledger) -> None:
    """Idle means nothing runs and nothing is due now; a retry due later does not count."""
    lane = Lane(ledger)
    engine = Engine(poll_s=0.1)
    engine.add(lane)
    ledger.claim("collegeboard", "later.csv", "later.csv", "notification")
    ledger.work("collegeboard").failed(("later.csv",), "not yet", 3600.0)
    ledger.claim("collegeboard", "now.csv", "now.csv", "notification")
    engine.start()
    try:
        assert engine.wait_idle(10)
    finally:
        engine.close(5)
    assert lane.done == [("now.csv",)]


def test_a_ledger_of_the_previous_release_is_upgraded_once_with_a_backup(
    tmp_path: Path,
) -> None:
    """The fixture was written by the second release's own code: it opens at the current
    version, keeps every row (nothing to download or upload again), and a backup of the old
    version sits beside it; opening again migrates nothing."""
    path = tmp_path / "ledger.sqlite3"
    shutil.copy(FIXTURES / "ledger-release2.sqlite3", path)
    ledger = Ledger(path)
    try:
        assert ledger.schema_version == schema.CURRENT
        landed = ledger.get("collegeboard", "4300_20261101_090000.csv")
        assert landed is not None and landed.state == "downloaded" and landed.landed_at
        assert ledger.forwards.get("slate", "collegeboard", landed.key).state == "uploaded"  # type: ignore[union-attr]
        assert ledger.work("collegeboard").due(10) == []
        assert ledger.work("encoura").due(10) == [("e-uid-1",)]
        assert ledger.forwards.work("slate").due(10) == []
        assert ledger.mailbox_position("INBOX") == (1234, 57)
        failed = ledger.get("collegeboard", "4300_20261101_091500.csv")
        assert failed is not None and failed.overdue_at  # told the old way: no alert flood
        waiting = ledger.get("encoura", "e-uid-1")
        assert waiting is not None and waiting.overdue_at is None  # still watched
    finally:
        ledger.close()
    backup = path.with_name("ledger.sqlite3.v1.bak")
    assert backup.exists() and backup.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(backup) as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (3,)
    backup.unlink()
    Ledger(path).close()
    assert not backup.exists()


def test_a_ledger_newer_than_this_release_is_refused(tmp_path: Path) -> None:
    """A downgrade would misread the ledger: refused, naming the versions."""
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {schema.CURRENT + 1}")
    with pytest.raises(ScorefetchError, match="newer than this release"):
        Ledger(path)


def test_the_ledger_and_its_side_files_are_created_private(tmp_path: Path) -> None:
    """ledger.sqlite3, -wal and -shm are 0600 from the start, whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
        ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
        for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
            assert (tmp_path / "state" / name).stat().st_mode & 0o777 == 0o600, name
        ledger.close()
    finally:
        os.umask(old)


def test_work_rows_of_two_lanes_do_not_mix(ledger: Ledger) -> None:
    """A vendor's lane sees its own rows only."""
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.claim_all("encoura", [("u1", "score-reporter")], "listing")
    assert ledger.work("collegeboard").due(10) == [("a.csv",)]
    assert ledger.work("encoura").due(10) == [("u1",)]
    assert isinstance(ledger.forwards.work("slate"), WorkRows)
    assert ledger.forwards.work("slate").due(10) == []


def test_a_vendors_retry_after_is_honoured_by_the_schedule(ledger: Ledger) -> None:
    """A 429 whose Retry-After is longer than the next step: the row is not due before it;
    a DEFERRED export is never given up, whatever the round."""
    from datetime import UTC, datetime

    from scorefetch.core.engine import retry_delay
    from scorefetch.core.errors import VendorError

    lane = Lane(ledger, VendorError("429", kind=Failure.TRANSIENT, retry_after=120.0))
    engine = Engine()
    engine.add(lane)
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    engine.run_now(lane, ("a.csv",))
    row = ledger.get("collegeboard", "a.csv")
    assert row is not None and row.due_at is not None
    wait = datetime.fromisoformat(row.due_at) - datetime.now(UTC)
    assert wait.total_seconds() > 100 and lane.outcomes[0].retry_in_s == 120.0
    assert retry_delay(Failure.DEFERRED, 50, (30.0, 600.0)) == 600.0


def test_a_failed_ledger_write_does_not_hide_the_row_from_its_own_process(
    ledger: Ledger,
) -> None:
    """The round fails and so does the write that records it (a full disk under the
    ledger): the row keeps this process's lease, yet the engine takes it up again itself."""
    lane = Lane(ledger, ScorefetchError("disk full"))
    real_failed, real_release = lane.rows.failed, lane.rows.release
    broken = {"n": 1}

    def failing_write(*args: object, **kwargs: object) -> None:
        if broken["n"]:
            broken["n"] -= 1
            raise ScorefetchError("database or disk is full")
        real_failed(*args, **kwargs)  # type: ignore[arg-type]

    def failing_release(job: Job) -> None:
        raise ScorefetchError("database or disk is full")

    lane.rows.failed = failing_write  # type: ignore[method-assign]
    lane.rows.release = failing_release  # type: ignore[method-assign]
    engine = Engine(poll_s=0.1)
    engine.add(lane)
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    engine.start()
    try:
        assert lane.landed.wait(10)
    finally:
        engine.close(5)
        lane.rows.release = real_release  # type: ignore[method-assign]
    assert [o.error for o in lane.outcomes] == ["disk full"]


def test_a_ledger_error_while_dispatching_loses_no_slot(ledger: Ledger) -> None:
    """`take` raising (a locked or full ledger) leaves nothing counted as queued: a lane of
    one still runs its files afterwards."""
    lane = Lane(ledger)
    lane.capacity = 1
    real_take = lane.rows.take
    once = {"n": 1}

    def flaky_take(job: Job, lease_s: float) -> bool:
        if once["n"]:
            once["n"] -= 1
            raise ScorefetchError("database is locked")
        return real_take(job, lease_s)

    lane.rows.take = flaky_take  # type: ignore[method-assign]
    engine = Engine(poll_s=0.1)
    engine.add(lane)
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.claim("collegeboard", "b.csv", "b.csv", "notification")
    engine.start()
    try:
        assert engine.wait_idle(10)
    finally:
        engine.close(5)
    assert sorted(lane.done) == [("a.csv",), ("b.csv",)]


def test_an_empty_schedule_gives_up_but_never_on_what_is_never_given_up() -> None:
    """retry_schedule [] means "do not retry" (as before), yet a full disk or an export not
    generated yet is still looked at again; no kind makes the policy raise (a stall)."""
    from scorefetch.core.engine import retry_delay

    assert retry_delay(Failure.LOCAL, 3, ()) == 30.0
    assert retry_delay(Failure.DEFERRED, 0, ()) == 30.0
    assert retry_delay(Failure.NOT_FOUND, 0, ()) is None
    assert len([retry_delay(k, 0, ()) for k in Failure]) == len(Failure)


class Slow(Lane):
    """A lane whose round waits for `release` (a slow download, three URL tries)."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.started, self.release = threading.Event(), threading.Event()
        self.lease_s = 6.0  # renewed every 2 s

    def run(self, job: Job) -> str:
        self.started.set()
        assert self.release.wait(60)
        return super().run(job)


def _renewed_twice(path: Path, key: str) -> None:
    """Until the row's lease was pushed later twice: each renewal seen, not a clock."""
    first = _lease_until(path, key)
    wait_until(lambda: _lease_until(path, key) > first, timeout=30)
    second = _lease_until(path, key)
    wait_until(lambda: _lease_until(path, key) > second, timeout=30)


def _another_process_takes(path: Path, key: str) -> bool:
    taker = (
        "import sys; from pathlib import Path; from scorefetch.core.ledger import Ledger; "
        "print(Ledger(Path(sys.argv[1])).work('collegeboard').take((sys.argv[2],), 60))"
    )
    took = subprocess.run(
        [sys.executable, "-c", taker, str(path), key], capture_output=True, text=True, check=True
    )
    return took.stdout.strip() == "True"


@pytest.mark.parametrize("where", ["engine", "run_now"])
def test_a_round_longer_than_its_lease_keeps_the_row(
    ledger: Ledger, tmp_path: Path, where: str
) -> None:
    """A round that outlasts its lease (three slow URL tries, say) has it renewed while it
    runs — on the daemon's engine, and on `fetch`'s own thread, which has no engine loop —
    so no other process takes the row (and writes the same file) meanwhile."""
    lane = Slow(ledger)
    ledger.claim("collegeboard", "slow.csv", "slow.csv", "mail")
    engine = Engine(poll_s=0.1)
    engine.add(lane)
    if where == "engine":
        engine.start()
    else:
        threading.Thread(target=engine.run_now, args=(lane, ("slow.csv",)), daemon=True).start()
    path = tmp_path / "ledger.sqlite3"
    try:
        assert lane.started.wait(10)
        _renewed_twice(path, "slow.csv")
        assert not _another_process_takes(path, "slow.csv"), "taken while it still ran here"
    finally:
        lane.release.set()
        assert lane.landed.wait(10)
        engine.close(5)


def _lease_until(path: Path, key: str) -> str:
    """The row's lease as another process reads it (a connection of its own)."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        row = other.execute("SELECT lease_until FROM deliveries WHERE key = ?", (key,)).fetchone()
    return str(row[0])
