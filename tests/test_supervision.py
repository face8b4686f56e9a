"""Background work is supervised: a bug in one delivery or one loop pass is logged once
(`reason=internal_error`), recorded, and the work goes on; a thread that dies anyway stops
the systemd watchdog. Real simulators over loopback, a real ledger, real threads."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scorefetch import sources
from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.reconciliation import CURSOR, Reconciler
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core import loops
from scorefetch.core.downloads import Landed
from scorefetch.core.errors import ScorefetchError
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.core.loops import Periodic, Supervised
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.service import Notifier, Service, _Stop
from tests.standins.hostile import HostileCollegeBoard
from tests.support import LogLines, wait_until

BUGS = [TypeError("unsupported"), KeyError("fileName"), ValueError("bad"), ZeroDivisionError()]


def cb_config(sim: CollegeBoardSimulator, **overrides: object) -> CollegeBoardConfig:
    return CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "download_hosts": [sim.download_host],
            "retry_schedule": [0.2, 0.2],
            **overrides,
        }
    )


class BuggyOnce(CollegeBoardDeliveries):
    """The real pipeline, with a bug that strikes the first attempt of each file."""

    bug: Exception = TypeError()

    def _attempt(self, key: str) -> Landed:
        if not getattr(self, "_struck", set()) >= {key}:
            self._struck = {*getattr(self, "_struck", set()), key}
            raise self.bug
        return super()._attempt(key)


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: type(b).__name__)
def test_a_bug_in_one_delivery_is_recorded_and_retried(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: LogLines, bug: Exception
) -> None:
    """An unexpected exception: the row is `retrying` with a safe error text, the failure is
    logged with reason=internal_error and will_retry=true, and the file then lands."""
    cb_sim.publish("a.csv", b"a\r\n")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    BuggyOnce.bug = bug
    deliveries = BuggyOnce(
        CollegeBoard(cb_config(cb_sim, retry_schedule=[1.0]), build_session()),
        ledger,
        tmp_path / "files",
    )
    try:
        deliveries.announce(["a.csv"], "notification")
        wait_until(lambda: bool(log_lines.events("delivery.failed")))
        row = ledger.get("collegeboard", "a.csv")
        assert row is not None and row.state == "retrying"
        assert row.error == f"internal error ({type(bug).__name__})"
        failed = log_lines.events("delivery.failed")[0]
        assert failed["reason"] == "internal_error" and failed["will_retry"] is True
        wait_until(lambda: (tmp_path / "files" / "collegeboard" / "a.csv").exists())
        wait_until(
            lambda: getattr(ledger.get("collegeboard", "a.csv"), "state", "") == "downloaded"
        )
    finally:
        deliveries.close(5)
        ledger.close()


def test_reannounced_file_after_a_final_failure_gets_a_fresh_budget(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: LogLines
) -> None:
    """A file given up on (404 through the schedule) and announced again is retried on the
    whole schedule once more, not given up after one attempt."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    deliveries = CollegeBoardDeliveries(
        CollegeBoard(cb_config(cb_sim, retry_schedule=[0.1]), build_session()),
        ledger,
        tmp_path / "files",
    )
    try:
        deliveries.announce(["late.csv"], "notification")
        wait_until(lambda: len(log_lines.events("delivery.failed", will_retry=False)) == 1)
        deliveries.announce(["late.csv"], "listing")
        wait_until(lambda: len(log_lines.events("delivery.failed")) == 3)
        assert log_lines.events("delivery.failed")[2]["will_retry"] is True
        cb_sim.publish("late.csv", b"late\r\n")
        wait_until(lambda: (tmp_path / "files" / "collegeboard" / "late.csv").exists())
    finally:
        deliveries.close(5)
        ledger.close()


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: type(b).__name__)
def test_periodic_loop_survives_a_bug_and_goes_on(
    log_lines: LogLines, bug: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that raises something unexpected is logged once with reason=internal_error
    (the traceback the first time), and the loop keeps running its passes."""
    stop = threading.Event()
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise bug

    monkeypatch.setattr(loops, "INTERNAL_BACKOFF_S", (0.05,))
    loop = Periodic("test-loop", work, stop, interval=0.01, failed=lambda _e, _n: 0.01).start()
    try:
        wait_until(lambda: loop.passes >= 3)
    finally:
        stop.set()
    assert loop.thread.join(5)
    failed = log_lines.events("loop.failed", loop="test-loop")
    assert len(failed) == 2
    assert all(e["reason"] == "internal_error" for e in failed)
    assert failed[0]["error"] == type(bug).__name__ and "exception" in failed[0]
    assert "exception" not in failed[1] and failed[1]["repeats"] == 2


def test_reconciler_survives_a_hostile_listing(
    tmp_path: Path, log_lines: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`{"files": 1}` no longer kills reconciliation: the pass fails, a later one lands."""
    stop = threading.Event()
    monkeypatch.setattr(loops, "INTERNAL_BACKOFF_S", (0.1,))
    with HostileCollegeBoard() as sim:
        sim.hostile.answers["list"] = b'{"files": 1}'  # the hostile mode: any bytes, 200
        sim.publish("posted.csv", b"p\r\n")
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        deliveries = CollegeBoardDeliveries(
            CollegeBoard(cb_config(sim, poll_interval=0.2), build_session()),
            ledger,
            tmp_path / "files",
        )
        try:
            loop = Reconciler(deliveries, lookback_days=14).start(stop)
            wait_until(
                lambda: bool(log_lines.events("loop.failed") or log_lines.events("listing.failed"))
            )
            sim.hostile.answers.clear()
            wait_until(lambda: (tmp_path / "files" / "collegeboard" / "posted.csv").exists())
            assert loop.thread.alive
            assert ledger.position(CURSOR) is not None
        finally:
            stop.set()
            deliveries.close(5)
            ledger.close()


DIES = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@DIES
def test_a_thread_that_dies_anyway_is_not_alive() -> None:
    """Only a BaseException gets past the supervisor; the thread then reports itself dead."""
    stop = threading.Event()

    def die() -> None:
        raise SystemExit(3)

    loop = Supervised("doomed", die, stop).start()
    assert loop.join(5)
    assert not loop.alive
    stop.set()
    assert loop.alive  # a stopped service does not count its ended threads as dead


@DIES
@pytest.mark.parametrize("fault", ["dead", "stuck"])
def test_watchdog_stops_when_a_loop_dies_or_hangs(
    fault: str,
    cb_sim: CollegeBoardSimulator,
    pymap_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: LogLines,
) -> None:
    """The main loop sends WATCHDOG=1 while every loop is alive, and stops once one is dead
    or stops its heartbeat (a call that never returns; systemd then restarts the service),
    saying which in `daemon.unhealthy`."""
    from scorefetch.sandbox.daemon import write_config

    path = write_config(tmp_path, cb_sim, pymap_server, poll_interval="1h")
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    service = Service(sources.load(path))
    assert isinstance(service.notifier, Notifier)
    stop = service.stop
    runner = threading.Thread(
        target=lambda: service._main_loop([s.start(stop, service.running) for s in service.sources])
    )
    runner.start()
    try:
        got: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(100).decode())
            ready = [i for i, g in enumerate(got) if "READY=1" in g]
            if ready and "WATCHDOG=1" in got[ready[0] :]:
                break
        else:
            raise AssertionError(f"no READY=1 then WATCHDOG=1: {got}")
        if fault == "dead":
            doomed = Supervised("doomed", lambda: (_ for _ in ()).throw(SystemExit(1)), stop)
        else:  # blocks without ticking, as a read with no timeout would
            doomed = Supervised("doomed", lambda: stop.wait(), stop, stale_after=0.5)
        monkeypatch.setattr(service.sources[0], "loops", lambda: [doomed])
        doomed.start()
        wait_until(lambda: bool(log_lines.events("daemon.unhealthy")))
        while True:  # drain what was sent before it was seen dead
            try:
                sock.recv(100)
            except TimeoutError:
                break
        # Then no WATCHDOG=1 for 2 s, twenty of its intervals (a STATUS= line may still
        # come: the mailbox's state is not the watchdog's business).
        after: list[str] = []
        until = time.monotonic() + 2
        while time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                after.append(sock.recv(100).decode())
        assert not [m for m in after if "WATCHDOG=1" in m], after
        unhealthy = log_lines.events("daemon.unhealthy")[0]
        assert unhealthy[f"{fault}_loops"] == ["doomed"]
    finally:
        stop.set()
        runner.join(5)
        for source in service.sources:
            source.stop(5)
        service.ledger.close()
        sock.close()


def test_old_ledger_moves_the_listing_cursor_to_positions(tmp_path: Path) -> None:
    """A ledger from before `positions` keeps College Board's listing cursor, now there."""
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    with sqlite3.connect(path) as db:  # as the first release left it: no version either
        db.execute("PRAGMA user_version = 0")
        db.execute("DROP TABLE positions")
        db.execute(
            "INSERT INTO watcher VALUES (?, ?, ?)", (CURSOR, "2026-11-01T00:00:00+00:00", "x")
        )
    ledger = Ledger(path)
    assert ledger.position(CURSOR) == "2026-11-01T00:00:00+00:00"
    assert CURSOR not in ledger.watcher()
    ledger.close()


def test_scorefetch_error_in_a_pass_is_the_vendor_failure_path(log_lines: LogLines) -> None:
    """An expected failure (ScorefetchError) goes to `failed`, not to `loop.failed`."""
    stop = threading.Event()
    seen: list[int] = []

    def work() -> None:
        raise ScorefetchError("vendor says no")

    def failed(_exc: ScorefetchError, failures: int) -> float:
        seen.append(failures)
        if failures >= 2:
            stop.set()
        return 0.01

    loop = Periodic("vendor-loop", work, stop, interval=1, failed=failed).start()
    assert loop.thread.join(5)
    assert seen == [1, 2] and not log_lines.events("loop.failed")


def test_the_signal_handler_takes_no_lock_the_main_thread_may_hold(
    cb_sim: CollegeBoardSimulator, pymap_server: Any, tmp_path: Path
) -> None:
    """SIGTERM may arrive while the main thread holds the lock of the very Event the stop
    flag wakes (inside attention.wait or .clear): the handler must return at once (the
    wakeup pipe's own thread sets the flag), not wait forever on that lock."""
    from scorefetch.sandbox.daemon import write_config

    service = Service(sources.load(write_config(tmp_path, cb_sim, pymap_server)))
    # An Event of the test's own in place of the module's ENDED: a handler that did take
    # its lock would leave it held for good, and every later test's loops with it.
    service.attention = threading.Event()
    service.stop = _Stop(service.attention)
    returned = threading.Event()

    def signal_arrives_inside_wait() -> None:
        with service.attention._cond:  # type: ignore[attr-defined]  # as Event.wait holds it
            service._on_signal(signal.SIGTERM, None)
            returned.set()

    thread = threading.Thread(target=signal_arrives_inside_wait, daemon=True)
    thread.start()
    thread.join(10)
    try:
        assert returned.is_set(), "the handler waited on a lock its own thread holds"
        assert service._signal == "SIGTERM"
    finally:
        service.ledger.close()
