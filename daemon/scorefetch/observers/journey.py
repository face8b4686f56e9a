"""The end-to-end truth for `scorefetch status`: whether the daemon is alive (the heartbeat
its engine keeps in the ledger), what it is doing now, and for recent files the way from
announced → landed → at each destination (or why not, and since when)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from scorefetch.core.engine import HEARTBEAT, HEARTBEAT_S
from scorefetch.core.ledger import Ledger
from scorefetch.core.logs import scrub_text

STALE_AFTER_S = 6 * HEARTBEAT_S  # no heartbeat for this long: the daemon is not running


def liveness(ledger: Ledger, now: datetime | None = None) -> dict[str, Any]:
    """`alive` (True, False, or None before any heartbeat was written: a daemon of an
    older release), `pid`, `last_heartbeat`, `age_s`, and what runs now (`inflight`)."""
    now = now or datetime.now(UTC)
    found = ledger.watcher().get(HEARTBEAT)
    if found is None:
        return {"alive": None, "pid": None, "last_heartbeat": None, "age_s": None, "inflight": []}
    value, at = found
    try:
        beat = json.loads(value)
    except ValueError:
        beat = {}
    age = (now - datetime.fromisoformat(at)).total_seconds()
    alive = not beat.get("stopped") and age <= STALE_AFTER_S
    return {
        "alive": alive,
        "pid": beat.get("pid"),
        "last_heartbeat": at,
        "age_s": round(age, 1),
        "stopped": bool(beat.get("stopped")),
        "inflight": beat.get("inflight", []) if alive else [],
    }


def journeys(ledger: Ledger, destinations: Sequence[str], limit: int = 20) -> list[dict[str, Any]]:
    """The most recently announced files: announced, landed, and each destination's state."""
    rows = ledger.query(
        "SELECT vendor, key, filename, state, created_at, landed_at, error, updated_at,"
        " overdue_at, suspect FROM deliveries ORDER BY created_at DESC LIMIT ?",
        (limit,),
    )
    found = []
    for vendor, key, filename, state, announced, landed, error, updated, overdue, odd in rows:
        forwards = ledger.query(
            "SELECT destination, state, error, updated_at FROM forwards"
            " WHERE vendor = ? AND key = ?",
            (vendor, key),
        )
        at = {
            dest: {"state": fstate, "error": _clean(ferror), "since": fat}
            for dest, fstate, ferror, fat in forwards
        }
        for dest in destinations:
            if state == "downloaded" and dest not in at:
                at[dest] = {"state": "not owed", "error": None, "since": None}
        found.append(
            {
                "vendor": vendor,
                "key": key,
                "filename": filename or key,
                "announced_at": announced,
                "state": state,
                "landed_at": landed,
                "error": _clean(error) if state != "downloaded" else None,
                "since": updated,
                "overdue": overdue is not None and state != "downloaded",
                "suspect": odd or None,  # how it disagrees with the vendor's figures
                "destinations": at,
            }
        )
    return found


def _clean(error: str | None) -> str | None:
    """Rows an older release wrote may hold a presigned query or a token: scrubbed here."""
    return scrub_text(error) if error else None
