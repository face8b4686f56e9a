"""`scorefetch status`: what the ledger knows, as JSON for monitoring (every fact, the
ledger's own keys) or as plain sentences for a person (local time, no internal keys)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scorefetch import sources
from scorefetch.config import Config
from scorefetch.core.ledger import Ledger
from scorefetch.observers.journey import journeys, liveness

# The watcher records an answer from the mail server at least every IDLE renewal (minutes):
# far longer without one, a "connected" left in the ledger is a daemon that died.
SILENT_AFTER = timedelta(hours=1)


def vendor_name(vendor: str) -> str:
    """A vendor's name for a person: its title in the registry ("College Board")."""
    titles = {source.vendor: source.title for source in sources.SOURCES} | {"imap": "Mailbox"}
    return titles.get(vendor, vendor)


def report(config: Config) -> dict[str, Any]:
    """Every fact, keyed as the ledger keys them; the same shape before the first run."""
    result: dict[str, Any] = {
        "ledger": str(config.ledger_path),
        "ledger_exists": config.ledger_path.exists(),
        "counts": {},
        "watcher": {},
        "mailbox": None,
        "positions": {},
        "unfinished": [],
        "recent": [],
        "forward": {},
        "last_errors": {},
        "next_listing": {},
        "in_flight": in_flight(config.download_dir),
        "daemon": {"alive": None, "pid": None, "last_heartbeat": None, "inflight": []},
        "files": [],
        "orphaned_destinations": {},
        "ledger_upgrade_pending_from": None,
    }
    if not result["ledger_exists"]:
        return result
    ledger = Ledger(config.ledger_path, readonly=True)  # the operator need not own it
    result["ledger_upgrade_pending_from"] = ledger.upgraded_from
    try:
        position = ledger.mailbox_position(config.imap.folder) if config.imap else None
        result |= {
            "counts": ledger.counts(),
            "watcher": {k: {"value": v, "at": at} for k, (v, at) in ledger.watcher().items()},
            "mailbox": (
                dict(zip(("uidvalidity", "last_uid"), position, strict=True)) if position else None
            ),
            "positions": {k: {"value": v, "at": at} for k, (v, at) in ledger.positions().items()},
            "unfinished": [
                vars(d) for vendor in config.vendors() for d in ledger.unfinished(vendor)
            ],
            "recent": [vars(d) for d in ledger.recent(20)],
            "forward": _forward_report(config, ledger),
            "daemon": liveness(ledger),
            "files": journeys(ledger, list(config.forward)),
            "orphaned_destinations": ledger.forwards.orphans(
                {name: dest.wants for name, dest in config.forward.items()}
            ),
        }
    finally:
        ledger.close()
    result["last_errors"] = last_errors(result)
    result["next_listing"] = next_listings(config, result["positions"])
    return result


def in_flight(download_dir: Path) -> list[dict[str, Any]]:
    """Downloads under way: each hidden `.NAME.part` with its bytes so far and when it last
    grew. Empty when there are none, or when this user may not look (0700 folders)."""
    found = []
    try:
        for part in sorted(download_dir.rglob(".*.part")):
            st = part.stat()
            relative = part.relative_to(download_dir)
            found.append(
                {
                    "vendor": relative.parts[0] if len(relative.parts) > 1 else "",
                    "filename": part.name[1:].removesuffix(".part"),
                    "bytes": st.st_size,
                    "at": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
                }
            )
    except OSError:  # not ours to read, or gone while we looked
        return found
    return found


def next_listings(config: Config, positions: dict[str, dict[str, str]]) -> dict[str, str]:
    """When each listing is next due (UTC): the last one's start plus its poll_interval.
    Keys are the vendors' own (`collegeboard`, `encoura.<product key>`); none for a
    disabled vendor or one never listed."""
    due: dict[str, str] = {}
    sections = config.sections()
    for source in sources.SOURCES:
        interval = getattr(sections.get(source.vendor), "poll_interval", 0)
        if interval:
            for key, listing in source.listings(positions).items():
                due[key] = _plus(listing.started, interval)
    return {k: v for k, v in due.items() if v}


def _plus(stamp: str, seconds: float) -> str:
    try:
        return (datetime.fromisoformat(stamp) + timedelta(seconds=seconds)).isoformat()
    except (TypeError, ValueError):
        return ""


def _forward_report(config: Config, ledger: Ledger) -> dict[str, Any]:
    """Each configured destination: backlog, rows by state, last error, last upload."""
    found = ledger.forwards.report()
    empty = {"counts": {}, "backlog": 0, "last_error": None, "last_uploaded_at": None}
    return {name: found.get(name, empty) for name in config.forward}


def last_errors(facts: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per vendor the newest error among its unfinished and recent files, with file and time."""
    found: dict[str, dict[str, str]] = {}
    for row in [*facts["unfinished"], *facts["recent"]]:
        if not row.get("error") or row.get("state") == "downloaded":
            continue
        known = found.get(row["vendor"])
        if known is None or row["updated_at"] > known["at"]:
            found[row["vendor"]] = {
                "error": row["error"],
                "filename": row["filename"] or row["key"],
                "at": row["updated_at"],
            }
    return found


def _older_than(stamp: str, age: timedelta) -> bool:
    try:
        return datetime.now(UTC) - datetime.fromisoformat(stamp) > age
    except (TypeError, ValueError):
        return False


def local_time(stamp: str | None) -> str:
    """An ISO time from the ledger (UTC) as local time with its zone: `2026-11-21 10:42 EST`."""
    if not stamp:
        return "never"
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z")


def render(facts: dict[str, Any]) -> list[str]:
    """The human view, one line each: parts first, then files."""
    if not facts["ledger_exists"]:
        return [f"Ledger {facts['ledger']} does not exist yet: the daemon has never run"]
    lines = [f"Ledger   {facts['ledger']}  (times are local)"]
    lines += _daemon(facts["daemon"])
    lines += _mailbox(facts["watcher"], alive=facts["daemon"]["alive"] is not False)
    lines += _vendors(facts)
    lines += _forwards(facts["forward"])
    daemon_has = {  # the daemon's own downloads: shown once, with their rate (_daemon)
        (job["lane"], job.get("filename")) for job in facts["daemon"].get("inflight", [])
    }
    for item in facts.get("in_flight", []):
        if (item["vendor"], item["filename"]) in daemon_has:
            continue
        vendor = vendor_name(item["vendor"])
        lines.append(
            f"Downloading now  {vendor} {item['filename']}: {item['bytes'] / 1048576:.1f} MiB "
            f"so far (last grew {local_time(item['at'])})"
        )
    if facts.get("ledger_upgrade_pending_from"):
        lines.append(
            f"Ledger   from an older release (version {facts['ledger_upgrade_pending_from']}): "
            "the daemon upgrades it at its next start (a backup beside it first); shown as it "
            "will read then"
        )
    lines += _journeys(facts["files"])
    for name, n in facts["orphaned_destinations"].items():
        lines.append(
            f"Forward to {name}: {n} files owed from before a configuration change (the "
            "destination removed or renamed, or its vendors: changed) never sent there, kept "
            "(add it back, or send them by hand)"
        )
    counts = facts["counts"]
    lines.append(
        "Files    " + (", ".join(f"{n} {state}" for state, n in counts.items()) or "none yet")
    )
    for row in facts["unfinished"]:
        lines.append(
            f"  waiting  {vendor_name(row['vendor']):<13} {row['state']:<10} "
            f"{row['filename'] or row['key']}  (tries: {row['attempts']})"
            + (f"  {row['error']}" if row["error"] else "")
        )
    if facts["recent"]:
        lines.append("Recent files")
    for row in facts["recent"]:
        where = row["path"] or row["error"] or ""
        vendor = vendor_name(row["vendor"])
        lines.append(
            f"  {local_time(row['updated_at'])}  {vendor:<13} {row['state']:<10} "
            f"{row['filename'] or row['key']}  {where}".rstrip()
        )
    return lines


def _daemon(daemon: dict[str, Any]) -> list[str]:
    """Alive or not, from the heartbeat the daemon's engine writes every few seconds; and
    what it is moving now, with its rate."""
    if daemon["last_heartbeat"] is None:
        return ["Daemon   no heartbeat recorded (not started since the upgrade?)"]
    if not daemon["alive"]:
        how = "stopped" if daemon.get("stopped") else "NOT RUNNING"
        return [
            f"Daemon   {how} (last heartbeat {local_time(daemon['last_heartbeat'])}); "
            "systemctl status scorefetch"
        ]
    lines = [f"Daemon   running, pid {daemon['pid']} (heartbeat {daemon['age_s']:.0f}s ago)"]
    for job in daemon["inflight"]:
        name = " ".join(str(part) for part in job["job"])
        line = f"  now    {job['lane']}: {name}, {job['elapsed_s']:.0f}s"
        if job.get("bytes"):
            mib = job["bytes"] / 1048576
            rate = mib / job["elapsed_s"] if job["elapsed_s"] else 0.0
            total = f" of {job['total'] / 1048576:.1f}" if job.get("total") else ""
            line += f", {mib:.1f}{total} MiB at {rate:.1f} MiB/s"
        lines.append(line)
    return lines


def _journeys(files: list[dict[str, Any]]) -> list[str]:
    """Recent files end to end: announced → landed → each destination."""
    if not files:
        return []
    lines = ["Files end to end (announced → landed → destinations)"]
    for item in files[:10]:
        vendor = vendor_name(item["vendor"])
        landed = (
            f"landed {local_time(item['landed_at'])}"
            if item["state"] == "downloaded"
            else f"{item['state']} since {local_time(item['since'])}"
            + (f" ({item['error']})" if item["error"] else "")
        )
        at = "; ".join(
            f"{dest} {info['state']}" + (f" ({info['error']})" if info.get("error") else "")
            for dest, info in item["destinations"].items()
        )
        late = "  LATE" if item["overdue"] else ""
        if item.get("suspect"):
            late += f"  SUSPECT: {item['suspect']}"
        lines.append(
            f"  {vendor:<13} {item['filename']}: announced {local_time(item['announced_at'])}"
            f" → {landed}" + (f" → {at}" if at else "") + late
        )
    return lines


def _mailbox(watcher: dict[str, dict[str, str]], *, alive: bool = True) -> list[str]:
    if "connected" not in watcher:
        return []
    connected = watcher["connected"]
    state = "connected" if connected["value"] == "yes" and alive else "not connected"
    if not alive:
        state += " (the daemon is not running)"
    line = f"Mailbox  {state} (recorded {local_time(connected['at'])})"
    heard = watcher.get("last_round_trip", {}).get("value")
    if heard:
        line += f"; last answer from the server {local_time(heard)}"
    if watcher.get("reconnects", {}).get("value", "0") != "0":
        line += f"; {watcher['reconnects']['value']} reconnects since the daemon started"
    lines = [line]
    if connected["value"] == "yes" and _older_than(heard or connected["at"], SILENT_AFTER):
        lines.append(
            "Mailbox  nothing heard for over an hour: is the daemon running? "
            "(systemctl status scorefetch)"
        )
    auth = watcher.get("auth.imap")
    if auth and auth["value"] != "ok":
        lines.append(f"Mailbox login: {auth['value']} (since {local_time(auth['at'])})")
    return lines


def _vendors(facts: dict[str, Any]) -> list[str]:
    lines = []
    positions: dict[str, dict[str, str]] = facts["positions"]
    for vendor in (source.vendor for source in sources.SOURCES):
        name = vendor_name(vendor)
        auth = facts["watcher"].get(f"auth.{vendor}")
        if auth:
            lines.append(f"{name} login: {auth['value']} (since {local_time(auth['at'])})")
        error = facts["last_errors"].get(vendor)
        if error:
            lines.append(
                f"{name} last error: {error['error']} ({error['filename']}, "
                f"{local_time(error['at'])})"
            )
    for source in sources.SOURCES:
        for key, listing in source.listings(positions).items():
            title = f"{source.title} {listing.label}".strip()
            line = f"{title}: last listed {local_time(listing.started)}"
            if listing.completed != listing.started:
                line += f", last finished listing {local_time(listing.completed)}"
            if key in facts["next_listing"]:
                line += f", next about {local_time(facts['next_listing'][key])}"
            lines.append(line)
    return lines


def _forwards(forward: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, item in forward.items():
        counts = ", ".join(f"{n} {state}" for state, n in item["counts"].items()) or "nothing yet"
        line = f"Forward to {name}: {item['backlog']} waiting; {counts}"
        if item["last_uploaded_at"]:
            line += f"; last upload {local_time(item['last_uploaded_at'])}"
        lines.append(line)
        last = item["last_error"]
        if last:
            lines.append(
                f"Forward to {name} last error: {last['error']} ({last['filename']}, "
                f"{local_time(last['at'])})"
            )
    return lines
