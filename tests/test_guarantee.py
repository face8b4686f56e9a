"""The guarantee end to end, between the parts: every announced file reaches every
destination or a person is told. The real daemon, a real sshd, the sandbox vendors."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.cli import main
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from scorefetch.sandbox.imapserver import ImapServer
from scorefetch.sandbox.ports import free_port
from scorefetch.sandbox.sshd import forward_config, new_ed25519_key
from tests.standins.proxy import FaultProxy
from tests.support import wait_until

pytestmark = pytest.mark.e2e
_folders = itertools.count(1)


FOLDER = ["INBOX"]  # this test's own folder (the imap_folder fixture), set per test


@pytest.fixture
def imap_server(pymap_server: ImapServer) -> ImapServer:
    return pymap_server


@pytest.fixture(autouse=True)
def own_folder(imap_folder: str) -> None:
    """Each test reads and writes a fresh folder: the session's pymap is shared."""
    FOLDER[0] = imap_folder


@pytest.fixture
def enc_sim() -> Iterator[EncouraSimulator]:
    with EncouraSimulator() as sim:
        yield sim


@pytest.fixture
def remote_dir() -> str:
    return f"g{os.getpid()}x{next(_folders)}/{{vendor}}"


def configure(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap: ImapServer,
    sshd: Any,
    remote_dir: str,
    *,
    extra: str = "",
    forward: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    """A sandbox config on this test's own mail folder (FOLDER), plus `forward` and `extra`."""
    path = write_config(tmp_path, cb_sim, imap, imap_folder=FOLDER[0], **config)
    with path.open("a") as out:
        if forward is not None:
            out.write(forward_config(sshd, tmp_path, remote_dir=remote_dir, **forward))
        out.write(extra)
    return path


def remote(sshd: Any, remote_dir: str, vendor: str = "collegeboard") -> Path:
    folder: Path = sshd.root / remote_dir.format(vendor=vendor)
    return folder


@contextlib.contextmanager
def running(path: Path, ready: bool = True) -> Iterator[DaemonProcess]:
    """The real daemon on `path` (READY awaited), stopped cleanly (exit 0) at the end."""
    daemon = DaemonProcess(path)
    try:
        if ready:
            daemon.wait_event("daemon.ready", timeout=30)
        yield daemon
    finally:
        assert daemon.stop() == 0


def deliver(server: Any, raw: bytes) -> None:
    with server.client() as client:
        client.append(FOLDER[0], raw)


def test_fetch_and_sync_while_the_daemon_runs_reach_the_sftp_server(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file landed by `fetch` (and one by `sync`) in another process is uploaded by the
    running daemon within seconds: the ledger row is the work, whoever wrote it."""
    path = configure(tmp_path, cb_sim, imap_server, sshd_server, remote_dir, forward={})
    with running(path) as daemon:
        cb_sim.publish("4300_20261201_090000.csv", b"a,b\r\n1,2\r\n")
        assert main(["fetch", "-c", str(path), "collegeboard", "4300_20261201_090000.csv"]) == 0
        assert "queued for slate" in capsys.readouterr().out
        daemon.wait_event("forward.uploaded", filename="4300_20261201_090000.csv", timeout=30)
        cb_sim.publish("4300_20261201_091500.csv", b"c,d\r\n")
        assert main(["sync", "-c", str(path), "--vendor", "collegeboard"]) == 0
        daemon.wait_event("forward.uploaded", filename="4300_20261201_091500.csv", timeout=30)
    folder = remote(sshd_server, remote_dir)
    assert (folder / "4300_20261201_090000.csv").read_bytes() == b"a,b\r\n1,2\r\n"
    assert (folder / "4300_20261201_091500.csv").read_bytes() == b"c,d\r\n"


def test_a_link_reset_mid_upload_is_retried_until_the_file_is_there(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """The connection is reset while bytes flow: forward.failed will_retry=true, recorded in
    the ledger, and the next round lands the whole file with no restart."""
    data = os.urandom(32 * 1024 * 1024)
    cb_sim.publish("4300_20261201_100000.csv", data)
    folder = remote(sshd_server, remote_dir)
    with FaultProxy(sshd_server.host, sshd_server.port) as proxy:
        forward = {"port": proxy.port, "retry_schedule": ("1s", "1s")}
        path = configure(tmp_path, cb_sim, imap_server, sshd_server, remote_dir, forward=forward)
        with running(path) as daemon:
            deliver(imap_server, mail.notification("4300_20261201_100000.csv"))
            wait_until(lambda: any(p.stat().st_size > 0 for p in folder.glob(".4300_*.part")), 60)
            proxy.cut(reset=True)
            failed = daemon.wait_event("forward.failed", filename="4300_20261201_100000.csv")
            assert failed["will_retry"] is True and failed["kind"] == "transient"
            daemon.wait_event("forward.uploaded", filename="4300_20261201_100000.csv", timeout=90)
    assert (folder / "4300_20261201_100000.csv").read_bytes() == data
    assert [p.name for p in folder.iterdir()] == ["4300_20261201_100000.csv"]


@pytest.mark.parametrize("outage", ["closed_port", "wrong_password"])
def test_a_mailbox_outage_stops_neither_the_listing_nor_the_poller(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    enc_sim: EncouraSimulator,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
    outage: str,
) -> None:
    """IMAP on a closed port, or refusing the password: READY=1 all the same, and both
    other triggers (College Board's listing, Encoura's poll) land their files."""
    cb_sim.publish("4300_20261201_110000.csv", b"listed,file\r\n")
    enc_sim.add_export("score-reporter", "act_scores.csv", b"act,1\r\n")
    address = ("127.0.0.1", free_port()) if outage == "closed_port" else None
    path = configure(
        tmp_path,
        cb_sim,
        imap_server,
        sshd_server,
        remote_dir,
        imap_address=address,
        poll_interval="1h",
        encoura=enc_sim,
    )
    if outage == "wrong_password":
        (tmp_path / "credentials" / "imap_password").write_text("not-the-password\n")
    with running(path) as daemon:
        daemon.wait_event("delivery.downloaded", filename="4300_20261201_110000.csv", timeout=30)
        daemon.wait_event("delivery.downloaded", filename="act_scores.csv", timeout=30)
        assert not daemon.named("imap.connected")
        if outage == "wrong_password":
            daemon.wait_event("auth.failing", vendor="imap", timeout=30)


def test_a_listing_that_refuses_the_password_is_an_auth_alarm_without_mail(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """College Board answering 401 to the listing while no mail arrives: auth.failing once
    (the hook hears it), not a warning only."""
    path = configure(tmp_path, cb_sim, imap_server, sshd_server, remote_dir, poll_interval="1h")
    (tmp_path / "credentials" / "collegeboard_password").write_text("expired-password\n")
    with running(path, ready=False) as daemon:
        failing = daemon.wait_event("auth.failing", vendor="collegeboard", timeout=30)
        assert "expired-password" not in str(failing)


def test_an_unpinned_host_key_is_alerted_at_once_and_retries_go_on(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """A host key that is not pinned, with a schedule of hours: auth.failing for the
    destination at the first refusal, not after the whole schedule; the row stays due."""
    _, other = new_ed25519_key()
    forward = {"host_key": other, "retry_schedule": ("1h", "6h")}
    path = configure(tmp_path, cb_sim, imap_server, sshd_server, remote_dir, forward=forward)
    cb_sim.publish("4300_20261201_120000.csv", b"a\r\n")
    with running(path) as daemon:
        deliver(imap_server, mail.notification("4300_20261201_120000.csv"))
        failing = daemon.wait_event("auth.failing", vendor="forward.slate", timeout=30)
        assert sshd_server.host_key_fingerprint in failing["error"]
        failed = daemon.wait_event("forward.failed", filename="4300_20261201_120000.csv")
        assert failed["will_retry"] is True and failed["retry_in_s"] == 3600.0


def test_a_late_file_is_overdue_once_then_recovered_once(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """Announced but not posted for longer than overdue_after: delivery.overdue once (stage
    download); posted, it lands and reaches the destination: delivery.recovered once."""
    path = configure(
        tmp_path,
        cb_sim,
        imap_server,
        sshd_server,
        remote_dir,
        forward={},
        retry_schedule=("1s", "1s", "1s", "3s", "3s", "3s", "3s"),
        extra="alerts:\n  overdue_after: 2s\n",
    )
    with running(path) as daemon:
        deliver(imap_server, mail.notification("4300_20261201_130000.csv"))
        overdue = daemon.wait_event("delivery.overdue", filename="4300_20261201_130000.csv")
        assert overdue["stage"] == "download" and overdue["announced_at"]
        cb_sim.publish("4300_20261201_130000.csv", b"late\r\n")
        daemon.wait_event("forward.uploaded", filename="4300_20261201_130000.csv", timeout=60)
        recovered = daemon.wait_event("delivery.recovered", filename="4300_20261201_130000.csv")
        assert recovered["late_s"] >= 2
    assert len(daemon.named("delivery.overdue", filename="4300_20261201_130000.csv")) == 1
    assert len(daemon.named("delivery.recovered", filename="4300_20261201_130000.csv")) == 1


def test_check_config_refuses_two_product_keys_in_one_remote_folder(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    enc_sim: EncouraSimulator,
    sshd_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`remote_dir: /incoming/{vendor}` with two Encoura product keys would send two exports
    of one name to one place: refused with the fix named (exit 78)."""
    path = configure(
        tmp_path,
        cb_sim,
        imap_server,
        sshd_server,
        "incoming/{vendor}",
        forward={},
        encoura=enc_sim,
        product_keys=("score-reporter", "prospects"),
    )
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert "encoura/score-reporter and encoura/prospects" in err and "{product_key}" in err


def test_check_config_refuses_two_vendors_in_one_remote_folder(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    enc_sim: EncouraSimulator,
    sshd_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`remote_dir: /incoming` for every vendor would put College Board's and Encoura's
    files in one folder, where two of one name meet: refused (exit 78), `{vendor}` named;
    with `{vendor}` and one product key the same configuration passes."""
    shared = configure(
        tmp_path,
        cb_sim,
        imap_server,
        sshd_server,
        "incoming",
        forward={},
        encoura=enc_sim,
        product_keys=("score-reporter",),
    )
    assert main(["check-config", "-c", str(shared)]) == 78
    err = capsys.readouterr().err
    assert "collegeboard" in err and "encoura/score-reporter" in err and "{vendor}" in err
    apart = configure(
        tmp_path,
        cb_sim,
        imap_server,
        sshd_server,
        "incoming/{vendor}",
        forward={},
        encoura=enc_sim,
        product_keys=("score-reporter",),
    )
    assert main(["check-config", "-c", str(apart)]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_disk_full_for_longer_than_overdue_after_reaches_a_person_once(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """The download folder is full: a local failure is retried for ever and never 'given
    up', so only overdue_after tells a person — once, stage download; freed, the file
    lands and delivery.recovered says so."""
    from tests.test_local_faults import tmpfs

    files = tmp_path / "files"
    with tmpfs(files, "256k"):
        (files / "ballast").write_bytes(b"\0" * (256 * 1024 - 4096 * 2))
        path = configure(
            tmp_path,
            cb_sim,
            imap_server,
            sshd_server,
            remote_dir,
            extra="alerts:\n  overdue_after: 3s\n",
        )
        cb_sim.publish("4300_20261201_140000.csv", os.urandom(64 * 1024))
        with running(path) as daemon:
            deliver(imap_server, mail.notification("4300_20261201_140000.csv"))
            failed = daemon.wait_event("delivery.failed", filename="4300_20261201_140000.csv")
            assert failed["kind"] == "local" and failed["will_retry"] is True
            overdue = daemon.wait_event("delivery.overdue", filename="4300_20261201_140000.csv")
            assert overdue["stage"] == "download" and "ENOSPC" in overdue["error"]
            (files / "ballast").unlink()
            daemon.wait_event(
                "delivery.downloaded", filename="4300_20261201_140000.csv", timeout=60
            )
            daemon.wait_event("delivery.recovered", filename="4300_20261201_140000.csv")
        assert len(daemon.named("delivery.overdue", filename="4300_20261201_140000.csv")) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_ledger_disk_reaches_a_person_once_and_loses_nothing(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
) -> None:
    """The state folder (the ledger) fills up while mail arrives: nothing can be recorded,
    so nothing moves on — `ledger.failing` once, through on_failure, and no notification
    called rejected; freed, `ledger.recovered`, and every file lands once."""
    from tests.test_local_faults import tmpfs

    told = tmp_path / "told.txt"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$SCOREFETCH_EVENT" >> {told}\n')
    hook.chmod(0o755)
    state = tmp_path / "state"
    names = [f"4300_20261202_0{n}0000.csv" for n in range(3)]
    for name in names:
        cb_sim.publish(name, name.encode())
    with tmpfs(state, "4m"):
        hooks = f'hooks:\n  on_failure: ["{hook}"]\n  on_delivery: ["{hook}"]\n  timeout: 10s\n'
        path = configure(tmp_path, cb_sim, imap_server, sshd_server, remote_dir, extra=hooks)
        with running(path) as daemon:
            deliver(imap_server, mail.notification(names[0]))
            daemon.wait_event("delivery.downloaded", filename=names[0])
            with contextlib.suppress(OSError), (state / "ballast").open("wb") as out:
                while True:
                    out.write(b"\0" * 65536)
            deliver(imap_server, mail.notification(names[1]))
            failing = daemon.wait_event("ledger.failing", timeout=60)
            assert "full" in failing["error"]
            (state / "ballast").unlink()
            deliver(imap_server, mail.notification(names[2]))
            for name in names[1:]:
                daemon.wait_event("delivery.downloaded", filename=name, timeout=120)
            daemon.wait_event("ledger.recovered", timeout=120)
        assert len(daemon.named("ledger.failing")) == 1
        assert not daemon.named("notification.rejected", reason="internal_error")
        downloaded = [e["filename"] for e in daemon.named("delivery.downloaded")]
        assert sorted(downloaded) == names
        wait_until(lambda: "ledger.recovered" in told.read_text(), timeout=30)
        assert told.read_text().count("ledger.failing") == 1


def test_fetch_of_a_file_the_daemon_is_downloading_waits_for_it(
    cb_sim: CollegeBoardSimulator,
    imap_server: ImapServer,
    sshd_server: Any,
    remote_dir: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`fetch NAME` while the daemon holds NAME's row (mid-download): no second download;
    fetch says so, waits for the daemon's outcome and exits 0 with the file."""
    data = os.urandom(3 * 1024 * 1024)
    cb_sim.publish("4300_20261201_150000.csv", data)
    cb_sim.throttle_bps = 1024 * 1024
    path = configure(tmp_path, cb_sim, imap_server, sshd_server, remote_dir)
    folder = tmp_path / "files" / "collegeboard"
    with running(path) as daemon:
        deliver(imap_server, mail.notification("4300_20261201_150000.csv"))
        wait_until(lambda: any(folder.glob(".4300_20261201_150000.csv*")), 30)
        assert main(["fetch", "-c", str(path), "collegeboard", "4300_20261201_150000.csv"]) == 0
        daemon.wait_event("delivery.downloaded", filename="4300_20261201_150000.csv")
    out = capsys.readouterr().out
    assert "the running daemon is downloading it" in out and "3145728 bytes" in out
    assert (folder / "4300_20261201_150000.csv").read_bytes() == data
    assert cb_sim.stats.downloads_started == 1
