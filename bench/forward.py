"""The forwarding benchmark: scorefetch's SFTP upload against OpenSSH's `sftp` and `scp` on
the same sshd in the same run, and landing → remote rename through the real daemon."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from scorefetch.config import SftpDestination
from scorefetch.forward.sftp import SftpTarget
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.sshd import SshServer, forward_config


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def throughput(server: SshServer, folder: Path, size: int, rounds: int = 3) -> dict[str, float]:
    """MB/s per contender, medians of `rounds` turns in rotating order; each turn is a whole
    upload with connect and login. `sftp -f` asks the server to fsync, as scorefetch does."""
    source = folder / "upload.csv"
    source.write_bytes(os.urandom(size))
    key = folder / "id_ed25519"
    key.write_text(server.client_key)
    key.chmod(0o600)
    known = folder / "known_hosts"
    known.write_text(f"[{server.host}]:{server.port} {server.host_key}\n")
    ssh_opts = ["-i", str(key), "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes"]
    ssh_opts += ["-o", "StrictHostKeyChecking=yes", "-P", str(server.port)]
    login = f"{server.username}@{server.host}"
    remote = server.root / "bench"
    remote.mkdir(exist_ok=True)
    target = SftpTarget(
        "bench",
        SftpDestination.model_validate(
            {
                "type": "sftp",
                "host": server.host,
                "port": server.port,
                "username": server.username,
                "private_key": server.client_key,
                "host_key": server.host_key,
                "remote_dir": str(remote),
            }
        ),
    )
    turn = 0

    def ours() -> None:
        target.upload(source, f"ours{turn}.csv", "collegeboard", None)

    def sftp(fsync: bool) -> None:
        flag = "-f " if fsync else ""
        batch = f"put {flag}{source} {remote}/sftp{turn}{int(fsync)}.csv\n".encode()
        subprocess.run(["sftp", "-q", "-b", "-", *ssh_opts, login], input=batch, check=True)

    def scp() -> None:
        subprocess.run(
            ["scp", "-q", *ssh_opts, str(source), f"{login}:{remote}/scp{turn}.csv"], check=True
        )

    contenders = {
        "scorefetch": ours,
        "sftp": lambda: sftp(False),
        "sftp -f": lambda: sftp(True),
        "scp": scp,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            began = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - began)
        for path in remote.iterdir():
            path.unlink()
    return {name: size / 1e6 / statistics.median(t) for name, t in times.items()}


def landing_to_rename(server: SshServer, folder: Path, count: int) -> list[float]:
    """Seconds from `delivery.downloaded` to `forward.uploaded` (logged after the remote
    rename and the ledger update), 100 KB files, the real daemon."""
    samples = []
    with CollegeBoardSimulator() as sim, PymapServer() as imap:
        path = write_config(folder, sim, imap)
        with path.open("a") as out:
            out.write(forward_config(server, folder, remote_dir="latency/{vendor}"))
        daemon = DaemonProcess(path)
        try:
            daemon.wait_event("daemon.ready", timeout=60)
            with imap.client() as client:  # type: ignore[attr-defined]
                for i in range(count):
                    name = f"4300_20261121_{i:06d}.csv"
                    sim.publish(name, os.urandom(100 * 1024))
                    start = len(daemon.events)
                    client.append("INBOX", mail.notification(name))
                    landed = daemon.wait_for(
                        lambda e, n=name: (
                            e.get("event") == "delivery.downloaded" and e.get("filename") == n
                        ),
                        timeout=30,
                        start=start,
                    )
                    sent = daemon.wait_for(
                        lambda e, n=name: (
                            e.get("event") == "forward.uploaded" and e.get("filename") == n
                        ),
                        timeout=30,
                        start=start,
                    )
                    samples.append(_stamp(sent) - _stamp(landed))
                    time.sleep(0.05)
        finally:
            daemon.stop()
    return samples


def forward_rows(folder: Path, quick: bool) -> list[tuple[str, str, str, str]]:
    """The benchmark's rows for results.md."""
    size = (25 if quick else 100) * 1000 * 1000
    with SshServer(folder / "sshd") as server:
        got = throughput(server, folder, size)
        (folder / "daemon").mkdir()
        samples = landing_to_rename(server, folder / "daemon", 10 if quick else 30)
    ratio = got["scorefetch"] / got["sftp"]
    ratio_f = got["scorefetch"] / got["sftp -f"]
    p50, worst = statistics.median(samples), max(samples)
    return [
        (
            f"forward {size // 1_000_000} MB over SFTP vs OpenSSH (medians of 3 rotating turns)",
            f"scorefetch {got['scorefetch']:.0f} MB/s; sftp {got['sftp']:.0f} MB/s "
            f"(ratio {ratio:.2f}); sftp put -f (fsync, as scorefetch) {got['sftp -f']:.0f} MB/s "
            f"(ratio {ratio_f:.2f}); scp {got['scp']:.0f} MB/s",
            "≥ 0.8× sftp",
            "met" if ratio >= 0.8 else "missed",
        ),
        (
            "forward: landing → remote rename, 100 KB, loopback",
            f"p50 {p50 * 1000:.0f} ms, max {worst * 1000:.0f} ms (n={len(samples)})",
            "≤ 1 s",
            "met" if worst <= 1.0 else "missed",
        ),
    ]
