"""The `scorefetch` command: parse arguments, configure logging once, map outcomes to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from scorefetch import __version__
from scorefetch import config as config_module
from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.reconciliation import missing
from scorefetch.config import Config
from scorefetch.core import logs
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import Progress
from scorefetch.core.errors import ConfigError, RefusedError, ScorefetchError
from scorefetch.core.filenames import check_name
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.client import Encoura
from scorefetch.encoura.poller import EncouraDeliveries, locate, recover

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
SYNC_DEFAULT_DAYS = 30


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorefetch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scorefetch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name != "demo":
            sub.add_argument(
                "-c",
                "--config",
                type=Path,
                default=None,
                help="config file (default: $SCOREFETCH_CONFIG, then /etc/scorefetch/config.yaml)",
            )
        return sub

    command("run", "run the daemon in the foreground (what systemd runs)")
    command("check-config", "validate the config; print it with secrets masked")
    fetch = command("fetch", "download files by name, once, by hand")
    fetch.add_argument("vendor", choices=["collegeboard", "encoura"])
    fetch.add_argument("names", nargs="+", metavar="NAME", help="file names, or export uids")
    sync = command("sync", "one listing-based catch-up pass, then exit")
    sync.add_argument("--vendor", choices=["collegeboard", "encoura"], default="collegeboard")
    sync.add_argument(
        "--since",
        metavar="DATE",
        help=f"YYYY-MM-DD or an ISO date-time (default: {SYNC_DEFAULT_DAYS} days ago)",
    )
    status = command("status", "recent deliveries, failures and watcher state, from the ledger")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    demo = command("demo", "run everything against the built-in sandbox and show what landed")
    demo.add_argument("--keep", action="store_true", help="keep the sandbox folder afterwards")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code) if isinstance(exc.code, int) else EX_USAGE
    try:
        if args.command == "demo":
            try:
                from scorefetch.demo import run_demo  # the sandbox loads only for the demo
            except ModuleNotFoundError as exc:
                print(
                    f"scorefetch: the demo needs the 'demo' extra ({exc.name} is missing): "
                    "pip install 'scorefetch[demo]', or run `make demo` in a clone",
                    file=sys.stderr,
                )
                return EX_FAILURE

            logs.configure("console" if sys.stdout.isatty() else "json")
            return run_demo(keep=args.keep)
        path = args.config or config_module.default_path()
        config = config_module.load(path)
        handlers: dict[str, Callable[[Config, argparse.Namespace], int]] = {
            "run": _run,
            "check-config": _check_config,
            "fetch": _fetch,
            "sync": _sync,
            "status": _status,
        }
        interactive = args.command in ("fetch", "sync")
        logs.configure(None if interactive else config.log.format, config.log.level)
        return handlers[args.command](config, args)
    except ConfigError as exc:
        print(f"scorefetch: configuration error:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except ScorefetchError as exc:
        print(f"scorefetch: {exc}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return EX_OK


def _run(config: Config, _args: argparse.Namespace) -> int:
    from scorefetch.service import Service

    return Service(config).run()


def _check_config(config: Config, _args: argparse.Namespace) -> int:
    from scorefetch.mailbox.connection import login_notes

    print(yaml.safe_dump(config_module.masked(config), sort_keys=False), end="")
    for note in login_notes(config.imap) if config.imap is not None else []:
        print(f"note: {note}", file=sys.stderr)
    return EX_OK


def _bar(name: str) -> Progress | None:
    """A one-line progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int | None) -> None:
        mib = done / 1048576
        if total:
            filled = int(30 * done / total)
            line = (
                f"{name} [{'#' * filled}{'.' * (30 - filled)}] {mib:.1f}/{total / 1048576:.1f} MiB"
            )
        else:
            line = f"{name} {mib:.1f} MiB"
        print(f"\r{line}", end="" if done != total else "\n", file=sys.stderr, flush=True)

    return show


def _collegeboard(config: Config) -> CollegeBoardDeliveries:
    if config.collegeboard is None or not config.collegeboard.enabled:
        raise ConfigError("collegeboard: not configured or not enabled")
    client = CollegeBoard(config.collegeboard, build_session())
    return CollegeBoardDeliveries(
        client, Ledger(config.ledger_path), config.download_dir, progress=_bar
    )


def _encoura(config: Config) -> EncouraDeliveries:
    if config.encoura is None or not config.encoura.enabled:
        raise ConfigError("encoura: not configured or not enabled")
    client = Encoura(config.encoura, build_session())
    return EncouraDeliveries(client, Ledger(config.ledger_path), config.download_dir, progress=_bar)


def _claim_names(deliveries: CollegeBoardDeliveries, names: list[str], source: str) -> list[str]:
    """The names to download now; says why each other one is left."""
    claimed = []
    for name in names:
        if not deliveries.wants(name):
            print(f"{name}: skipped, not one of the formats {list(deliveries.config.formats)}")
        elif deliveries.ledger.claim(deliveries.vendor, name, name, source):
            claimed.append(name)
        else:
            row = deliveries.ledger.get(deliveries.vendor, name)
            print(
                f"{name}: already {row.state if row else 'known'}"
                + (f" at {row.path}" if row and row.path else "")
            )
    return claimed


def _deliver_now(deliveries: Deliveries, keys: list[str]) -> int:
    """Download each key in the foreground; 1 if any failed (the daemon retries those)."""
    failed = 0
    try:
        for key in keys:
            landed = deliveries.deliver(key, schedule=False)
            if landed is None:
                failed += 1
            else:
                print(f"{key}: {landed.size} bytes → {landed.path}")
    finally:
        deliveries.close(timeout=0)
        deliveries.ledger.close()
    return EX_FAILURE if failed else EX_OK


def _fetch(config: Config, args: argparse.Namespace) -> int:
    keys = [n.strip() for n in args.names]
    for key in keys:
        try:
            check_name(key)
        except RefusedError as exc:
            print(f"scorefetch: {key!r}: {exc}", file=sys.stderr)
            return EX_USAGE
    if args.vendor == "encoura":
        exports = _encoura(config)
        ready = locate(exports, keys)
        for uid in keys:
            row = exports.ledger.get(exports.vendor, uid)
            if uid not in ready and row is not None:
                print(f"{uid}: already downloaded at {row.path}")
        return _deliver_now(exports, ready)
    deliveries = _collegeboard(config)
    return _deliver_now(deliveries, _claim_names(deliveries, keys, "fetch"))


def _sync(config: Config, args: argparse.Namespace) -> int:
    try:
        since = (
            datetime.fromisoformat(args.since)
            if args.since
            else datetime.now() - timedelta(days=SYNC_DEFAULT_DAYS)
        ).astimezone()
    except ValueError:
        print(f"scorefetch: --since {args.since!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return EX_USAGE
    if args.vendor == "encoura":
        exports = _encoura(config)
        uids = recover(exports, since)
        print(f"encoura: {len(uids)} exports since {since.date().isoformat()} to download")
        return _deliver_now(exports, uids)
    deliveries = _collegeboard(config)
    listed = deliveries.client.list_files(since)
    names = missing(deliveries, listed)
    print(
        f"collegeboard: {len(listed)} files listed since {since.date().isoformat()}, "
        f"{len(names)} to download"
    )
    return _deliver_now(deliveries, _claim_names(deliveries, names, "listing"))


def _status(config: Config, args: argparse.Namespace) -> int:
    if not config.ledger_path.exists():
        print(f"no ledger yet at {config.ledger_path}: the daemon has not run", file=sys.stderr)
        return EX_FAILURE
    ledger = Ledger(config.ledger_path)
    try:
        report: dict[str, Any] = {
            "ledger": str(config.ledger_path),
            "counts": ledger.counts(),
            "watcher": {k: {"value": v, "at": at} for k, (v, at) in ledger.watcher().items()},
            "mailbox": (
                dict(zip(("uidvalidity", "last_uid"), pos, strict=True))
                if config.imap and (pos := ledger.mailbox_position(config.imap.folder))
                else None
            ),
            "unfinished": [
                vars(d) for vendor in ("collegeboard", "encoura") for d in ledger.unfinished(vendor)
            ],
            "recent": [vars(d) for d in ledger.recent(20)],
        }
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return EX_OK
    print(f"ledger   {report['ledger']}")
    print("counts   " + (", ".join(f"{k}={v}" for k, v in report["counts"].items()) or "empty"))
    for key, item in report["watcher"].items():
        print(f"watcher  {key}={item['value']} (at {item['at']})")
    if report["mailbox"]:
        print(
            f"mailbox  uidvalidity={report['mailbox']['uidvalidity']} "
            f"last_uid={report['mailbox']['last_uid']}"
        )
    for row in report["unfinished"]:
        print(
            f"pending  {row['vendor']:<12} {row['state']:<10} {row['key']}  "
            f"{row['filename'] or ''}  {row['error'] or ''}".rstrip()
        )
    for row in report["recent"]:
        where = row["path"] or row["error"] or ""
        print(
            f"{row['updated_at']}  {row['vendor']:<12} {row['state']:<10} "
            f"{row['filename']}  {where}"
        )
    return EX_OK
