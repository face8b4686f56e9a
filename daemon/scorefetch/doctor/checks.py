"""The checks of `scorefetch doctor`: each a function returning a `Check` (ok or not,
what it found, what to do)."""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from scorefetch.config import Config, HooksConfig, ImapConfig
from scorefetch.core import files, logs
from scorefetch.core.errors import (
    MailboxAuthError,
    MailboxError,
    ScorefetchError,
)
from scorefetch.core.http import Response, Session
from scorefetch.mailbox.connection import Connector
from scorefetch.mailbox.connection import describe as describe_imap

MAX_SKEW_S = 5.0  # a third of a presigned URL's 15-second life
PROBE_PREFIX = ".scorefetch-doctor-"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    advice: str = ""  # what to do, when not ok


class Destination(Protocol):
    """A forward destination as doctor sees it: `probe()` connects, verifies the host key,
    logs in, writes and removes a probe file in `remote_dir`, and says what it did;
    ScorefetchError when any of that fails."""

    name: str

    def probe(self) -> str: ...


class Clock:
    """Collects the vendors' `Date` headers from the calls the checks make anyway."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.samples: list[tuple[str, float, float]] = []  # (vendor, skew_s, round trip s)

    def watch(self, session: Session, vendor: str) -> Session:
        def hook(response: Response) -> None:
            header = response.headers.get("Date")
            if not header:
                return
            try:  # whole seconds, cut: the middle of that second is the best guess
                theirs = parsedate_to_datetime(header).timestamp() + 0.5
            except (TypeError, ValueError):
                return
            rtt = response.elapsed
            ours = self.now() - rtt / 2
            self.samples.append((vendor, theirs - ours, rtt))

        session.on_answer.append(hook)
        return session


# --- the checks ---


def check_folders(config: Config) -> Check:
    """Each folder a file lands in, and the state folder, can be written, and a file
    written there can be hard-linked beside itself (how a download is put in place)."""
    folders = [config.state_dir]
    for vendor, section in config.sections().items():
        folders += [config.download_dir / vendor / (key or "") for key in section.folders()]
    for folder in folders:
        problem = probe_folder(folder)
        if problem is not None:
            return Check(
                "folders",
                False,
                problem,
                f"make {folder} writable by user {_user()} on a local filesystem "
                "(under systemd, outside /var/lib/scorefetch: ReadWritePaths= in a drop-in)",
            )
    as_root = " (as root: run doctor as the service user to check its rights)"
    note = as_root if os.geteuid() == 0 else ""
    return Check(
        "folders",
        True,
        f"{config.download_dir} and {config.state_dir} writable, hard links work{note}",
    )


MIN_FREE = 1024**3  # below this much free space a season's files may not fit


def check_disk(config: Config) -> Check:
    """Free space where files land and where the ledger lives: at least MIN_FREE, and more
    than the largest file a vendor may send (`max_file_size`)."""
    sizes = [getattr(s, "max_file_size", 0) for s in config.sections().values()]
    largest = max(sizes, default=0)
    wanted = max(MIN_FREE, largest)
    found = []
    for folder in (config.download_dir, config.state_dir):
        place = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(place).free
        found.append(f"{folder}: {_gib(free)} free")
        if free < wanted:
            return Check(
                "disk",
                False,
                f"{folder} has {_gib(free)} free, less than {_gib(wanted)}",
                "free space there or move download_dir/state_dir; a full disk delays every "
                "file (retried until it fits, delivery.overdue after alerts.overdue_after)",
            )
    return Check("disk", True, "; ".join(found))


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"


def check_metrics_port(address: tuple[str, int]) -> Check:
    """metrics.listen can be bound: another instance holding the port makes `run` exit 1
    and systemd restart it for ever."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return Check(
                "metrics",
                False,
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                "another process (a second instance?) holds the port: give each instance "
                "its own metrics.listen",
            )
    return Check("metrics", True, f"{host}:{port} is free to listen on")


def probe_folder(folder: Path) -> str | None:
    """None when `folder` (made for the probe if missing, then removed) takes a file and a
    hard link to it; else what went wrong."""
    made: list[Path] = []
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for path in reversed(missing):
            path.mkdir(mode=0o700)
            made.append(path)
        if not folder.is_dir():
            return f"{folder} is not a folder"
        probe = files.write_new(folder, PROBE_PREFIX, b"probe\n")  # gone again if it fails
        try:
            link = probe.with_name(probe.name + ".link")
            try:
                os.link(probe, link)
            except OSError as exc:
                return f"{folder}: hard links do not work here ({exc.strerror or exc})"
            link.unlink()
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return f"{folder}: cannot write as user {_user()} ({exc.strerror or exc})"
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


def check_ledger(path: Path) -> Check:
    if not path.exists():
        return Check("ledger", True, f"none yet; the first start creates {path}")
    import sqlite3  # only here: the rest of doctor has no use for it

    if not os.access(path, os.R_OK | os.W_OK):
        return Check(
            "ledger",
            False,
            f"{path} is not readable and writable by user {_user()}",
            f"chown {_user()} {path} (it must belong to the service user)",
        )
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            rows = db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check("ledger", False, f"{path}: {exc}", "restore it from a backup, or move it away")
    if verdict != "ok":
        return Check("ledger", False, f"{path}: {verdict}", "restore it from a backup")
    return Check("ledger", True, f"{path} opens, intact, {rows} deliveries recorded")


def check_imap(cfg: ImapConfig) -> Check:
    """The daemon's own way in (mailbox/connection.py's Connector: the same TLS context,
    timeouts, LOGIN or AUTHENTICATE PLAIN or XOAUTH2 with its token cache), then the folder
    EXAMINEd, as `run` does: doctor cannot pass where the daemon would fail, nor fail
    where it would pass."""
    where = f"{cfg.host}:{cfg.port}"
    tls = "TLS verified" if cfg.security != "plain" else "plain (loopback only)"
    try:
        conn = Connector(cfg, logs.get(host=cfg.host, folder=cfg.folder)).open()
    except ssl.SSLCertVerificationError as exc:
        return _tls_failure(where, exc)
    except MailboxAuthError as exc:
        return Check(
            "imap",
            False,
            f"{where}: {tls}; {exc}",
            "check imap.username and the password (or the OAuth2 app's credentials "
            "and its access to this mailbox)",
        )
    except MailboxError as exc:  # the OAuth2 token endpoint could not be reached
        return Check("imap", False, f"{where}: {exc}", "check imap.auth and HTTPS out")
    except TimeoutError:
        return Check(
            "imap",
            False,
            f"cannot connect to {where} ({cfg.security}): no answer within "
            f"{cfg.connect_timeout:g}s (connect_timeout) or {cfg.read_timeout:g}s (read_timeout)",
            "check imap.host, imap.port, imap.security and the firewall",
        )
    except (OSError, imaplib.IMAP4.error) as exc:
        return Check(
            "imap",
            False,
            f"cannot connect to {where} ({cfg.security}): {describe_imap(exc)}",
            "check imap.host, imap.port, imap.security and the firewall",
        )
    try:
        if not conn.folder_exists(cfg.folder):
            names = ", ".join(str(f[2]) for f in conn.client.list_folders()[:12])
            return Check(
                "imap",
                False,
                f"{where}: logged in; no folder {cfg.folder!r} (there are: {names})",
                "set imap.folder to where College Board's notifications arrive",
            )
        conn.select(cfg.folder, readonly=True)
        idle = (
            "IDLE offered"
            if conn.has_capability("IDLE")
            else f"no IDLE: new mail is looked for every {cfg.poll_interval:g}s"
        )
        return Check(
            "imap", True, f"{where}: {tls}, logged in as {cfg.username}, {cfg.folder!r}, {idle}"
        )
    finally:
        conn.logout()  # drops the connection when LOGOUT cannot be said


def _tls_failure(where: str, exc: ssl.SSLCertVerificationError) -> Check:
    return Check(
        "imap",
        False,
        f"{where}: the TLS certificate does not verify ({exc.verify_message})",
        "imap.host must be the name on the server's certificate, which must chain to a CA "
        "this machine trusts (/etc/ssl/certs)",
    )


def check_forward(destination: Destination) -> Check:
    name = f"forward.{destination.name}"
    try:
        return Check(name, True, destination.probe())
    except ScorefetchError as exc:
        return Check(
            name,
            False,
            str(exc),
            f"check forward.{destination.name}: host, host_key, username, key, remote_dir",
        )


def check_hooks(cfg: HooksConfig) -> Check:
    for which in ("on_delivery", "on_failure"):
        argv: tuple[str, ...] = getattr(cfg, which)
        if argv and not os.access(argv[0], os.X_OK):
            return Check(
                "hooks",
                False,
                f"hooks.{which}: {argv[0]} is not an executable file for user {_user()}",
                f"install it there, or fix hooks.{which}",
            )
    return Check("hooks", True, "every hook program is there and executable")


def check_clock(clock: Clock) -> Check:
    """Our clock against each vendor's `Date` (its quickest answer); any off by more than
    MAX_SKEW_S fails."""
    skews: dict[str, float] = {}
    for vendor, skew, _ in sorted(clock.samples, key=lambda s: s[2], reverse=True):
        skews[vendor] = skew  # the quickest answer is written last
    parts = [
        f"{abs(skew):.1f}s {'behind' if skew > 0 else 'ahead of'} {vendor}"
        for vendor, skew in skews.items()
    ]
    detail = ", ".join(parts)
    if any(abs(skew) > MAX_SKEW_S for skew in skews.values()):
        return Check(
            "clock",
            False,
            detail,
            "synchronise the clock (systemd-timesyncd or chrony): a skewed clock breaks "
            "15-second URLs, TLS and tokens",
        )
    return Check("clock", True, detail)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
