"""What a person must hear without a failure to point at: a file announced but not at
every destination after `alerts.overdue_after` (`delivery.overdue`, once per file, and
`delivery.recovered` when it arrives), a vendor silent for `alerts.quiet_after`
(`source.quiet`, once per silence), and a daily digest (`hooks.on_digest`).

`check()` runs on the work engine's thread every ALERTS_S; everything it decides is kept
in the ledger, so a restart neither repeats an alert nor forgets one. Each is said (the
log line, the event its hook is queued from) before it is marked told: a kill between
the two says it again after the restart, never not at all. What a process has said it
remembers (`_said`), so a ledger that cannot be written (a full disk) does not make
every check say it again: once per process, at most. (A hook queued but not yet started
when the process dies does not run: the log line is what stays.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from scorefetch.config import Config
from scorefetch.core import logs
from scorefetch.core.events import Digest, Events, Overdue, Quiet, Recovered
from scorefetch.core.ledger import Ledger

ALERTS_S = 5.0
HORIZON = timedelta(days=30)  # older rows were told of (or not) long ago
STARTED = "alerts.started"
# SQL: the delivery row `d` still owes an upload to a configured destination (a JSON list).
OWED = (
    "EXISTS (SELECT 1 FROM forwards f WHERE f.vendor = d.vendor AND f.key = d.key"
    " AND f.state != 'uploaded' AND f.destination IN (SELECT value FROM json_each(?)))"
)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")  # as the ledger writes times


class Alerts:
    def __init__(self, config: Config, ledger: Ledger, events: Events, vendors: list[str]) -> None:
        self.config = config.alerts
        self.digest_hook = bool(config.hooks.on_digest)
        self.destinations = {name: tuple(dest.vendors) for name, dest in config.forward.items()}
        self.ledger = ledger
        self.events = events
        self.vendors = vendors
        self._said: set[tuple[str, ...]] = set()  # told by this process, marked or not yet
        self._log = logs.get()

    def _first_time(self, *alert: str) -> bool:
        """Whether this process has yet to say `alert` (and now has: call it, then say)."""
        if alert in self._said:
            return False
        self._said.add(alert)
        return True

    def check(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        if self.ledger.position(STARTED) is None:
            self.ledger.set_position(STARTED, _iso(now))
        self._overdue(now)
        self._recovered(now)
        self._quiet(now)
        self._digest(now)

    def _overdue(self, now: datetime) -> None:
        cutoff = _iso(now - timedelta(seconds=self.config.overdue_after))
        rows = self.ledger.query(
            "SELECT d.vendor, d.key, d.filename, d.created_at, d.state, d.error FROM deliveries d"  # noqa: S608 - OWED is a constant
            " WHERE d.overdue_at IS NULL AND d.created_at < ? AND d.created_at > ?"
            " AND (d.state != 'downloaded' OR " + OWED + ")",
            (cutoff, _iso(now - HORIZON), json.dumps(list(self.destinations))),
        )
        for vendor, key, filename, announced, state, error in rows:
            stage, why = "download", error or f"not downloaded yet ({state})"
            if state == "downloaded":
                stage, why = self._waiting_for(vendor, key)
            name = filename or key
            if self._first_time("overdue", vendor, key):
                self._say_overdue(vendor, key, name, announced, stage, why)
            self.ledger.query(  # said, then marked: a kill between says it twice, never 0
                "UPDATE deliveries SET overdue_at = ? WHERE vendor = ? AND key = ?",
                (_iso(now), vendor, key),
            )

    def _say_overdue(
        self, vendor: str, key: str, name: str, announced: str, stage: str, why: str
    ) -> None:
        self._log.error(
            "delivery.overdue",
            vendor=vendor,
            key=key,  # what recovered says too: an export's file name is known only later
            filename=name,
            announced_at=announced,
            stage=stage,
            error=why,
        )
        self.events.publish(Overdue(vendor, key, name, announced, stage, why))

    def _waiting_for(self, vendor: str, key: str) -> tuple[str, str]:
        rows = self.ledger.query(
            "SELECT destination, state, error FROM forwards WHERE vendor = ? AND key = ?"
            " AND state != 'uploaded' ORDER BY destination",
            (vendor, key),
        )
        for destination, state, error in rows:
            if destination in self.destinations:
                return destination, error or f"not uploaded yet ({state})"
        return "forward", "not uploaded yet"

    def _recovered(self, now: datetime) -> None:
        rows = self.ledger.query(
            "SELECT d.vendor, d.key, d.filename, d.created_at FROM deliveries d"  # noqa: S608 - OWED is a constant
            " WHERE d.overdue_at IS NOT NULL AND d.recovered_at IS NULL"
            " AND d.state = 'downloaded' AND NOT " + OWED,
            (json.dumps(list(self.destinations)),),
        )
        for vendor, key, filename, announced in rows:
            late = (now - datetime.fromisoformat(announced)).total_seconds()
            name = filename or key
            if self._first_time("recovered", vendor, key):
                self._log.info(
                    "delivery.recovered", vendor=vendor, key=key, filename=name, late_s=round(late)
                )
                self.events.publish(Recovered(vendor, key, name, late))
            self.ledger.query(
                "UPDATE deliveries SET recovered_at = ? WHERE vendor = ? AND key = ?",
                (_iso(now), vendor, key),
            )

    def _quiet(self, now: datetime) -> None:
        for vendor, after in self.config.quiet_after.items():
            if vendor not in self.vendors:
                continue
            rows = self.ledger.query(
                "SELECT max(created_at) FROM deliveries WHERE vendor = ?", (vendor,)
            )
            last = (rows[0][0] if rows else None) or self.ledger.position(STARTED) or ""
            told = self.ledger.position(f"alerts.quiet.{vendor}")
            if not last or told == last:
                continue
            if now - datetime.fromisoformat(last) < timedelta(seconds=after):
                continue
            if self._first_time("quiet", vendor, last):
                self._log.warning("source.quiet", vendor=vendor, since=last)
                self.events.publish(Quiet(vendor, last))
            self.ledger.set_position(f"alerts.quiet.{vendor}", last)

    def _digest(self, now: datetime) -> None:
        if self.config.digest_at is None or not self.digest_hook:
            return
        local = now.astimezone()
        hour, minute = (int(x) for x in self.config.digest_at.split(":"))
        due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        today = local.date().isoformat()
        last = self.ledger.position("alerts.digest")
        if last is None and local >= due + timedelta(minutes=5):
            self.ledger.set_position("alerts.digest", today)  # started after it: tomorrow
            return
        if local < due or last == today:
            return
        if self._first_time("digest", today):
            self._say_digest(now)
        self.ledger.set_position("alerts.digest", today)

    def _say_digest(self, now: datetime) -> None:
        counts = self.counts(now - timedelta(days=1))
        summary = (
            "; ".join(
                f"{vendor}: " + ", ".join(f"{k} {v}" for k, v in item.items())
                for vendor, item in counts.items()
            )
            or "nothing announced"
        )
        self._log.info("daemon.digest", summary=summary)
        self.events.publish(Digest(summary, counts))

    def counts(self, since: datetime) -> dict[str, dict[str, int]]:
        """Per vendor since `since`: landed, forwarded, pending, failed, overdue."""
        at = _iso(since)
        found: dict[str, dict[str, int]] = {}
        for vendor in self.vendors:
            landed, pending, failed, overdue = self.ledger.query(
                "SELECT sum(landed_at >= ?), sum(state IN ('pending', 'retrying')),"
                " sum(state = 'failed' AND updated_at >= ?), sum(overdue_at >= ?)"
                " FROM deliveries WHERE vendor = ?",
                (at, at, at, vendor),
            )[0]
            forwarded = self.ledger.query(
                "SELECT count(*) FROM forwards WHERE vendor = ? AND state = 'uploaded'"
                " AND updated_at >= ?",
                (vendor, at),
            )[0][0]
            found[vendor] = {
                "landed": int(landed or 0),
                "forwarded": int(forwarded or 0),
                "pending": int(pending or 0),
                "failed": int(failed or 0),
                "overdue": int(overdue or 0),
            }
        return found
