"""One engine for every unit of work: download file X of vendor V, upload X to
destination D. Each is a ledger row before any work starts, written by whichever process
learned of it (the daemon, `fetch`, `sync`); the daemon's engine picks up every due row,
whoever wrote it, within a poll interval (an indexed query) or at once when woken in
process, runs it under one failure policy (`retry_delay`) and records the outcome.

Resting lightly: the daemon's engine listens on a doorbell, an abstract unix datagram
socket named after the ledger file. Another process's engine (`fetch`, `sync`) rings it
whenever it wakes itself, i.e. right after it wrote something the daemon may have to do
(an upload now due). While work runs, or for ACTIVE_S after anything happened, the ledger
is asked once a second; at rest only every REST_POLL_S, which is also the most a lost
ring costs. Without a doorbell (another daemon on this ledger holds it) it polls each
second as before. A ring is a wake-up, no more (anyone on the host can ring: it is
answered at most RING_S apart, so a flood costs a few queries a second).

A lane is one kind of work with its own parallelism (a vendor's downloads, a
destination's uploads): it says how one round goes (`run`) and how a failure is told
(`failed`); everything else — leases, retry rounds, due times, catching what a library
raised — is here, once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from scorefetch.core import logs, timers
from scorefetch.core.errors import Failure, ScorefetchError
from scorefetch.core.pool import WorkPool
from scorefetch.core.work import Job, WorkRows, holder_alive, now_iso

POLL_S = 1.0  # how often the ledger is asked whether another process wrote (one PRAGMA)
REST_POLL_S = 30.0  # the same at rest, with the doorbell up (a lost ring costs this much)
ACTIVE_S = 10.0  # after work, a ring or another process's commit: POLL_S for this long
FULL_LOOK_S = 10.0  # and a full look at every lane this often (a dead holder's rows, …)
HEARTBEAT_S = 15.0  # how often a daemon's engine says it is alive (status reads it)
HEARTBEAT_REST_S = 60.0  # the same at rest (status calls it gone after 6 × HEARTBEAT_S)
RING_S = 0.05  # the doorbell is answered at most this often
HEARTBEAT = "daemon.heartbeat"
TRANSIENT_DELAYS = (1.0, 5.0)  # then the lane's retry_schedule
LOCAL_FIRST_S = 5.0  # a full disk is often freed within minutes: look again soon
MAX_RETRY_AFTER_S = 6 * 3600.0  # a vendor's Retry-After is honoured up to this
DEFAULT_SCHEDULE = (30.0,)  # a local or deferred failure's step under an empty schedule


HELD = object()  # run_now's result when another live process works on the job


def retry_delay(kind: Failure, retries_done: int, schedule: Sequence[float]) -> float | None:
    """Seconds until the next round for a failure of `kind`, or None to give up.

    A local failure (disk full, quota, a refusing folder) is never given up: the file is
    ours to land once someone frees the disk, so after the schedule its last step repeats."""
    if kind in (Failure.FATAL, Failure.REFUSED):
        return None
    if kind in (Failure.LOCAL, Failure.DEFERRED):  # never given up: an empty schedule too
        schedule = tuple(schedule) or DEFAULT_SCHEDULE
    if kind == Failure.LOCAL:
        delays = (min(LOCAL_FIRST_S, *schedule[:1]), *schedule)
        return delays[min(retries_done, len(delays) - 1)]
    if kind == Failure.DEFERRED:  # the vendor has not made it yet: never given up
        return schedule[min(retries_done, len(schedule) - 1)]
    quick = kind in (Failure.TRANSIENT, Failure.EXPIRED)
    delays = (*TRANSIENT_DELAYS, *schedule) if quick else tuple(schedule)
    return delays[retries_done] if retries_done < len(delays) else None


@dataclass(frozen=True)
class Outcome:
    """How one round of a job failed, and what happens next."""

    attempt: int
    error: str
    kind: Failure
    retry_in_s: float | None
    exc: BaseException | None = None  # what was raised (an internal error's traceback is logged)

    @property
    def reason(self) -> str | None:
        """A word for alerts: `internal_error`, or the error's own (`expired`, `conflict`)."""
        if self.kind == Failure.INTERNAL:
            return "internal_error"
        reason = getattr(self.exc, "reason", None)
        return reason if isinstance(reason, str) else None

    @property
    def will_retry(self) -> bool:
        return self.retry_in_s is not None


class Lane(Protocol):
    name: str
    rows: WorkRows
    capacity: int
    lease_s: float
    schedule: tuple[float, ...]

    def run(self, job: Job) -> object:
        """One round of `job`: record success (ledger, log, events) or raise."""
        ...

    def failed(self, job: Job, outcome: Outcome) -> None:
        """Tell of a failed round (its log line and event); the row is already written."""
        ...


def classify(exc: BaseException) -> tuple[str, Failure]:
    """What we say of an exception from a round, and its kind. Our own errors carry their
    kind; anything else (a library's, a decode error, a bug) is internal: recorded and
    retried on the schedule, never a silent stall. Its text is the type only."""
    if isinstance(exc, ScorefetchError):
        kind = getattr(exc, "kind", Failure.TRANSIENT)
        return str(exc), kind if isinstance(kind, Failure) else Failure.TRANSIENT
    return f"internal error ({type(exc).__name__})", Failure.INTERNAL


class Engine:
    """`add` lanes, `start` (the daemon; `run_now` needs no thread), `close` at the end."""

    def __init__(self, *, poll_s: float = POLL_S, rest_s: float = REST_POLL_S) -> None:
        self._lanes: dict[str, Lane] = {}
        self._pools: dict[str, WorkPool] = {}
        self._poll_s = poll_s
        self._rest_s = max(poll_s, rest_s)
        self._bell: socket.socket | None = None  # the doorbell, in the daemon's engine
        self._address: str | None = None  # the doorbell's, from the first lane's ledger
        self._active_until = 0.0  # monotonic: poll each second until then
        self._lock = threading.Lock()
        self._running: dict[tuple[str, Job], tuple[object, float]] = {}  # token, start
        self._queued: set[tuple[str, Job]] = set()  # taken, not started yet
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: list[_Every] = []
        self._at_rest: list[Callable[[], object]] = []
        self._idle = threading.Condition(self._lock)
        self._seen_version: int | None = None
        self._next_look = 0.0  # epoch seconds of the next full look
        self._next_due = 0.0  # epoch seconds of the earliest retry's due time
        self._log = logs.get()

    def add(self, lane: Lane) -> None:
        self._lanes[lane.name] = lane
        self._pools[lane.name] = WorkPool(max(1, lane.capacity), lane.name)

    def every(
        self, seconds: float, task: Callable[[], None], name: str, *, rest_s: float | None = None
    ) -> None:
        """Run `task` on the engine's thread about every `seconds` (checks, heartbeat), or
        every `rest_s` while the engine rests."""
        self._tasks.append(_Every(name, seconds, task, rest_s or seconds))

    def at_rest(self, task: Callable[[], object]) -> None:
        """Run `task` on the engine's thread each time the engine goes to rest (nothing ran
        or rang for ACTIVE_S): the daemon hands memory back then (core/memory.py)."""
        self._at_rest.append(task)

    def listen(self) -> bool:
        """Answer the doorbell (the daemon): another process's ring makes this engine ask
        the ledger at once, so it may rest between polls. False when another process
        (a second daemon on this ledger) already answers it: then it polls each second."""
        address = self._doorbell()
        if address is None or self._bell is not None:
            return self._bell is not None
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            bell.bind(address)
        except OSError:
            bell.close()
            return False
        self._bell = bell
        threading.Thread(target=self._answer, args=(bell,), name="doorbell", daemon=True).start()
        return True

    def _answer(self, bell: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                bell.recv(16)
            except OSError:
                return
            self._wake.set()
            self._stop.wait(RING_S)

    def _doorbell(self) -> str | None:
        """The doorbell's abstract address, named after the ledger file (its real path):
        every process on one ledger agrees on it, and nothing is left on disk."""
        if self._address is None and self._lanes:
            ledger = next(iter(self._lanes.values())).rows.ledger_file()
            if ledger:
                digest = hashlib.sha256(os.path.realpath(ledger).encode()).hexdigest()[:32]
                self._address = f"\0scorefetch-doorbell-{digest}"
        return self._address

    def _ring(self) -> None:
        """Tell the daemon on this ledger (if any) to look now; nobody listening is fine."""
        try:
            address = self._doorbell()
        except ScorefetchError:
            return
        if address is None:
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
        ):
            sock.sendto(b"look", address)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Something became due in this process: look now, not at the next poll. Outside
        the daemon, ring its doorbell too: what this process wrote may be the daemon's."""
        self._wake.set()
        if self._bell is None:
            self._ring()

    def inflight(self) -> list[dict[str, Any]]:
        """The jobs running here now: lane, job, seconds so far (and bytes, if the lane
        counts them)."""
        with self._lock:
            running = {key: started for key, (_, started) in self._running.items()}
        now = time.monotonic()
        found = []
        for (lane_name, job), started in running.items():
            item: dict[str, Any] = {"lane": lane_name, "job": list(job)}
            item["elapsed_s"] = round(now - started, 1)
            counted = getattr(self._lanes[lane_name], "bytes_so_far", None)
            if counted is not None:
                item.update(counted(job))
            found.append(item)
        return found

    def run_now(self, lane: Lane, job: Job) -> tuple[bool, object]:
        """One round of `job` on this thread (`fetch`, `sync`, tests): (done, result).
        (False, HELD) when another live process holds it (the daemon is doing it);
        (False, None) when it failed (recorded and scheduled like any failure)."""
        key = (lane.name, job)
        with self._lock:  # this process's engine may be about to run it: one of the two
            here = key in self._running or key in self._queued
            if not here:
                self._queued.add(key)
        taken = False
        try:
            taken = not here and lane.rows.take(job, lane.lease_s)
        finally:
            if not taken and not here:
                with self._lock:
                    self._queued.discard(key)
        if not taken:
            holder = lane.rows.holder(job)
            self._log.info("work.held", lane=lane.name, job=list(job), holder=holder)
            held = here or (holder is not None and holder_alive(holder))
            return False, HELD if held else None
        token = object()
        with self._lock:
            self._queued.discard(key)
            self._running[key] = (token, time.monotonic())
        return self._run(lane, job, token)

    @contextlib.contextmanager
    def _renewing(self, lane: Lane, job: Job) -> Iterator[None]:
        """Renew the lease of a round every third of it until the round ends (on the
        daemon's pool or `fetch`'s own thread alike). The process's timer thread says when;
        the ledger write runs on a thread of its own (it may wait on the ledger's lock,
        and the timer thread must not), started only for a round that lasts that long."""
        lock = threading.Lock()
        armed: list[timers.Timer | None] = [None]

        def renew() -> None:
            if self._renew_one(lane, job):
                with lock:
                    if armed[0] is not None:  # None: the round has ended meanwhile
                        armed[0] = timers.call_later(lane.lease_s / 3, due)

        def due() -> None:
            try:
                threading.Thread(target=renew, name="lease", daemon=True).start()
            except RuntimeError:  # no thread to be had: renewed here rather than let lapse
                renew()

        armed[0] = timers.call_later(lane.lease_s / 3, due)
        try:
            yield
        finally:
            with lock:
                timer, armed[0] = armed[0], None
            if timer is not None:
                timer.cancel()

    def _loop(self) -> None:
        rested = False
        while not self._stop.is_set():
            woken = self._wake.is_set()
            if woken:  # cleared only when seen: a wake-up after this is seen next time
                self._wake.clear()
            if woken or self._busy():
                self._active_until = time.monotonic() + ACTIVE_S
            try:
                self._look(woken)
            except Exception as exc:  # noqa: BLE001 - the engine goes on; the ledger may heal
                self._log.error("engine.failed", error=type(exc).__name__, exc_info=exc)
                self._next_look = 0.0
                self._stop.wait(self._poll_s)
            resting = self._resting()
            for task in self._tasks:  # the heartbeat and the alerts, whatever dispatch did
                task.maybe(resting)
            if resting and not rested:
                for rest in self._at_rest:
                    try:
                        rest()
                    except Exception as exc:  # noqa: BLE001 - a nicety; the engine goes on
                        self._log.error("engine.failed", error=type(exc).__name__, exc_info=exc)
            rested = resting
            self._wake.wait(self._next_wait(resting))

    def _resting(self) -> bool:
        """Nothing ran or rang lately and the doorbell is up: poll slowly."""
        return self._bell is not None and time.monotonic() >= self._active_until

    def _next_wait(self, resting: bool) -> float:
        """Until the next poll, due retry, or task, whichever is first."""
        wait = self._rest_s if resting else self._poll_s
        if resting:  # the full look waits for the rest poll too, a retry's due time not
            wait = min(wait, max(0.0, self._next_due - time.time()))
        return max(0.0, min([wait, *(task.due_in(resting) for task in self._tasks)]))

    def _look(self, woken: bool) -> None:
        """Dispatch when something may have become due: a wake-up in this process, a commit
        by another (`fetch`, `sync`), a retry's due time, or FULL_LOOK_S gone by. At rest
        this is one PRAGMA per poll."""
        lanes = list(self._lanes.values())
        if not lanes:
            return
        version = lanes[0].rows.data_version()
        now = time.time()
        if not woken and version == self._seen_version and now < self._next_look:
            return
        if version != self._seen_version:
            self._active_until = time.monotonic() + ACTIVE_S
        self._seen_version = version
        self._dispatch()
        upcoming = [due for lane in lanes if (due := lane.rows.next_due()) is not None]
        next_due = min((_epoch(due) for due in upcoming), default=now + FULL_LOOK_S)
        self._next_due = next_due if upcoming else float("inf")
        self._next_look = min(now + FULL_LOOK_S, next_due)

    def _renew_one(self, lane: Lane, job: Job) -> bool:
        """Renew one lease; False (and said) when it is no longer ours. A ledger that fails
        now is tried again at the next renewal."""
        try:
            if lane.rows.renew(job, lane.lease_s):
                return True
        except ScorefetchError as exc:
            self._log.warning("ledger.write_failed", lane=lane.name, error=str(exc))
            return True
        with contextlib.suppress(ScorefetchError):
            holder = lane.rows.holder(job)
            if holder is not None:  # none: the round's outcome let go of it, nothing lost
                self._log.warning("work.lease_lost", lane=lane.name, job=list(job), holder=holder)
        return False

    def _dispatch(self) -> None:
        for lane in list(self._lanes.values()):
            with self._lock:
                busy = sum(1 for name, _ in (*self._running, *self._queued) if name == lane.name)
            free = lane.capacity - busy
            if free <= 0 or self._stop.is_set():
                continue
            for job in lane.rows.due(free + busy):
                if free <= 0:
                    break
                key = (lane.name, job)
                with self._lock:  # counted as busy before the lease hides it (wait_idle)
                    if key in self._running or key in self._queued:
                        continue  # still finishing its last round here
                    self._queued.add(key)
                taken = False
                try:
                    taken = lane.rows.take(job, lane.lease_s)
                    if taken:
                        free -= 1
                        self._submit(lane, job)
                finally:
                    if not taken:  # refused, or the ledger raised: never a slot lost
                        with self._lock:
                            self._queued.discard(key)

    def _submit(self, lane: Lane, job: Job) -> None:
        if not self._pools[lane.name].submit(lambda: self._start(lane, job)):
            self._unqueue(lane, job)

    def _unqueue(self, lane: Lane, job: Job) -> None:
        with self._lock:
            self._queued.discard((lane.name, job))
            self._idle.notify_all()
        try:
            lane.rows.release(job)  # unfinished: due again for the next process
        except ScorefetchError as exc:
            self._log.warning("ledger.write_failed", lane=lane.name, error=str(exc))

    def _start(self, lane: Lane, job: Job) -> None:
        if self._stop.is_set():
            self._unqueue(lane, job)
            return
        token = object()
        with self._lock:  # from queued to running in one step (wait_idle never sees a gap)
            self._queued.discard((lane.name, job))
            self._running[(lane.name, job)] = (token, time.monotonic())
        try:
            self._run(lane, job, token)
        finally:
            self.wake()  # a slot is free; what it landed may be due elsewhere (uploads)

    def _run(self, lane: Lane, job: Job, token: object) -> tuple[bool, object]:
        key = (lane.name, job)
        with self._lock:
            self._running.setdefault(key, (token, time.monotonic()))
        try:
            with self._renewing(lane, job):
                return True, lane.run(job)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
            self._failed(lane, job, exc)
            return False, None
        finally:
            # Normally a no-op: the outcome's write let go already. After a failed write the
            # row stays ours, which the next look takes up again (a row this process holds
            # but does not run is free to it).
            with contextlib.suppress(ScorefetchError):
                lane.rows.release(job)
            with self._lock:
                if self._running.get(key, (None,))[0] is token:
                    del self._running[key]
                self._idle.notify_all()

    def _failed(self, lane: Lane, job: Job, exc: Exception) -> None:
        error, kind = classify(exc)
        try:
            attempts, rounds = lane.rows.progress(job)
        except ScorefetchError:
            attempts, rounds = 0, 0
        delay = retry_delay(kind, rounds, lane.schedule)
        asked = getattr(exc, "retry_after", None)  # a 429's Retry-After: not sooner
        if delay is not None and isinstance(asked, int | float):
            delay = max(delay, min(float(asked), MAX_RETRY_AFTER_S))
        if self._stop.is_set() and delay is not None:
            delay = min(delay, 0.0)  # cut short by the stop: due at once at the next start
        outcome = Outcome(attempts, error, kind, delay, exc)
        try:
            lane.rows.failed(job, error, delay, kind)
        except ScorefetchError as write:
            self._log.error("ledger.write_failed", lane=lane.name, job=list(job), error=str(write))
        try:
            lane.failed(job, outcome)
        except Exception as told:  # noqa: BLE001 - the row is written; telling must not stall it
            self._log.error(
                "engine.failed", error=type(told).__name__, lane=lane.name, exc_info=told
            )
        self.wake()  # its next due time counts from now

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing runs here and no row is due now (retries later may be pending)."""
        deadline = time.monotonic() + timeout
        while True:
            # Busy, then due, then busy again: a job counts as queued before its lease hides
            # it from `due`, so one taken in between is seen by the second look.
            if (
                not self._busy()
                and not any(lane.rows.due(1) for lane in self._lanes.values())
                and not self._busy()
            ):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.wake()
            with self._lock:
                self._idle.wait(min(remaining, 0.05))

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._running or self._queued)

    def close(self, timeout: float) -> bool:
        """Take no more work; let running jobs finish for up to `timeout` seconds. What did
        not start is released (due again at the next start)."""
        self._stop.set()
        self._wake.set()
        if self._bell is not None:
            self._bell.close()  # the doorbell's thread is a daemon thread: left to end
        deadline = time.monotonic() + timeout  # one grace for every lane, not one each
        if self._thread is not None:
            self._thread.join(timeout=min(10.0, timeout))
        finished = all(
            [pool.close(max(0.0, deadline - time.monotonic())) for pool in self._pools.values()]
        )
        with self._lock:
            queued = list(self._queued)
        for lane_name, job in queued:
            self._unqueue(self._lanes[lane_name], job)
        return finished


class _Every:
    def __init__(self, name: str, seconds: float, task: Callable[[], None], rest_s: float) -> None:
        self.name, self.seconds, self.task, self.rest_s = name, seconds, task, rest_s
        self._last = -float("inf")

    def due_in(self, resting: bool) -> float:
        every = self.rest_s if resting else self.seconds
        return self._last + every - time.monotonic()

    def maybe(self, resting: bool = False) -> None:
        now = time.monotonic()
        if self.due_in(resting) > 0:
            return
        self._last = now
        try:
            self.task()
        except Exception as exc:  # noqa: BLE001 - a failed check is tried again next time
            logs.get().error(
                "engine.task_failed", task=self.name, error=type(exc).__name__, exc_info=exc
            )


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0  # unreadable: look now


def heartbeat_value(engine: Engine) -> str:
    """What the daemon writes every HEARTBEAT_S: who it is, when, and what runs now."""
    return json.dumps({"pid": os.getpid(), "at": now_iso(), "inflight": engine.inflight()})
