"""Chaos: the real daemon is killed (SIGKILL or SIGTERM) at random moments while College
Board notifications with csv/txt twins, large throttled files and Encoura exports on
several product keys keep arriving; the vendors answer 503 now and then, the IMAP server
restarts (losing its mail: the listing must catch up) and the disk fills up and frees.
Every file is also forwarded to a real sshd (this run's own) behind a fault proxy: links
are reset mid-upload, the server goes silent, is killed and restarted, its disk fills up;
`scorefetch fetch` / `sync` run by hand beside the daemon; and files age past retention's
keep_days at random (their mtime set 40 days back).

At the end every wanted file is on the SFTP server exactly once with the right bytes, no
dot-named part left, and on disk exactly once with the right bytes unless retention removed
it — and retention removed only files every destination had confirmed first: no unwanted
twin, no `NAME-1` copy, nothing partial, no secret in any output, every Encoura export
landed without a manual `sync`, and each file that was late told of once
(`delivery.overdue`) and its arrival once (`delivery.recovered`) — again only by the run
after one SIGKILLed between saying it and marking it told. Prints the figures.

`make test` runs it for CHAOS_SECONDS (default 75); `make chaos` for CHAOS_MINUTES (10).
The disk faults need root (a small tmpfs as download_dir); without root they are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox import mail
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.sshd import SshServer, forward_config
from tests.standins.hostile import HostileCollegeBoard, HostileEncoura
from tests.standins.proxy import FaultProxy
from tests.support import assert_no_secrets, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

SECONDS = float(os.environ.get("CHAOS_SECONDS", "75"))
OVERDUE_S = 6  # short: files held up by kills and faults are late, and told of once
SETTLE_LIMIT_S = 240.0
KEYS = ("score-reporter", "prospect", "inquiry")
LARGE = 3 * 1024 * 1024
FAST_IMAP = "  read_timeout: 4s\n  connect_timeout: 2s\n"
ROOT = os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[bool]:
    """A tmpfs at `where` when root (True), else a plain folder (False); always unmounted."""
    where.mkdir(parents=True, exist_ok=True)
    if not ROOT:
        yield False
        return
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True
    )
    try:
        yield True
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class World:
    """The simulators, the mail server behind a proxy, the disk, and what must land."""

    def __init__(
        self, tmp_path: Path, files: Path, disk: bool, seed: int, sshd: Any, remote: Path
    ) -> None:
        self.tmp, self.files, self.disk = tmp_path, files, disk
        self.sshd, self.remote = sshd, remote  # the SFTP root of this run's files
        self.rng = random.Random(seed)
        self.cb, self.enc = HostileCollegeBoard(), HostileEncoura()
        self.imap = PymapServer()
        self.cb.start(), self.enc.start(), self.imap.start()
        self.proxy = FaultProxy(self.imap.host, self.imap.port)
        self.proxy.start()
        self.sftp = FaultProxy(sshd.host, sshd.port)
        self.sftp.start()
        self.ledger = files.parent / "state" / "ledger.sqlite3"
        self.want: dict[str, str] = {}  # path under download_dir → sha256
        self.figures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._n = 0

    def close(self) -> None:
        self.sftp.stop()
        self.proxy.stop()
        for part in (self.imap, self.enc, self.cb):
            part.stop()

    def config(self) -> Path:
        path = write_config(
            self.tmp,
            self.cb,
            self.imap,
            retry_schedule=("1s", "2s", "4s"),
            poll_interval="10s",
            encoura=self.enc,
            product_keys=KEYS,
            encoura_poll_interval="2s",
            imap_address=(self.proxy.host, self.proxy.port),
            extra_imap=FAST_IMAP,
        )
        common = {"port": self.sftp.port, "retry_schedule": ("1s", "2s", "4s", "8s")}
        forward = forward_config(
            self.sshd,
            self.tmp,
            remote_dir=f"{self.remote}/{{vendor}}",
            vendors=("collegeboard",),
            timeout="5s",
            **common,
        )
        encoura = forward_config(  # {product_key} is Encoura's alone: a destination of its own
            self.sshd,
            self.tmp,
            name="slate-encoura",
            remote_dir=f"{self.remote}/{{vendor}}/{{product_key}}",
            vendors=("encoura",),
            timeout="5s",
            **common,
        )
        forward += encoura.split("\n", 1)[1]  # the same `forward:` mapping
        with path.open("a") as out:
            out.write(forward + f"alerts:\n  overdue_after: {OVERDUE_S}s\n")
            out.write("retention:\n  keep_days: 30\n")  # what age() makes a file look
        return path

    # arrivals
    def arrive(self) -> None:
        """One arrival: a csv/txt pair with its two emails, a large file, or an export."""
        with self._lock:
            self._n += 1
            n = self._n
        roll = self.rng.random()
        if roll < 0.15:
            key = self.rng.choice(KEYS)
            name = f"{key}-{n:05d}.csv"
            if self.rng.random() < 0.3:
                uid = self.enc.add_generated_export(key, name, LARGE // 2, seed=n)
                digest = self.enc.sha256_of(uid)
            else:
                data = f"id,key\r\n{n},{key}\r\n".encode() * 20
                self.enc.add_export(key, name, data)
                digest = sha(data)
            self._expect(f"encoura/{key}/{name}", digest, "exports")
            return
        stem = f"4300_20261121_{n:06d}"
        if roll < 0.25:
            self.cb.publish_generated(f"{stem}.csv", LARGE, seed=n)
            digest = self.cb.sha256_of(f"{stem}.csv")
        else:
            data = f"Last,First,Total\r\nDoe,{stem},1400\r\n".encode() * 30
            self.cb.publish(f"{stem}.csv", data)
            digest = sha(data)
        self.cb.publish(f"{stem}.txt", b"fixed width twin\r\n")
        self._expect(f"collegeboard/{stem}.csv", digest, "cb_files")
        for ext in self.rng.sample(["csv", "txt"], 2):
            try:
                self.imap.deliver(mail.notification(f"{stem}.{ext}"))
                self.figures["mails"] += 1
            except Exception:  # noqa: BLE001 - any IMAP or socket error while it restarts
                self.figures["mails_lost"] += 1  # the server is restarting: the listing finds it

    def _expect(self, path: str, digest: str, figure: str) -> None:
        with self._lock:
            self.want[path] = digest
            self.figures[figure] += 1

    # faults
    def fault(self) -> None:
        """One fault, chosen at random."""
        kind = self.rng.choice(
            [
                *("503", "503", "imap", "disk", "throttle"),
                *("sftp_reset", "sftp_silent", "sftp_restart", "remote_full", "age"),
            ]
        )
        if kind == "503":
            sim, endpoint = self.rng.choice(
                [
                    *[(self.cb, e) for e in ("file", "download", "list")],
                    *[(self.enc, e) for e in ("list", "download_url", "download")],
                ]
            )
            sim.inject(endpoint, 503, count=self.rng.randint(1, 2))
        elif kind == "imap":
            self.restart_imap()
        elif kind == "disk" and self.disk:
            self.fill_disk()
        elif kind == "throttle":
            self.cb.throttle_bps = self.enc.throttle_bps = 4 * 1024 * 1024
        elif kind == "sftp_reset":
            self.sftp.cut(reset=True)  # every upload under way loses its link
        elif kind == "sftp_silent":
            self.sftp.blackhole()  # the server says nothing until heal()
        elif kind == "sftp_restart":
            self.sshd.stop()  # the listener and its sessions: uploads under way are cut
            time.sleep(self.rng.uniform(0.2, 2.0))  # the fault: away a random while
            self.sshd.start()  # the same port, keys and files
        elif kind == "age":
            if not self.age():
                return
        elif kind == "remote_full" and self.disk:
            self.fill(self.remote)
        else:
            return
        self.figures[f"fault_{kind}"] += 1

    def age(self) -> bool:
        """A landed file looks 40 days old: retention may remove it once every destination
        has it (never before)."""
        landed = [p for p in map(Path, _files(self.files)) if not p.name.startswith(".")]
        if not landed:
            return False
        old = time.time() - 40 * 86400
        with contextlib.suppress(OSError):  # removed meanwhile
            os.utime(self.files / self.rng.choice(landed), (old, old))
        return True

    def removed(self) -> dict[str, str]:
        """What retention removed and nobody fetched again (`removed_at` set), with when."""
        with contextlib.closing(sqlite3.connect(self.ledger)) as ledger:
            rows = ledger.execute(
                "SELECT vendor, path, removed_at FROM deliveries WHERE removed_at IS NOT NULL"
            ).fetchall()
        return {str(Path(path).relative_to(self.files)): at for _vendor, path, at in rows}

    def removed_too_soon(self) -> list[str]:
        """Files retention removed before every destination confirmed them (its rows)."""
        with contextlib.closing(sqlite3.connect(self.ledger)) as ledger:
            rows = ledger.execute(
                "SELECT d.vendor, d.key, f.destination, f.state, f.updated_at, d.removed_at"
                " FROM deliveries d JOIN forwards f ON f.vendor = d.vendor AND f.key = d.key"
                " WHERE d.removed_at IS NOT NULL"
                " AND (f.state != 'uploaded' OR f.updated_at > d.removed_at)"
            ).fetchall()
        return [" ".join(map(str, row)) for row in rows]

    def restart_imap(self) -> None:
        self.imap.stop()
        time.sleep(self.rng.uniform(0.2, 2.0))  # the fault: the server is away a random while
        self.imap.start()  # a new, empty server on a new port: mail since the last look is lost
        self.proxy.target = (self.imap.host, self.imap.port)
        self.proxy.cut()

    def fill_disk(self) -> None:
        self.fill(self.files)

    def fill(self, where: Path) -> None:
        ballast = where / f"ballast-{time.monotonic_ns()}"
        with contextlib.suppress(OSError), ballast.open("wb") as out:
            while True:
                out.write(b"\0" * 1024 * 1024)

    def heal(self) -> None:
        """Free the disk, stop throttling and failing."""
        for folder in (self.files, self.remote):
            for ballast in folder.glob("ballast-*"):
                ballast.unlink()
        self.sftp.restore()
        self.cb.throttle_bps = self.enc.throttle_bps = None
        self.cb.clear_faults(), self.enc.clear_faults()

    # the verdict
    def on_disk(self) -> dict[str, str]:
        """Every file under the vendor folders (hidden ones included), with its sha256."""
        return _digests(self.files)

    def on_server(self) -> dict[str, str]:
        """Every file on the SFTP server under this run's root (dot-named parts included)."""
        return _digests(self.remote)

    def settled(self) -> bool:
        """Every wanted file is on the SFTP server, and here unless retention removed it."""
        with self._lock:
            want = set(self.want)
        here = set(_files(self.files)) | set(self.removed())
        return want <= set(_files(self.remote)) and want <= here

    # by hand, beside the daemon
    def by_hand(self, config: Path) -> None:
        """`scorefetch fetch` of a file College Board posted, or `sync`, in its own process."""
        with self._lock:
            names = [p.split("/", 1)[1] for p in self.want if p.startswith("collegeboard/")]
        if self.rng.random() < 0.7 and names:
            argv = ["fetch", "-c", str(config), "collegeboard", self.rng.choice(names)]
        else:
            argv = ["sync", "-c", str(config), "--vendor", "collegeboard"]
        done = subprocess.run(
            [sys.executable, "-m", "scorefetch", *argv],
            capture_output=True,
            timeout=120,
            check=False,
        )
        self.figures[f"by_hand_{argv[0]}"] += 1
        self.figures["by_hand_failed"] += done.returncode not in (0, 1)


def _digests(where: Path) -> dict[str, str]:
    return {name: hashlib.sha256((where / name).read_bytes()).hexdigest() for name in _files(where)}


def _files(where: Path) -> list[str]:
    return [
        str(p.relative_to(where))
        for vendor in ("collegeboard", "encoura")
        for p in (where / vendor).rglob("*")
        if p.is_file()
    ]


def _start(world: World, config: Path, daemons: list[DaemonProcess]) -> DaemonProcess:
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    world.figures["starts"] += 1
    return daemon


def _keep_doing(
    stop: threading.Event, every: tuple[float, float], act: Callable[[], None], rng: random.Random
) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(rng.uniform(*every)):
            act()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _kill_loop(world: World, config: Path, seconds: float) -> list[DaemonProcess]:
    """Start, wait a random moment, SIGKILL or SIGTERM, start again — until `seconds` pass."""
    daemons: list[DaemonProcess] = []
    deadline = time.monotonic() + seconds
    daemon = _start(world, config, daemons)
    while time.monotonic() < deadline:
        time.sleep(world.rng.uniform(1.0, 6.0))  # the fault: a kill at a random moment
        if world.rng.random() < 0.5:
            daemon.kill()
            world.figures["sigkill"] += 1
        else:
            # Until the daemon installs its handler (before its first log line) SIGTERM is
            # Python's default, exit -15; on a busy machine the random moment may come first.
            daemon.wait_for(lambda e: e.get("event") != "output", timeout=60)
            code = daemon.stop(timeout=45)
            assert code == 0, f"SIGTERM exit {code}: {daemon.lines[-5:]}"
            world.figures["sigterm"] += 1
        daemon = _start(world, config, daemons)
    daemon.stop(timeout=45)
    return daemons


def _settle(world: World, config: Path, daemons: list[DaemonProcess]) -> float:
    """Faults off, one last daemon: seconds until every wanted file is on disk."""
    world.heal()
    began = time.monotonic()
    final = _start(world, config, daemons)
    try:
        wait_until(world.settled, timeout=SETTLE_LIMIT_S)
    except AssertionError:
        missing = sorted(set(world.want) - set(world.on_disk()))
        raise AssertionError(
            f"not settled after {SETTLE_LIMIT_S}s; missing {missing[:10]}"
        ) from None
    settle_s = time.monotonic() - began
    while not set(_lateness(daemons)["overdue"]) <= set(_lateness(daemons)["recovered"]):
        if time.monotonic() - began > SETTLE_LIMIT_S:  # each late file told of its arrival
            raise AssertionError(f"overdue never recovered: {_lateness(daemons)}")
        time.sleep(0.2)
    # Another Encoura pass over every key (and what else lists meanwhile): nothing twice.
    passes = len(final.named("listing.completed")) + len(KEYS)
    wait_until(lambda: len(final.named("listing.completed")) >= passes, timeout=60)
    assert final.stop(timeout=45) == 0
    return settle_s


# The test's own limits (the run, the settling, the last listings, the stops) speak before
# pytest-timeout's: a machine too busy to settle in time says what was missing or late.
@pytest.mark.timeout(SECONDS + 2 * SETTLE_LIMIT_S + 300)
def test_chaos_every_file_lands_exactly_once(tmp_path: Path, sshd_server: Any) -> None:
    """Kills, restarts, 503s, IMAP restarts, link resets, a silent, restarted and full SFTP
    server, a full disk, files aging past retention and commands run by hand: every wanted
    file exactly once, here (unless retention removed it, after every destination had it)
    and there. `sshd_server` only says sshd is here: the run has one of its own to kill."""
    seed = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
    own = SshServer(tmp_path / "sshd")
    own.start()
    remote = own.root / f"chaos{seed}"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(own.stop)
        disk = cleanup.enter_context(tmpfs(tmp_path / "files", "256m"))
        cleanup.enter_context(tmpfs(remote, "256m"))
        remote.chmod(0o777)  # the SFTP user writes there
        world = World(tmp_path, tmp_path / "files", disk, seed, own, remote)
        stop = threading.Event()
        try:
            config = world.config()
            threads = [
                _keep_doing(stop, (0.3, 1.2), world.arrive, random.Random(seed + 1)),
                _keep_doing(stop, (2.0, 6.0), world.fault, random.Random(seed + 2)),
                _keep_doing(stop, (3.0, 8.0), world.heal, random.Random(seed + 3)),
                _keep_doing(
                    stop, (4.0, 10.0), lambda: world.by_hand(config), random.Random(seed + 4)
                ),
            ]
            began = time.monotonic()
            daemons = _kill_loop(world, config, SECONDS)
            stop.set()
            for thread in threads:  # the arrival and fault threads finish their last step
                thread.join(60)
                assert not thread.is_alive()
            settle_s = _settle(world, config, daemons)
            for daemon in daemons:
                world.figures["local_failures"] += len(
                    daemon.named("delivery.failed", kind="local")
                )
                recovered = daemon.named("listing.recovered")
                world.figures["recovered"] += sum(int(e.get("new", 0)) for e in recovered)
            late = _lateness(daemons)
            world.figures["overdue"], world.figures["recovered_late"] = (
                len(late["overdue"]),
                len(late["recovered"]),
            )
            removed = world.removed()
            world.figures["retention_removed"] = len(removed)
            _report(world, seed, time.monotonic() - began, settle_s, disk)
            assert world.on_server() == world.want  # once each, the right bytes, no parts
            assert world.on_disk() == {p: d for p, d in world.want.items() if p not in removed}
            assert world.removed_too_soon() == []
            assert _told_more_than_once(daemons, "overdue") == []
            assert _told_more_than_once(daemons, "recovered") == []
            assert set(late["recovered"]) == set(late["overdue"])
            secrets = [world.imap.password, world.cb.password, world.enc.password]
            assert_no_secrets(
                [line for d in daemons for line in d.lines], [*secrets, world.enc.api_key]
            )
            assert world.enc.stats.reused_url_rejections == 0
        finally:
            stop.set()
            world.close()


def _lateness(daemons: list[DaemonProcess]) -> dict[str, list[str]]:
    """The files each run said were overdue, and recovered (by key: an Encoura export is
    overdue under its uid, before its file name is known, and recovered under its name)."""
    return {
        kind: [f"{e['vendor']}/{e['key']}" for d in daemons for e in d.named(f"delivery.{kind}")]
        for kind in ("overdue", "recovered")
    }


def _told_more_than_once(daemons: list[DaemonProcess], kind: str) -> list[str]:
    """Keys a run said twice, or said again after a run that said it and was not
    SIGKILLed: an alert is said, then marked, so only a kill between the two repeats it."""
    wrong: list[str] = []
    last_said_by: dict[str, DaemonProcess] = {}
    for daemon in daemons:
        said = Counter(f"{e['vendor']}/{e['key']}" for e in daemon.named(f"delivery.{kind}"))
        wrong += [key for key, n in said.items() if n > 1]
        for key in said:
            earlier = last_said_by.get(key)
            if earlier is not None and earlier.proc.returncode != -signal.SIGKILL:
                wrong.append(key)
            last_said_by[key] = daemon
    return wrong


def _report(world: World, seed: int, total_s: float, settle_s: float, disk: bool) -> None:
    f = world.figures
    faults = {k[6:]: v for k, v in sorted(f.items()) if k.startswith("fault_")}
    print(
        f"\nchaos: {total_s:.0f} s, seed {seed}\n"
        f"  kills      {f['sigkill'] + f['sigterm']} ({f['sigkill']} SIGKILL, "
        f"{f['sigterm']} SIGTERM)\n"
        f"  restarts   {f['starts'] - 1}\n"
        f"  faults     {sum(faults.values())} {faults}"
        + ("" if disk else " (disk faults skipped: not root)")
        + f"\n  files      {f['cb_files']} College Board (+ {f['cb_files']} txt twins skipped), "
        f"{f['exports']} Encoura exports; {f['mails']} emails, {f['mails_lost']} lost\n"
        f"  seen       {f['local_failures']} local failures retried, {f['recovered']} exports "
        "recovered from cut-off passes\n"
        f"  by hand    {f['by_hand_fetch']} fetch, {f['by_hand_sync']} sync "
        f"({f['by_hand_failed']} crashed)\n"
        f"  late       {f['overdue']} delivery.overdue, {f['recovered_late']} delivery.recovered\n"
        f"  retention  {f['fault_age']} files aged, {f['retention_removed']} removed at the end\n"
        f"  settled in {settle_s:.1f} s after the last fault"
    )
