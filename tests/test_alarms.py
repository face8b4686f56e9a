"""The credential alarm: one `auth.failing` per run of refusals, `auth.recovered` after the
next file, the state kept in the ledger across restarts."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from scorefetch.core.errors import Failure
from scorefetch.core.events import (
    AuthFailing,
    AuthRecovered,
    CredentialsAccepted,
    CredentialsRefused,
    DeliveryFailed,
    Downloaded,
    Event,
    Events,
)
from scorefetch.core.ledger import Ledger
from scorefetch.observers.alarms import AuthAlarm

# The alarm logs; into a stream of each test's own (conftest.log_lines).
pytestmark = pytest.mark.usefixtures("log_lines")


def refused(name: str, vendor: str = "collegeboard") -> DeliveryFailed:
    return DeliveryFailed(vendor, name, name, 1, "401 Unauthorized", Failure.AUTH, True)


def test_one_alarm_per_run_of_refusals_and_across_a_restart(tmp_path: Path) -> None:
    """Three refused files are one AuthFailing; a restarted daemon still failing stays quiet;
    a landed file ends the run (AuthRecovered) and a later refusal alarms again."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    heard: list[Event] = []
    events = Events()
    events.subscribe(AuthAlarm(events, ledger))
    events.subscribe(heard.append)
    for name in ("a.csv", "b.csv", "c.csv"):
        events.publish(refused(name))
    events.publish(refused("u1", vendor="encoura"))
    alarms = [e for e in heard if isinstance(e, AuthFailing)]
    assert [(a.vendor, a.filename) for a in alarms] == [
        ("collegeboard", "a.csv"),
        ("encoura", "u1"),
    ]
    assert ledger.watcher()["auth.collegeboard"][0] == "failing: 401 Unauthorized"

    restarted = Events()
    restarted.subscribe(AuthAlarm(restarted, ledger))
    heard.clear()
    restarted.subscribe(heard.append)
    restarted.publish(refused("d.csv"))
    assert not [e for e in heard if isinstance(e, AuthFailing)]
    restarted.publish(Downloaded("collegeboard", "d.csv", tmp_path / "d.csv", 1, "x", 0.1))
    assert AuthRecovered("collegeboard") in heard
    assert ledger.watcher()["auth.collegeboard"][0] == "ok"
    restarted.publish(refused("e.csv"))
    assert [e.filename for e in heard if isinstance(e, AuthFailing)] == ["e.csv"]
    ledger.close()


def test_other_failures_raise_no_alarm(tmp_path: Path) -> None:
    """A file not there yet, a network error or a landed file with no alarm say nothing."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    heard: list[Event] = []
    events = Events()
    events.subscribe(AuthAlarm(events, ledger))
    events.subscribe(heard.append)
    events.publish(DeliveryFailed("collegeboard", "a", "a", 1, "404", Failure.NOT_FOUND, False))
    events.publish(Downloaded("collegeboard", "a", tmp_path / "a", 1, "x", 0.1))
    assert not [e for e in heard if isinstance(e, AuthFailing | AuthRecovered)]
    ledger.close()


def test_a_refused_login_outside_a_delivery_alarms_once_per_run(tmp_path: Path) -> None:
    """The mailbox's login and Encoura's account refused again and again are one
    AuthFailing each; a session or pass that is let in again ends the run."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    heard: list[Event] = []
    events = Events()
    events.subscribe(AuthAlarm(events, ledger))
    events.subscribe(heard.append)
    for _ in range(3):
        events.publish(CredentialsRefused("imap", "login refused: AUTHENTICATIONFAILED"))
        events.publish(CredentialsRefused("encoura", "/login: 401"))
    assert [(e.vendor, e.error) for e in heard if isinstance(e, AuthFailing)] == [
        ("imap", "login refused: AUTHENTICATIONFAILED"),
        ("encoura", "/login: 401"),
    ]
    assert ledger.watcher()["auth.imap"][0].startswith("failing")
    events.publish(CredentialsAccepted("imap"))
    events.publish(CredentialsAccepted("imap"))
    assert [e.vendor for e in heard if isinstance(e, AuthRecovered)] == ["imap"]
    assert ledger.watcher()["auth.imap"][0] == "ok"
    ledger.close()


def test_the_alarm_is_said_before_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping the state fails (a kill at that moment, a ledger error): the page went out
    already, and a restart still failing pages again: twice at worst, never not at all."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    heard: list[Event] = []
    events = Events()
    events.subscribe(AuthAlarm(events, ledger))
    events.subscribe(heard.append)

    def dies(name: str, value: str) -> None:
        raise RuntimeError("killed while keeping the alarm")

    monkeypatch.setattr(ledger, "set_watcher", dies)
    with contextlib.suppress(RuntimeError):  # however Events reports a listener's failure
        events.publish(refused("a.csv"))
    assert [e.filename for e in heard if isinstance(e, AuthFailing)] == ["a.csv"]
    monkeypatch.undo()
    restarted = Events()
    restarted.subscribe(AuthAlarm(restarted, ledger))
    restarted.subscribe(heard.append)
    restarted.publish(refused("b.csv"))
    assert [e.filename for e in heard if isinstance(e, AuthFailing)] == ["a.csv", "b.csv"]
    ledger.close()
