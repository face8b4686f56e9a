"""`make bench`: this tree against another commit (default: the first release, 405af45),
the same scenarios for both, interleaved, and the ratios (this / base).

    python -m bench.compare [--base COMMIT] [--quick] [--idle-seconds N] [--only NAME ...]

NAMEs: dovecot ready pymap burst idle. The base commit's tree and venv are built once
under .bench-cache/<commit>/ (gitignored), with the library versions of this tree's
requirements.lock. Both daemons are driven through what every release has: `scorefetch
run -c config.yaml` (a config this tree's sandbox writes), READY=1 on $NOTIFY_SOCKET, and
the JSON log line `delivery.downloaded`, whose timestamp is taken after the rename. The
simulators and IMAP servers are this tree's. Rounds alternate which side goes first, so a
machine busy with something else slows both alike: the ratios hold, the absolute figures
do not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import _cpu_and_rss, _stamp
from tests.standins.dovecot import DovecotServer, dovecot_binary

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from scorefetch.sandbox.imapserver import ImapServer, PymapServer
from scorefetch.sandbox.ports import free_port
from scorefetch.sandbox.sshd import SshServer, forward_config, sshd_binary

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench-cache"
FIRST_RELEASE = "405af45"


def base_python(commit: str) -> tuple[str, str]:
    """(full sha, the python of a venv with that commit's scorefetch), built once."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    home = CACHE / sha[:12]
    python = home / "venv" / "bin" / "python"
    if (home / "ready").exists():
        return sha, str(python)
    shutil.rmtree(home, ignore_errors=True)
    (home / "src").mkdir(parents=True)
    print(f"building {sha[:12]}'s venv in {home} (once)", flush=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(home / "src")], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    constraints = ROOT / ".venv" / "constraints.txt"
    subprocess.run(
        [*pip, *(["-c", str(constraints)] if constraints.exists() else []), str(home / "src")],
        check=True,
    )
    (home / "ready").touch()
    return sha, str(python)


class Side:
    def __init__(self, label: str, python: str) -> None:
        self.label = label
        self.python = python

    def daemon(self, config: Path, **kw: Any) -> DaemonProcess:
        return DaemonProcess(config, python=self.python, **kw)


def _fresh(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir(parents=True)
    return folder


def latency(sides: list[Side], server: ImapServer, work: Path, rounds: int, per: int) -> dict:
    """Seconds from APPEND to the file renamed into place, one notification at a time
    (100 KB files); `rounds` daemons per side, taking turns, `per` notifications each."""
    samples: dict[str, list[float]] = {side.label: [] for side in sides}
    with CollegeBoardSimulator() as sim, server:
        client = server.client()  # type: ignore[attr-defined]
        n = 0
        for r in range(rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                folder = _fresh(work, f"lat-{server.name}-{side.label}-{r}")  # type: ignore[attr-defined]
                daemon = side.daemon(write_config(folder, sim, server, lookback_days=0))
                try:
                    daemon.wait_event("daemon.ready", timeout=60)
                    time.sleep(1.0)  # connected and idling
                    for _ in range(per):
                        n += 1
                        name = f"4300_20261121_{n:06d}.csv"
                        sim.publish(name, os.urandom(100 * 1024))
                        start = len(daemon.events)
                        began = time.time()
                        client.append("INBOX", mail.notification(name))
                        event = daemon.wait_for(
                            lambda e, n=name: (
                                e.get("event") == "delivery.downloaded" and e.get("filename") == n
                            ),
                            timeout=30,
                            start=start,
                        )
                        samples[side.label].append(_stamp(event) - began)
                        time.sleep(0.3)  # back in IDLE, as a notification would find it
                finally:
                    daemon.stop()
        client.logout()
    return samples


def ready(sides: list[Side], work: Path, runs: int) -> dict:
    """Seconds from exec to READY=1 on $NOTIFY_SOCKET, taking turns."""
    samples: dict[str, list[float]] = {side.label: [] for side in sides}
    with CollegeBoardSimulator() as sim, PymapServer() as imap:
        for i in range(runs):
            for side in sides if i % 2 == 0 else sides[::-1]:
                config = write_config(_fresh(work, f"ready-{side.label}-{i}"), sim, imap)
                path = str(work / f"n-{side.label}-{i}.sock")
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(path)
                sock.settimeout(60)
                began = time.monotonic()
                daemon = side.daemon(config, env={"NOTIFY_SOCKET": path})
                try:
                    while b"READY=1" not in sock.recv(4096):
                        pass
                    samples[side.label].append(time.monotonic() - began)
                finally:
                    daemon.stop()
                    sock.close()
    return samples


def burst(sides: list[Side], work: Path, count: int, rounds: int) -> dict:
    """`count` notifications appended at once on pymap (one file each, 4 KB): seconds
    from the first APPEND to the last file in place, seconds the APPENDs took, and the
    daemon's CPU seconds over the burst."""
    found: dict[str, dict[str, list[float]]] = {
        side.label: {"landed": [], "appends": [], "cpu": []} for side in sides
    }
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            with CollegeBoardSimulator() as sim, PymapServer() as server:
                folder = _fresh(work, f"burst-{side.label}-{r}")
                config = write_config(folder, sim, server, retry_schedule=("1s", "2s"))
                names = [f"4300_20261121_{i:06d}.csv" for i in range(count)]
                for name in names:
                    sim.publish(name, os.urandom(4096))
                raws = [mail.notification(name) for name in names]
                daemon = side.daemon(config)
                try:
                    daemon.wait_event("daemon.ready", timeout=60)
                    client = server.client()
                    time.sleep(1.0)
                    cpu0 = _cpu_and_rss(daemon.proc.pid)[0]
                    began = time.time()
                    for raw in raws:
                        client.append("INBOX", raw)
                    appended = time.time() - began
                    wanted, last = set(names), began
                    while wanted:
                        event = daemon.wait_for(
                            lambda e, w=wanted: (
                                e.get("event") == "delivery.downloaded" and e.get("filename") in w
                            ),
                            timeout=120,
                        )
                        wanted.discard(event["filename"])
                        last = max(last, _stamp(event))
                    cpu1 = _cpu_and_rss(daemon.proc.pid)[0]
                    client.logout()
                finally:
                    daemon.stop()
                found[side.label]["landed"].append(last - began)
                found[side.label]["appends"].append(appended)
                found[side.label]["cpu"].append(cpu1 - cpu0)
    return found


def idle(sides: list[Side], work: Path, seconds: float) -> dict:
    """Both daemons at once on one pymap, at rest for `seconds` after 5 s of settling:
    CPU seconds and RSS (bytes) at the end."""
    found: dict[str, tuple[float, int]] = {}
    with CollegeBoardSimulator() as sim, PymapServer() as server:
        daemons = {}
        for side in sides:
            config = write_config(_fresh(work, f"idle-{side.label}"), sim, server)
            daemons[side.label] = side.daemon(config)
        try:
            for daemon in daemons.values():
                daemon.wait_event("daemon.ready", timeout=60)
            time.sleep(5.0)
            before = {label: _cpu_and_rss(d.proc.pid)[0] for label, d in daemons.items()}
            time.sleep(seconds)
            for label, daemon in daemons.items():
                cpu, rss = _cpu_and_rss(daemon.proc.pid)
                found[label] = (cpu - before[label], rss)
        finally:
            for daemon in daemons.values():
                daemon.stop()
    return found


def rss_everything(side: Side, work: Path, settle_s: float = 15.0) -> int:
    """RSS (bytes) at rest of one daemon with everything on: College Board and Encoura, an
    SFTP forward (paramiko) and metrics, `settle_s` after READY=1. This tree only: the
    first release had no forward."""
    folder = _fresh(work, f"everything-{side.label}")
    with (
        CollegeBoardSimulator() as sim,
        EncouraSimulator() as enc,
        PymapServer() as server,
        SshServer(folder / "ssh") as ssh,
    ):
        config = write_config(folder, sim, server, encoura=enc)
        with config.open("a") as out:
            out.write(forward_config(ssh, folder))
            out.write(f"metrics:\n  listen: 127.0.0.1:{free_port()}\n")
        daemon = side.daemon(config)
        try:
            daemon.wait_event("daemon.ready", timeout=60)
            time.sleep(settle_s)
            return _cpu_and_rss(daemon.proc.pid)[1]
        finally:
            daemon.stop()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default=FIRST_RELEASE, help="the commit to compare with")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a few minutes)")
    parser.add_argument("--idle-seconds", type=float, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    wanted = lambda name: args.only is None or name in args.only  # noqa: E731
    sha, python = base_python(args.base)
    base, this = Side("base", python), Side("this", sys.executable)
    sides = [base, this]
    quick = args.quick
    idle_s = args.idle_seconds if args.idle_seconds is not None else (60 if quick else 600)
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, a: float, b: float, unit: str, fmt: str = "{:.3f}") -> None:
        ratio = b / a if a else float("inf")
        rows.append((name, fmt.format(a) + unit, fmt.format(b) + unit, f"{ratio:.2f}×"))

    work = Path(tempfile.mkdtemp(prefix="scorefetch-compare-"))
    try:
        if wanted("dovecot") and dovecot_binary() is not None:
            got = latency(sides, DovecotServer(work / "dovecot"), work, 4, 5 if quick else 10)
            n = len(got["this"])
            row(
                f"Dovecot APPEND → file, median (n={n})",
                *(_median(got[s.label]) for s in sides),
                " s",
            )
        if wanted("ready"):
            got = ready(sides, work, 3 if quick else 6)
            row("start → READY=1, median", *(_median(got[s.label]) for s in sides), " s")
        if wanted("pymap"):
            got = latency(sides, PymapServer(), work, 2, 25 if quick else 50)
            n = len(got["this"])
            ms = {k: [v * 1000 for v in vs] for k, vs in got.items()}
            row(
                f"pymap APPEND → file, p50 (n={n})",
                *(_median(ms[s.label]) for s in sides),
                " ms",
                "{:.1f}",
            )
        if wanted("burst"):
            count, rounds = (200, 2) if quick else (500, 4)  # a burst's wall time is noisy
            got = burst(sides, work, count, rounds)
            for key, label in (
                ("landed", f"pymap burst of {count}: all files landed"),
                ("appends", f"pymap burst of {count}: the APPENDs themselves"),
                ("cpu", f"pymap burst of {count}: daemon CPU"),
            ):
                row(
                    label + f" (median of {rounds})",
                    *(_median(got[s.label][key]) for s in sides),
                    " s",
                    "{:.2f}",
                )
        if wanted("idle"):
            got = idle(sides, work, idle_s)
            per10 = {k: cpu * 600 / idle_s for k, (cpu, _) in got.items()}
            row(
                f"idle CPU per 10 min (measured over {idle_s:.0f} s)",
                per10["base"],
                per10["this"],
                " s",
                "{:.2f}",
            )
            rss = {k: r / 1e6 for k, (_, r) in got.items()}
            row("RSS at rest, College Board only", rss["base"], rss["this"], " MB", "{:.1f}")
            if sshd_binary() is not None:
                everything = rss_everything(this, work) / 1e6
                rows.append(("RSS at rest, everything on", "—", f"{everything:.1f} MB", "—"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = f"base {args.base} ({sha[:12]}) vs this tree; {os.cpu_count()} cores"
    table = ["| measure | base | this | this / base |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    print(head + "\n\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
