"""The `scorefetch` command: parse arguments, configure logging once, map outcomes to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pwd
import shlex
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import yaml

from scorefetch import __version__, sources
from scorefetch import config as config_module
from scorefetch.config import Config
from scorefetch.core import interrupt, libc, logs, memory
from scorefetch.core.deliveries import Deliveries
from scorefetch.core.downloads import Progress
from scorefetch.core.errors import ConfigError, RefusedError, ScorefetchError
from scorefetch.core.filenames import check_name
from scorefetch.core.ledger import Ledger
from scorefetch.source import Source

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
DEMO_NEEDS = ("pymap",)  # the 'demo' extra
EX_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C in an interactive command
SYNC_DEFAULT_DAYS = 30
WRITERS = ("run", "fetch", "sync")  # commands that create files in state_dir and download_dir


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors under journald are one JSON line like every other."""

    def error(self, message: str) -> NoReturn:
        if logs.under_journald(sys.stderr):
            logs.fatal("command.refused", f"{self.prog}: {message}")
            raise SystemExit(EX_USAGE)
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scorefetch", description=__doc__)
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
    fetch.add_argument("vendor", choices=[source.vendor for source in sources.SOURCES])
    fetch.add_argument("names", nargs="+", metavar="NAME", help="file names, or export uids")
    fetch.add_argument(
        "--force", action="store_true", help="download again even when the file is on disk"
    )
    sync = command("sync", "one listing-based catch-up pass, then exit")
    sync.add_argument(
        "--vendor",
        choices=[source.vendor for source in sources.SOURCES],
        default=None,
        help="only this one (default: every enabled)",
    )
    sync.add_argument(
        "--since",
        metavar="DATE",
        help=f"YYYY-MM-DD or an ISO date-time (default: {SYNC_DEFAULT_DAYS} days ago)",
    )
    status = command("status", "recent deliveries, failures and watcher state, from the ledger")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    backup = command("backup", "a consistent copy of the ledger (safe while the daemon runs)")
    backup.add_argument("file", type=Path, metavar="FILE", help="where the copy goes (new file)")
    doctor = command("doctor", "prove this deployment works: config, folders, mailbox, vendors")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--test-alert",
        action="store_true",
        help="also run hooks.on_failure once with SCOREFETCH_EVENT=test",
    )
    demo = command("demo", "run everything against the built-in sandbox and show what landed")
    demo.add_argument("--keep", action="store_true", help="keep the sandbox folder afterwards")
    return parser


def main(argv: list[str] | None = None) -> int:
    logs.journal_excepthook()
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code) if isinstance(exc.code, int) else EX_USAGE
    try:
        if args.command == "demo":
            try:
                # The sandbox loads only for the demo; its IMAP server runs in a process of
                # its own, so a missing pymap would show only as a timeout: ask first.
                missing = next((m for m in DEMO_NEEDS if importlib.util.find_spec(m) is None), None)
                if missing is not None:
                    raise ModuleNotFoundError(name=missing)
                from scorefetch.demo import run_demo
            except ModuleNotFoundError as exc:
                logs.fatal(
                    "command.failed",
                    f"the demo needs the 'demo' extra ({exc.name} is missing): "
                    "pip install 'scorefetch[demo]', or run `make demo` in a clone",
                )
                return EX_FAILURE

            logs.configure("console" if sys.stdout.isatty() else "json")
            return run_demo(keep=args.keep)
        path = args.config or config_module.default_path()
        if args.command == "doctor":
            return _doctor(path, args)
        if args.command == "run":
            memory.limit_arenas()  # before any thread allocates (core/memory.py)
            libc.name_threads()  # before any thread starts: each shows its name in top -H
        config = sources.load(path)
        handlers: dict[str, Callable[[Config, argparse.Namespace], int]] = {
            "run": _run,
            "check-config": _check_config,
            "fetch": _fetch,
            "sync": _sync,
            "status": _status,
            "backup": _backup,
        }
        if args.command in WRITERS and (refusal := _wrong_user(config, path, argv)):
            logs.fatal("command.refused", refusal)
            return EX_FAILURE
        interactive = args.command in ("fetch", "sync")
        if interactive:
            interrupt.install()
        logs.configure(None if interactive else config.log.format, config.log.level)
        code = handlers[args.command](config, args)
        sys.stdout.flush()  # here, so that a closed pipe is met below, not at exit
        return EX_INTERRUPTED if interactive and interrupt.asked() else code
    except ConfigError as exc:
        logs.fatal("config.invalid", f"configuration error:\n{exc}")
        return EX_CONFIG
    except ScorefetchError as exc:
        logs.fatal("command.failed", str(exc))
        return EX_FAILURE
    except BrokenPipeError:  # `scorefetch status | head -1`: the reader has all it wanted
        with contextlib.suppress(OSError, ValueError):  # no more writes, not even at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK
    except KeyboardInterrupt:  # `run` handles SIGINT itself and exits 0 (a clean stop)
        return EX_OK if args.command == "run" else EX_INTERRUPTED


def _owner(path: Path) -> int:
    """The owner of `path`, or of its nearest existing parent (what a new file would join)."""
    for folder in (path, *path.parents):
        try:
            return folder.stat().st_uid
        except FileNotFoundError:
            continue
    return 0


def _wrong_user(config: Config, path: Path, argv: list[str] | None) -> str | None:
    """Root writing into another user's folders leaves files the service cannot open (a
    root-owned ledger, a 0600 file the forwarder cannot read): say whose they are instead."""
    if os.geteuid() != 0:
        return None
    for folder in (config.state_dir, config.download_dir):
        uid = _owner(folder)
        if uid != 0:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = f"#{uid}"
            words = list(sys.argv[1:] if argv is None else argv)
            if not {"-c", "--config"} & set(words) and not any(
                w.startswith("--config=") for w in words
            ):
                words[1:1] = ["-c", str(path)]
            line = f"sudo -u {name} scorefetch {shlex.join(words)}"
            return (
                f"{folder} belongs to {name}, not root: files made by root there would stop "
                f"the service. Run it as that user:\n  {line}"
            )
    return None


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


def _source(config: Config, vendor: str) -> Source:
    """The source `vendor` with a progress bar, or a ConfigError when it is not enabled."""
    found = [cls for cls in sources.SOURCES if cls.vendor == vendor]
    source = found[0].build(config, Ledger(config.ledger_path), _bar) if found else None
    if source is None:
        raise ConfigError(f"{vendor}: not configured or not enabled")
    return source


def _deliver_now(deliveries: Deliveries[Any], keys: list[str]) -> int:
    """Download each key in the foreground; 1 if any failed (the daemon retries those).
    Its uploads are rows in the ledger: the running daemon sends them within seconds."""
    failed = 0
    try:
        for key in keys:
            landed = deliveries.deliver(key, say=logs.say)
            if landed is None:
                failed += 1
                continue
            logs.say(f"{key}: {landed.size} bytes → {landed.path}")
            for destination in deliveries.forward_to:
                row = deliveries.ledger.forwards.get(destination, deliveries.vendor, key)
                if row is not None and row.state == "uploaded":
                    logs.say(f"{key}: already at {destination} (these very bytes)")
                else:
                    logs.say(f"{key}: queued for {destination} (the daemon sends it)")
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
            logs.fatal("command.refused", f"{key!r}: {exc}")
            return EX_USAGE
    source = _source(config, args.vendor)
    return _deliver_now(source.deliveries, source.fetch(keys, logs.say, force=args.force))


def _doctor(path: Path, args: argparse.Namespace) -> int:
    """Every check, one line each (or JSON); 78 when the config itself is wrong."""
    from scorefetch import doctor

    logs.configure("json", "error", logs.STDERR)  # stdout is the report
    try:
        config = sources.load(path)
    except ConfigError as exc:
        checks = [doctor.config_check(path, exc)]
        code = EX_CONFIG
    else:
        checks = [
            doctor.config_check(path, None),
            *doctor.run(config, sources=sources.SOURCES, test_alert=args.test_alert),
        ]
        code = EX_OK if all(c.ok for c in checks) else EX_FAILURE
    print(json.dumps(doctor.as_json(checks), indent=2) if args.json else doctor.render(checks))
    return code


def _sync(config: Config, args: argparse.Namespace) -> int:
    try:
        since = (
            datetime.fromisoformat(args.since)
            if args.since
            else datetime.now() - timedelta(days=SYNC_DEFAULT_DAYS)
        ).astimezone()
    except ValueError:
        logs.fatal("command.refused", f"--since {args.since!r} is not a date (YYYY-MM-DD)")
        return EX_USAGE
    vendors = [args.vendor] if args.vendor else _enabled_vendors(config)
    if not vendors:
        raise ConfigError("no vendor is enabled: nothing to sync")
    code = EX_OK
    for vendor in vendors:  # one after the other, each with its own ledger connection
        source = _source(config, vendor)
        code = max(code, _deliver_now(source.deliveries, source.sync(since, logs.say)))
    return code


def _enabled_vendors(config: Config) -> list[str]:
    """The vendors the config enables, in registry order."""
    return list(config.sections())


def _backup(config: Config, args: argparse.Namespace) -> int:
    """SQLite's online backup of the ledger into a new file (0600): consistent under WAL
    while the daemon writes. Restore: stop the daemon, put the copy at state_dir's
    ledger.sqlite3 (owned by the service user), start it."""
    if args.file.exists():
        raise ScorefetchError(f"{args.file} exists: give a new file name")
    if not config.ledger_path.exists():
        raise ScorefetchError(f"{config.ledger_path} does not exist yet: nothing to back up")
    ledger = Ledger(config.ledger_path, readonly=True)
    try:
        ledger.backup(args.file)
    finally:
        ledger.close()
    print(f"ledger copied to {args.file} (schema version {ledger_version(args.file)})")
    return EX_OK


def ledger_version(path: Path) -> int:
    import sqlite3

    from scorefetch.core import schema

    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return schema.version(db)


def _status(config: Config, args: argparse.Namespace) -> int:
    from scorefetch import status

    facts = status.report(config)
    if args.json:  # monitoring parses it: the same shape before the first run, empty
        print(json.dumps(facts, indent=2))
    else:
        print("\n".join(status.render(facts)))
    return EX_OK
