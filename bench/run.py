"""Benchmarks for the spec's targets (`make bench`): writes bench/results/results.md and a
PNG of the latency distribution.

    python -m bench.run [--quick] [--idle-seconds N] [--only NAME ...]

NAMEs: latency burst streaming writebehind idle blackhole cycles ready forward shared_inbox.

Everything runs on loopback against the sandbox: the real daemon process, pymap and
(when installed) Dovecot, the College Board simulator, and curl for the streaming
baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.forward import forward_rows
from bench.shared_inbox import rows as shared_inbox_rows
from bench.shared_inbox import shared_inbox
from tests.standins.dovecot import DovecotServer, dovecot_binary
from tests.standins.proxy import FaultProxy

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import ImapServer, PymapServer
from scorefetch.sandbox.sshd import sshd_binary

RESULTS = Path(__file__).parent / "results"
Row = tuple[str, str, str, str]  # benchmark, measured, target, verdict


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


class Sandbox:
    """A simulator, an IMAP server and a running daemon in a temp folder."""

    def __init__(self, server: ImapServer, folder: Path, **config: Any) -> None:
        self.sim = CollegeBoardSimulator()
        self.server = server
        self.folder = folder
        self.config = config

    def __enter__(self) -> Sandbox:
        self.sim.start()
        self.server.start()
        path = write_config(self.folder, self.sim, self.server, **self.config)
        self.daemon = DaemonProcess(path)
        self.daemon.wait_event("daemon.ready", timeout=60)
        self.client = self.server.client()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.logout()
        self.daemon.stop()
        self.server.stop()
        self.sim.stop()


def latency(server: ImapServer, folder: Path, count: int) -> list[float]:
    """Seconds from APPEND to the file renamed into place, per notification (100 KB files)."""
    samples = []
    with Sandbox(server, folder) as box:
        for i in range(count):
            name = f"4300_20261121_{i:06d}.csv"
            box.sim.publish(name, os.urandom(100 * 1024))
            raw = mail.notification(name)
            start = len(box.daemon.events)
            began = time.time()
            box.client.append("INBOX", raw)
            event = box.daemon.wait_for(
                lambda e, n=name: e.get("event") == "delivery.downloaded" and e["filename"] == n,
                timeout=30,
                start=start,
            )
            samples.append(_stamp(event) - began)
            time.sleep(0.05)
    return samples


def burst(server: ImapServer, folder: Path, pairs: int) -> tuple[float, int, int, float, bool]:
    """Append `pairs` csv/txt notification pairs at once; time until every csv landed."""
    with Sandbox(server, folder, retry_schedule=("1s", "2s")) as box:
        names = [f"4300_20261121_{i:06d}" for i in range(pairs)]
        for stem in names:
            box.sim.publish(f"{stem}.csv", os.urandom(4096))
            box.sim.publish(f"{stem}.txt", os.urandom(4096))
        raws = [mail.notification(f"{s}.{ext}") for s in names for ext in ("csv", "txt")]
        began = time.time()
        for raw in raws:
            box.client.append("INBOX", raw)
        wanted = {f"{s}.csv" for s in names}
        last = began
        while wanted:
            event = box.daemon.wait_for(
                lambda e: e.get("event") == "delivery.downloaded" and e["filename"] in wanted,
                timeout=120,
            )
            wanted.discard(event["filename"])
            last = _stamp(event)
        stats = box.sim.stats
        files = list((folder / "files" / "collegeboard").iterdir())
        return (
            last - began,
            len(files),
            stats.expired_rejections,
            stats.max_url_age(),
            len(files) == pairs,
        )


def streaming(folder: Path, size: int, rounds: int = 3) -> dict[str, float]:
    """curl, curl doing scorefetch's work too (`curl | tee FILE | sha256sum`, then fsync
    FILE), and `scorefetch fetch`, on the same simulator, taking turns `rounds` times in
    rotating order (on this VM whoever first touches fresh page cache is slow). Medians in
    MB/s: `curl`, `curl_same_work`, `command` (scorefetch's whole process: start-up, URL
    request, stream, fsync) and `stream` (its `elapsed_s`: stream, SHA-256, fsync);
    `rss`: scorefetch's largest peak RSS in bytes."""
    with CollegeBoardSimulator() as sim, PymapServer() as imap:
        sim.publish_generated("big.csv", size, seed=11)
        from scorefetch.collegeboard.client import CollegeBoard
        from scorefetch.core.http import build_session
        from scorefetch.sources import load

        rates: dict[str, list[float]] = {"curl": [], "same_work": [], "command": [], "stream": []}
        peaks = []

        def curl(config: Path, same_work: bool) -> None:
            cfg = load(config).collegeboard
            assert cfg is not None
            url = CollegeBoard(cfg, build_session()).file_url("big.csv")
            out = folder / "curl.out"
            began = time.monotonic()
            if same_work:
                script = 'curl -sS "$1" | tee "$2" | sha256sum >/dev/null && sync "$2"'
                subprocess.run(["bash", "-o", "pipefail", "-c", script, "-", url, out], check=True)
            else:
                subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
            rates["same_work" if same_work else "curl"].append(
                size / 1e6 / (time.monotonic() - began)
            )
            out.unlink()

        def ours(config: Path) -> None:
            began = time.monotonic()
            command = [sys.executable, "-m", "scorefetch", "fetch", "-c", str(config)]
            proc = subprocess.Popen(
                [*command, "collegeboard", "big.csv"],
                stdout=subprocess.PIPE,
            )
            peaks.append(_wait_with_peak_rss(proc))
            rates["command"].append(size / 1e6 / (time.monotonic() - began))
            assert proc.returncode == 0 and proc.stdout is not None, "scorefetch fetch failed"
            lines = proc.stdout.read().splitlines()
            events = [json.loads(line) for line in lines if line.startswith(b"{")]
            done = [e for e in events if e.get("event") == "delivery.downloaded"]
            rates["stream"].append(size / 1e6 / done[0]["elapsed_s"])
            landed = config.parent / "files" / "collegeboard" / "big.csv"
            digest = hashlib.sha256()
            with landed.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            assert digest.hexdigest() == sim.sha256_of("big.csv"), "bytes differ"
            landed.unlink()

        for n in range(rounds):
            (folder / f"round{n}").mkdir(parents=True)
            config = write_config(folder / f"round{n}", sim, imap)
            turns = [(curl, False), (curl, True), (ours,)]
            for func, *args in turns[n % 3 :] + turns[: n % 3]:
                func(config, *args)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        return {**medians, "rss": float(max(peaks))}


def write_behind(folder: Path, size: int, rounds: int = 4) -> tuple[float, float]:
    """The download code with and without write-behind, taking turns in one client process
    (forked, so the simulator keeps a core of its own): median seconds (on, off) per file,
    each side's first turn left out as warm-up."""
    from scorefetch.collegeboard.client import CollegeBoard
    from scorefetch.collegeboard.settings import CollegeBoardConfig
    from scorefetch.core import downloads
    from scorefetch.core.http import build_session

    with CollegeBoardSimulator() as sim:
        sim.publish_generated("big.csv", size, seed=12)
        config = CollegeBoardConfig(
            base_url=sim.base_url,
            username=sim.username,
            password=sim.password,
            download_hosts=(sim.download_host,),
        )

        def client(out: Any) -> None:
            session = build_session()
            client = CollegeBoard(config, session)
            step = downloads.WRITE_BEHIND
            for turn in range(2 * rounds):
                downloads.WRITE_BEHIND = step if turn % 2 == 0 else size * 4  # never reached
                landed = downloads.fetch_to_file(
                    session,
                    client.file_url("big.csv"),
                    folder,
                    "big.csv",
                    hosts=config.download_hosts,
                    deadline_s=600,
                )
                out.send((turn % 2 == 0, landed.elapsed_s))
                landed.path.unlink()
            out.close()

        receiver, sender = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(target=client, args=(sender,))
        child.start()
        sender.close()
        times: dict[bool, list[float]] = {True: [], False: []}
        with contextlib.suppress(EOFError):
            while True:
                on, seconds = receiver.recv()
                times[on].append(seconds)
        child.join()
        assert child.exitcode == 0 and len(times[True]) == rounds, "write-behind bench failed"
        return statistics.median(times[True][1:]), statistics.median(times[False][1:])


def _wait_with_peak_rss(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc`; its peak RSS from /proc (VmHWM), sampled until it exits.
    (wait4's ru_maxrss is no good here: Linux carries the forking parent's high-water
    mark over exec, so a child of a big benchmark process looked as big as its parent.)"""
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass  # exiting: the last sample stands
        time.sleep(0.02)
    return peak


def _cpu_and_rss(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def idle(server: ImapServer, folder: Path, seconds: float) -> tuple[float, int, int]:
    """CPU seconds and RSS (start, end) of the daemon over `seconds` of IDLE."""
    with Sandbox(server, folder) as box:
        time.sleep(2)
        cpu0, rss0 = _cpu_and_rss(box.daemon.proc.pid)
        time.sleep(seconds)
        cpu1, rss1 = _cpu_and_rss(box.daemon.proc.pid)
        return cpu1 - cpu0, rss0, rss1


def blackhole(
    server: ImapServer, folder: Path, read_timeout: float, rounds: int
) -> list[tuple[float, float]]:
    """Silence the daemon's connection mid-IDLE (no bytes, no reset; new connections still
    get through) `rounds` times: seconds to imap.disconnected and to the next
    imap.connected, per round."""
    samples = []
    with CollegeBoardSimulator() as sim, server, FaultProxy(server.host, server.port) as proxy:
        path = write_config(
            folder,
            sim,
            server,
            imap_address=(proxy.host, proxy.port),
            extra_imap=f"  read_timeout: {read_timeout:g}s\n",
        )
        daemon = DaemonProcess(path)
        try:
            daemon.wait_event("daemon.ready", timeout=60)
            for _ in range(rounds):
                time.sleep(1.0)  # back in IDLE
                start = len(daemon.events)
                began = time.monotonic()
                proxy.blackhole()
                lost = daemon.wait_for(
                    lambda e: e.get("event") == "imap.disconnected", read_timeout * 3, start
                )
                back = daemon.wait_for(
                    lambda e: e.get("event") == "imap.connected", read_timeout * 3, start
                )
                proxy.restore()  # lets the old, abandoned connection close
                samples.append((lost["_at"] - began, back["_at"] - began))
        finally:
            daemon.stop()
    return samples


def idle_cycles(folder: Path, seconds: float) -> tuple[int, int, int, int]:
    """RSS over many short IDLE cycles (idle_timeout 50 ms) while another client floods
    the folder with new mail and flag changes: (cycles, mails, RSS after warm-up, RSS at end)."""
    with (
        CollegeBoardSimulator() as sim,
        PymapServer() as server,
        FaultProxy(server.host, server.port, transcript=True) as proxy,
    ):
        path = write_config(
            folder,
            sim,
            server,
            imap_address=(proxy.host, proxy.port),
            extra_imap="  idle_timeout: 50ms\n",
        )
        daemon = DaemonProcess(path)
        try:
            daemon.wait_event("daemon.ready", timeout=60)
            client = server.client()
            client.select_folder("INBOX")
            appended = 0

            def flood_for(duration: float) -> None:
                nonlocal appended
                deadline = time.monotonic() + duration
                while time.monotonic() < deadline:
                    name = f"4300_20261122_{appended:06d}.csv"
                    if appended % 5 == 0:
                        sim.publish(name, name.encode())
                        raw = mail.notification(name)
                    else:
                        raw = mail.marketing()
                    client.append("INBOX", raw)
                    uids = client.search(["ALL"])[-50:]
                    client.add_flags(uids, [b"\\Flagged"])
                    client.remove_flags(uids, [b"\\Flagged"])
                    appended += 1

            flood_for(5.0)  # warm-up
            rss0 = _cpu_and_rss(daemon.proc.pid)[1]
            cycles0 = proxy.sent.count(b"DONE\r\n")
            flood_for(seconds)
            rss1 = _cpu_and_rss(daemon.proc.pid)[1]
            cycles = proxy.sent.count(b"DONE\r\n") - cycles0
            client.logout()
        finally:
            daemon.stop()
        return cycles, appended, rss0, rss1


def start_to_ready(folder: Path, runs: int) -> list[float]:
    """Seconds from exec to READY=1 on $NOTIFY_SOCKET."""
    samples = []
    with CollegeBoardSimulator() as sim, PymapServer() as imap:
        config = write_config(folder, sim, imap)
        for i in range(runs):
            path = str(folder / f"notify{i}.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            sock.settimeout(30)
            began = time.monotonic()
            daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": path})
            while b"READY=1" not in sock.recv(4096):
                pass
            samples.append(time.monotonic() - began)
            daemon.stop()
            sock.close()
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def plot(series: dict[str, list[float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in series.items():
        ms = sorted(v * 1000 for v in values)
        ax.plot(
            ms, [(i + 1) / len(ms) for i in range(len(ms))], label=label, drawstyle="steps-post"
        )
    ax.set_xscale("log")
    ax.set_xlabel("notification APPEND → file in place (ms, log scale)")
    ax.set_ylabel("fraction of notifications")
    ax.set_title("scorefetch email-to-file latency, 100 KB files, loopback")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a minute or two)")
    parser.add_argument("--idle-seconds", type=float, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    quick = args.quick
    idle_s = args.idle_seconds if args.idle_seconds is not None else (30 if quick else 600)
    wanted: Callable[[str], bool] = lambda n: args.only is None or n in args.only  # noqa: E731
    RESULTS.mkdir(exist_ok=True)
    rows: list[Row] = []
    series: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="scorefetch-bench-"))
    have_dovecot = dovecot_binary() is not None
    try:

        def sub(name: str) -> Path:
            path = work / name
            path.mkdir()
            return path

        if wanted("latency"):
            n = 40 if quick else 200
            samples = latency(PymapServer(), sub("lat-pymap"), n)
            series["pymap"] = samples
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            rows.append(
                (
                    "latency p50 / p99, pymap",
                    f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms (n={n})",
                    "≤ 50 ms / ≤ 250 ms",
                    "met" if p50 <= 0.05 and p99 <= 0.25 else "missed",
                )
            )
            if have_dovecot:
                samples = latency(DovecotServer(sub("dovecot-lat")), sub("lat-dovecot"), n // 2)
                series["dovecot"] = samples
                p50, p99 = percentile(samples, 50), percentile(samples, 99)
                rows.append(
                    (
                        "latency p50 / p99, Dovecot",
                        f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms (n={n // 2})",
                        "≤ ~500 ms IDLE delay + 150 ms",
                        "met" if p99 <= 0.65 else "missed",
                    )
                )
            if plot(series, RESULTS / "latency.png"):
                print(f"wrote {RESULTS / 'latency.png'}")
        if wanted("burst"):
            pairs = 100 if quick else 250
            took, files, expired, age, ok = burst(PymapServer(), sub("burst"), pairs)
            rows.append(
                (
                    f"burst, {pairs * 2} notifications ({pairs} pairs), pymap",
                    f"{took:.2f} s, {files} files, {expired} expired URLs, "
                    f"oldest URL used at {age:.2f} s",
                    "all land, none expired, ≤ 10 s",
                    "met" if ok and expired == 0 and took <= 10 and age < 15 else "missed",
                )
            )
        if wanted("streaming"):
            size = (256 if quick else 1024) * 1024 * 1024
            got = streaming(sub("stream"), size)
            ratio = got["stream"] / got["curl"]
            rows.append(
                (
                    f"streaming {size >> 20} MiB vs curl (medians of 3 rotating turns)",
                    f"curl {got['curl']:.0f} MB/s, scorefetch {got['stream']:.0f} MB/s "
                    f"(ratio {ratio:.2f}; whole command {got['command']:.0f} MB/s); "
                    f"curl → tee + sha256sum + fsync {got['same_work']:.0f} MB/s "
                    f"(ratio {got['stream'] / got['same_work']:.2f}); "
                    f"peak RSS {got['rss'] / 1e6:.0f} MB",
                    "≥ 0.8× curl, RSS ≤ 80 MB",
                    "met" if ratio >= 0.8 and got["rss"] <= 80e6 else "missed",
                )
            )
        if wanted("writebehind"):
            size = (256 if quick else 1024) * 1024 * 1024
            on_s, off_s = write_behind(sub("writebehind"), size)
            rows.append(
                (
                    f"write-behind A/B, {size >> 20} MiB, same process (medians of 3 turns)",
                    f"on {size / 1e6 / on_s:.0f} MB/s ({on_s:.2f} s), "
                    f"off {size / 1e6 / off_s:.0f} MB/s ({off_s:.2f} s)",
                    "faster on",
                    "met" if on_s < off_s else "missed",
                )
            )
        if wanted("idle"):
            cpu, rss0, rss1 = idle(PymapServer(), sub("idle"), idle_s)
            per10 = cpu * 600 / idle_s
            rows.append(
                (
                    f"idle {idle_s:.0f} s on IDLE, pymap",
                    f"{cpu:.2f} s CPU (≈ {per10:.2f} s per 10 min), RSS "
                    f"{rss0 / 1e6:.1f} → {rss1 / 1e6:.1f} MB",
                    "≤ 1 s CPU per 10 min, RSS flat",
                    "met" if per10 <= 1 and rss1 <= rss0 * 1.05 else "missed",
                )
            )
        if wanted("blackhole"):
            timeout_s = 4.0 if quick else 10.0
            servers: list[tuple[str, ImapServer]] = [("pymap", PymapServer())]
            if have_dovecot:
                servers.append(("Dovecot", DovecotServer(sub("dovecot-bh"))))
            for label, server in servers:
                found = blackhole(server, sub(f"bh-{label}"), timeout_s, 3)
                lost = [a for a, _ in found]
                back = [b for _, b in found]
                rows.append(
                    (
                        f"black hole mid-IDLE, read_timeout {timeout_s:g} s, {label}",
                        f"noticed after {min(lost):.2f}–{max(lost):.2f} s, replaced after "
                        f"{min(back):.2f}–{max(back):.2f} s (n={len(found)})",
                        "noticed ≤ read_timeout",
                        "met" if max(lost) <= timeout_s + 0.25 else "missed",
                    )
                )
        if wanted("cycles"):
            seconds = 30.0 if quick else 120.0
            cycles, mails, rss0, rss1 = idle_cycles(sub("cycles"), seconds)
            rows.append(
                (
                    f"RSS over IDLE cycles under a flood, pymap, {seconds:.0f} s",
                    f"{cycles} cycles, {mails} mails: RSS {rss0 / 1e6:.1f} → {rss1 / 1e6:.1f} MB",
                    "RSS flat",
                    "met" if rss1 - rss0 <= 5e6 else "missed",
                )
            )
        if wanted("forward"):
            if sshd_binary() is None:
                print("forward: skipped, sshd is not installed (apt-get install openssh-server)")
            else:
                rows += forward_rows(sub("forward"), quick)
        if wanted("ready"):
            samples = start_to_ready(sub("ready"), 5)
            med = statistics.median(samples)
            rows.append(
                (
                    "start → READY=1 (median of 5)",
                    f"{med:.2f} s (max {max(samples):.2f})",
                    "≤ 1.5 s",
                    "met" if med <= 1.5 else "missed",
                )
            )
        if wanted("shared_inbox") and have_dovecot:
            others = 500 if quick else 1500
            rows.extend(shared_inbox_rows(shared_inbox(sub("inbox"), others, others // 10)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = ["| benchmark | measured | target | verdict |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    header = (
        f"# scorefetch benchmarks\n\n{datetime.now().isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
        f"{', quick run' if quick else ''}\n\n"
    )
    (RESULTS / "results.md").write_text(header + "\n".join(table) + "\n")
    print(header + "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
