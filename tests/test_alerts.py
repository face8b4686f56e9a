"""Alerts with no failure to point at, over a real ledger and an injected clock: overdue
once per file (and where it waits), recovered once, a quiet vendor once per silence, the
daily digest once a day at its local time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scorefetch import sources
from scorefetch.core.events import Digest, Event, Events, Overdue, Quiet, Recovered
from scorefetch.core.ledger import Ledger
from scorefetch.observers.alerts import Alerts
from scorefetch.observers.hooks import facts
from tests.support import LogLines

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "ledger.sqlite3")
    yield opened
    opened.close()


def alerts(ledger: Ledger, tmp_path: Path, **sections: object) -> tuple[Alerts, list[Event]]:
    config = sources.config_model().model_validate(
        {
            "download_dir": tmp_path / "files",
            "state_dir": tmp_path,
            "forward": {
                "slate": {
                    "type": "sftp",
                    "host": "sftp.example.edu",
                    "username": "u",
                    "password": "p",
                    "host_key": HOST_KEY,
                    "remote_dir": "/in/{vendor}",
                }
            },
            "hooks": {"on_digest": ["/bin/true"]},
            **sections,
        }
    )
    events = Events()
    seen: list[Event] = []
    events.subscribe(seen.append)
    return Alerts(config, ledger, events, ["collegeboard", "encoura"]), seen


def test_overdue_once_at_the_stage_it_waits_then_recovered_once(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Landed but not uploaded after overdue_after: overdue (stage slate) once however often
    it is checked; uploaded: recovered once."""
    checker, seen = alerts(ledger, tmp_path, alerts={"overdue_after": "1h"})
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 1, "ab" * 32, ("slate",))
    now = datetime.now(UTC)
    checker.check(now + timedelta(minutes=30))
    assert seen == []
    for minutes in (61, 62, 120):
        checker.check(now + timedelta(minutes=minutes))
    overdue = [e for e in seen if isinstance(e, Overdue)]
    assert len(overdue) == 1 and overdue[0].stage == "slate"
    ledger.forwards.uploaded("slate", "collegeboard", "a.csv", "/in/collegeboard/a.csv")
    checker.check(now + timedelta(minutes=130))
    checker.check(now + timedelta(minutes=131))
    recovered = [e for e in seen if isinstance(e, Recovered)]
    assert len(recovered) == 1 and recovered[0].late_s > 3600


def test_an_export_overdue_before_its_name_is_known_is_recovered_under_the_same_key(
    ledger: Ledger, tmp_path: Path, log_lines: LogLines
) -> None:
    """An Encoura export is overdue under its uid (its file name comes with the download)
    and recovered under its file name: both lines, both events and both hooks' environments
    carry the same `key`, so a person (and the chaos test) can tell they are one file."""
    checker, seen = alerts(ledger, tmp_path, alerts={"overdue_after": "1h"})
    ledger.claim("encoura", "ef0d9c44", "", "listing")
    now = datetime.now(UTC)
    checker.check(now + timedelta(minutes=61))
    ledger.downloaded("encoura", "ef0d9c44", tmp_path / "score-1.csv", 1, "ab" * 32, ("slate",))
    ledger.forwards.uploaded("slate", "encoura", "ef0d9c44", "/in/encoura/score-1.csv")
    checker.check(now + timedelta(minutes=70))
    (overdue,) = log_lines.events("delivery.overdue")
    (recovered,) = log_lines.events("delivery.recovered")
    assert overdue["key"] == recovered["key"] == "ef0d9c44"
    assert recovered["filename"] == "score-1.csv"
    told = [facts(e) for e in seen if isinstance(e, Overdue | Recovered)]
    assert [(hook, env["KEY"], env["FILENAME"]) for hook, env in filter(None, told)] == [
        ("on_failure", "ef0d9c44", "ef0d9c44"),
        ("on_delivery", "ef0d9c44", "score-1.csv"),
    ]


def test_a_quiet_vendor_is_told_once_per_silence(ledger: Ledger, tmp_path: Path) -> None:
    """No College Board announcement for quiet_after: source.quiet once; a new file then a
    new silence: once more."""
    checker, seen = alerts(ledger, tmp_path, alerts={"quiet_after": {"collegeboard": "3d"}})
    now = datetime.now(UTC)
    checker.check(now)
    checker.check(now + timedelta(days=2))
    assert seen == []
    checker.check(now + timedelta(days=4))
    checker.check(now + timedelta(days=5))
    assert [type(e) for e in seen] == [Quiet]
    ledger.claim("collegeboard", "b.csv", "b.csv", "notification")  # it speaks again
    checker.check(datetime.now(UTC) + timedelta(days=1))
    checker.check(datetime.now(UTC) + timedelta(days=4))
    checker.check(datetime.now(UTC) + timedelta(days=4, hours=1))
    assert [type(e) for e in seen if isinstance(e, Quiet)] == [Quiet, Quiet]


def test_the_digest_runs_once_a_day_at_its_local_time(ledger: Ledger, tmp_path: Path) -> None:
    """At digest_at (local time) once, with per-vendor counts; not again the same day."""
    checker, seen = alerts(ledger, tmp_path, alerts={"digest_at": "07:30"})
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 1, "ab" * 32, ("slate",))
    day = datetime.now().astimezone().replace(hour=7, minute=0, second=0, microsecond=0)
    checker.check(day)  # before the time, first check of the run: nothing
    checker.check(day + timedelta(minutes=31))
    checker.check(day + timedelta(minutes=45))
    digests = [e for e in seen if isinstance(e, Digest)]
    assert len(digests) == 1
    assert digests[0].counts["collegeboard"]["landed"] == 1
    assert "collegeboard: landed 1" in digests[0].summary
    checker.check(day + timedelta(days=1, minutes=31))
    assert len([e for e in seen if isinstance(e, Digest)]) == 2


class MarkFails(Exception):
    """The process dying at the moment an alert is marked told."""


def test_an_alert_is_said_before_it_is_marked_so_a_crash_between_repeats_it(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overdue, quiet and the digest: when marking fails (a kill, a ledger error) the
    alert has been said already; while the ledger stays unwritable this process does not
    say it again at every check (no page every 5 s), and the next process (a restart)
    says it again: told twice at worst, never not at all."""
    when = datetime.now(UTC) + timedelta(hours=2)
    local = when.astimezone()
    due = max(local - timedelta(minutes=1), local.replace(hour=0, minute=0))
    sections = {
        "alerts": {
            "overdue_after": "1h",
            "quiet_after": {"encoura": "1d"},
            "digest_at": due.strftime("%H:%M"),
        }
    }
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.set_position("alerts.started", (datetime.now(UTC) - timedelta(days=2)).isoformat())
    ledger.set_position("alerts.digest", (local.date() - timedelta(days=1)).isoformat())
    checker, seen = alerts(ledger, tmp_path, **sections)
    real_query, real_set = ledger.query, ledger.set_position

    def failing_query(sql: str, *args: object) -> object:
        if sql.startswith("UPDATE deliveries SET overdue_at"):
            raise MarkFails
        return real_query(sql, *args)

    def failing_set(key: str, value: str) -> None:
        if key.startswith(("alerts.quiet.", "alerts.digest")):
            raise MarkFails
        real_set(key, value)

    monkeypatch.setattr(ledger, "query", failing_query)
    monkeypatch.setattr(ledger, "set_position", failing_set)
    for seconds in (0, 5, 10):  # the ledger stays unwritable: said once by this process
        for step in (checker._overdue, checker._quiet, checker._digest):
            with pytest.raises(MarkFails):
                step(when + timedelta(seconds=seconds))
    assert sorted(type(e).__name__ for e in seen) == ["Digest", "Overdue", "Quiet"]
    monkeypatch.undo()
    again, repeated = alerts(ledger, tmp_path, **sections)  # the restart
    again.check(when)
    again.check(when + timedelta(seconds=5))
    assert sorted(type(e).__name__ for e in repeated) == ["Digest", "Overdue", "Quiet"]
