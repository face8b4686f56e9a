"""The process's one timer thread (core/timers.py): order, cancel, failures, no thread each."""

from __future__ import annotations

import threading

from scorefetch.core import timers


def test_callbacks_run_in_the_order_of_their_times_whatever_the_order_armed() -> None:
    ran: list[str] = []
    done = threading.Event()
    timers.call_later(0.30, lambda: (ran.append("late"), done.set()))
    timers.call_later(0.10, lambda: ran.append("middle"))
    timers.call_later(0.0, lambda: ran.append("first"))  # earlier than what it sleeps towards
    assert done.wait(30)
    assert ran == ["first", "middle", "late"]


def test_a_cancelled_timer_never_runs_and_cancel_after_it_ran_is_harmless() -> None:
    ran: list[str] = []
    done = threading.Event()
    kept = timers.call_later(0.0, lambda: ran.append("kept"))
    dropped = timers.call_later(0.05, lambda: ran.append("dropped"))
    dropped.cancel()
    timers.call_later(0.10, done.set)
    assert done.wait(30)
    kept.cancel()  # it ran already
    assert ran == ["kept"]


def test_a_callback_that_raises_stops_none_of_the_others() -> None:
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("a callback's own fault")

    timers.call_later(0.0, boom)
    timers.call_later(0.01, done.set)
    assert done.wait(30)


def test_many_timers_share_one_thread_and_cancelled_ones_do_not_pile_up() -> None:
    """A thousand armed and cancelled (a burst of calls that finished in time) cost no
    thread each, and the heap is rebuilt without them."""
    before = threading.active_count()
    armed = [timers.call_later(3600, lambda: None) for _ in range(1000)]
    assert threading.active_count() <= before + 1
    for timer in armed:
        timer.cancel()
    assert len(timers._TIMERS._heap) < 600
    done = threading.Event()
    timers.call_later(0.0, done.set)
    assert done.wait(30)


def test_a_timer_cancelled_by_an_earlier_callback_of_its_batch_does_not_start() -> None:
    """Two timers due together: the first cancels the second, which must not run (a
    deadline's timer cancelled as its exchange ended must not shut a reused socket)."""
    ran: list[str] = []
    done = threading.Event()
    second: list[timers.Timer] = []

    def first() -> None:
        ran.append("first")
        second[0].cancel()

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(30)

    timers.call_later(0.0, hold)
    assert holding.wait(30)  # the thread is busy: what is armed now comes in one batch
    timers.call_later(0.0, first)
    second.append(timers.call_later(0.0, lambda: ran.append("second")))
    timers.call_later(0.0, done.set)
    release.set()
    assert done.wait(30)
    assert ran == ["first"]
