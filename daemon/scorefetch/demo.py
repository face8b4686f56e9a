"""`scorefetch demo`: the real daemon against the built-in sandbox, start to finish.

Starts the College Board and Encoura simulators and an embedded IMAP server
(pymap), writes a config for them, runs `scorefetch run` as a child process,
delivers a handful of notification emails, posts an Encoura export, and shows
the delivery events and the files that landed. Exit 0 only when exactly the
expected files arrived with the right bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from scorefetch import doctor, sources
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, Event, pretty, write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.sshd import SshServer, forward_config, sshd_binary
from scorefetch.sources import load as load_config

SHOWN = (
    "daemon.",
    "imap.connected",
    "imap.first_scan",
    "encoura.",
    "listing.",
    "notification.",
    "delivery.",
    "forward.",
)


def sample_csv(name: str, rows: int = 40) -> bytes:
    """A synthetic score file: made-up students, deterministic per name."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    lines = ["Last Name,First Name,Birth Date,SAT Total,SAT EBRW,SAT Math"]
    for i in range(rows):
        n = (seed + i * 7919) % 10007
        math, ebrw = 200 + n % 601 // 10 * 10, 200 + (n * 3) % 601 // 10 * 10
        lines.append(
            f"Student{n:05d},Demo{i:03d},2008-0{1 + i % 9}-1{i % 10},{math + ebrw},{ebrw},{math}"
        )
    return ("\r\n".join(lines) + "\r\n").encode()


def _show(event: Event) -> None:
    if str(event.get("event", "")).startswith(SHOWN):
        print(pretty(event), flush=True)


def run_demo(keep: bool = False) -> int:
    folder = Path(tempfile.mkdtemp(prefix="scorefetch-demo-"))
    try:
        with (
            CollegeBoardSimulator() as sim,
            EncouraSimulator() as enc,
            PymapServer() as imap,
            _sftp_server(folder) as sftp,
        ):
            return _demo(folder, sim, enc, imap, sftp)
    finally:
        if keep:
            print(f"\nkept the sandbox folder: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _sftp_server(folder: Path) -> Iterator[SshServer | None]:
    """A local OpenSSH server to forward to, when one is installed (else the step is
    skipped, and the demo says so)."""
    if sshd_binary() is None:
        print("forwarding: skipped, sshd is not installed (apt-get install openssh-server)")
        yield None
        return
    server = SshServer(folder / "sshd")
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        print(f"forwarding: skipped, the local sshd did not start ({exc})")
        yield None
        return
    try:
        yield server
    finally:
        server.stop()


def _demo(
    folder: Path,
    sim: CollegeBoardSimulator,
    enc: EncouraSimulator,
    imap: PymapServer,
    sftp: SshServer | None,
) -> int:
    day = datetime.now(UTC).strftime("%Y%m%d")
    lost, early, pair, later = (f"4300_{day}_{t}" for t in ("061500", "081502", "101544", "113020"))
    published: dict[str, bytes] = {}  # path under files/ -> bytes

    def post(*stems: str) -> None:
        for stem in stems:
            for ext in ("csv", "txt"):
                data = sample_csv(f"{stem}.{ext}")
                published[f"collegeboard/{stem}.{ext}"] = data
                sim.publish(f"{stem}.{ext}", data)

    # Posted before the daemon starts: one whose email was lost (the listing finds it),
    # one whose email is already waiting in the folder (the first scan finds it).
    post(lost, early)
    sim.publish("passwd", b"not for you\n")
    # Encoura: an export waiting to be listed (listing marks it Delivered at the vendor).
    export = f"SANDBOX-UNIVERSITY-{day}-score-reporter.csv"
    published[f"encoura/score-reporter/{export}"] = sample_csv(export)
    enc.add_export("score-reporter", export, published[f"encoura/score-reporter/{export}"])
    config = write_config(folder, sim, imap, poll_interval="1h", encoura=enc)
    if sftp is not None:
        with config.open("a") as out:
            out.write(forward_config(sftp, folder, remote_dir="incoming/{vendor}"))
        print(f"forwarding: to a local sshd at {sftp.host}:{sftp.port}, {sftp.root}/incoming")
    print(
        f"sandbox: College Board simulator at {sim.base_url}, Encoura simulator at "
        f"{enc.base_url}, IMAP (pymap) at {imap.host}:{imap.port}, "
        f"files under {folder / 'files'}\n"
    )
    imap.deliver(mail.notification(f"{early}.csv"))
    if not _doctor_passes(config):
        return 1
    daemon = DaemonProcess(config, echo=_show)
    expected = {f"collegeboard/{s}.csv" for s in (lost, early, pair, later)}
    expected.add(f"encoura/score-reporter/{export}")
    try:
        daemon.wait_event("daemon.ready", timeout=30)
        daemon.wait_event("listing.completed", timeout=30)
        post(pair, later)
        _mail_the_day(imap, pair, later)
        _wait_until_landed(daemon, expected, pair, forwarded=sftp is not None)
    except TimeoutError as exc:
        print(f"\ndemo FAILED: {exc}")
        daemon.stop()
        return 1
    code = daemon.stop()
    failed = _report(folder / "files", published, expected, code)
    if sftp is not None:
        failed |= _report_forwarded(sftp.root / "incoming", published, expected)
    print(
        f"\ndaemon exit code {code}; "
        + (
            "demo OK: every expected file landed once with the right bytes"
            + (" and reached the SFTP server" if sftp is not None else "")
            if not failed
            else "demo FAILED"
        )
    )
    return failed


def _doctor_passes(config: Path) -> bool:
    """`scorefetch doctor` against the sandbox, before the first start, as an IT person
    would run it."""
    print("scorefetch doctor (before the first start):")
    checks = [
        doctor.config_check(config, None),
        *doctor.run(load_config(config), sources=sources.SOURCES),
    ]
    print("\n".join(f"  {line}" for line in doctor.render(checks).splitlines()) + "\n")
    if not all(check.ok for check in checks):
        print("demo FAILED: doctor found a problem")
        return False
    return True


def _mail_the_day(imap: PymapServer, pair: str, later: str) -> None:
    """A csv/txt pair, marketing, an odd-looking notification, a spoof, a hostile name,
    a repeat."""
    for raw in (
        mail.notification(f"{pair}.csv"),
        mail.notification(f"{pair}.txt"),  # the twin: skipped, the office wants csv
        mail.marketing(),
        mail.notification(
            f"{later}.csv",
            html_encoding="base64",
            span=f"<SPAN ID='fileName'>\n {later}.csv\n</SPAN>",
        ),
        mail.notification("passwd", sender="College Board <scores@evil.example>"),
        mail.notification("../../etc/passwd"),
        mail.notification(f"{pair}.csv"),  # a repeated email: no second download
    ):
        imap.deliver(raw)


def _wait_until_landed(
    daemon: DaemonProcess, expected: set[str], pair: str, *, forwarded: bool
) -> None:
    """Every expected file downloaded (and uploaded), the repeat skipped; TimeoutError if
    not in time."""
    for path in sorted(expected):
        vendor, name = path.split("/")[0], path.rsplit("/", 1)[1]
        daemon.wait_event("delivery.downloaded", timeout=60, vendor=vendor, filename=name)
    daemon.wait_for(
        lambda e: e.get("reason") == "duplicate" and e.get("filename") == f"{pair}.csv",
        timeout=30,
    )
    if forwarded:
        for path in sorted(expected):
            daemon.wait_event("forward.uploaded", timeout=60, filename=path.rsplit("/", 1)[1])


def _report(root: Path, published: dict[str, bytes], expected: set[str], code: int) -> int:
    print(f"\nfiles that landed in {root}:")
    ok = code == 0
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    for name in found:
        data = (root / name).read_bytes()
        good = name in expected and data == published.get(name)
        ok &= good
        mode = oct((root / name).stat().st_mode & 0o777)
        print(
            f"  {'ok ' if good else 'BAD'} {name}  {len(data)} bytes  {mode}  "
            f"sha256 {hashlib.sha256(data).hexdigest()[:16]}…"
        )
    missing = expected - set(found)
    ok &= not missing
    for name in sorted(missing):
        print(f"  MISSING {name}")
    return 0 if ok else 1


def _report_forwarded(root: Path, published: dict[str, bytes], expected: set[str]) -> int:
    """What reached the SFTP server: each expected file once, by name, with its bytes."""
    print(f"\nfiles forwarded over SFTP to {root}:")
    ok = True
    wanted = {path.rsplit("/", 1)[1]: published[path] for path in expected}
    found = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    for path in found:
        good = wanted.get(path.name) == path.read_bytes()
        ok &= good
        print(f"  {'ok ' if good else 'BAD'} {path.relative_to(root)}  {path.stat().st_size} bytes")
    missing = set(wanted) - {p.name for p in found}
    for name in sorted(missing):
        print(f"  MISSING {name}")
    return 0 if ok and not missing else 1
