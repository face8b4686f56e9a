"""Real faults between the daemon and its IMAP server — cut, black hole, BYE, SIGKILL, a
server without IDLE, a flood of IDLE cycles: nothing hangs, nothing is missed, nothing is
done twice.

The daemon talks to the server through a FaultProxy on loopback; timeouts are short so
that each fault plays out in seconds. (A Dovecot stop/start during IDLE is pinned by
test_e2e.py::test_server_restart_reconnects_and_catches_up.)
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from tests.conftest import dovecot_or_skip
from tests.standins.proxy import FaultProxy
from tests.support import assert_no_secrets, files_under, wait_until

pytestmark = pytest.mark.e2e
Start = Callable[..., DaemonProcess]

READ_TIMEOUT_S = 4.0
FAST = f"  read_timeout: {READ_TIMEOUT_S:g}s\n  connect_timeout: 2s\n"
# What a busy machine may add to a timer's moment (the daemon and the servers wait for a
# core); still well below the next longer wait a bug would mean (twice the read timeout).
SLACK_S = 2.5


@pytest.fixture
def proxy(imap_server: Any) -> Iterator[FaultProxy]:
    with FaultProxy(imap_server.host, imap_server.port, transcript=True) as running:
        yield running


def via(proxy: FaultProxy) -> dict[str, Any]:
    return {"imap_address": (proxy.host, proxy.port), "extra_imap": FAST}


def post(sim: CollegeBoardSimulator, name: str) -> bytes:
    data = f"Last,First,Total\r\nDoe,{name},1400\r\n".encode()
    sim.publish(name, data)
    return data


def deliver(server: Any, folder: str, name: str) -> None:
    with server.client() as client:
        client.append(folder, mail.notification(name))


def landed(tmp_path: Path) -> dict[str, bytes]:
    """Every file in the College Board folder, hidden `.part` files included."""
    return files_under(tmp_path / "files" / "collegeboard")


def assert_each_once(
    daemons: list[DaemonProcess],
    sim: CollegeBoardSimulator,
    tmp_path: Path,
    files: dict[str, bytes],
    url_requests: dict[str, int] | None = None,
) -> None:
    """Every file landed once with its bytes, one `delivery.downloaded` each, no mail
    handled twice, and each URL asked for once (or as `url_requests` says)."""
    assert landed(tmp_path) == files
    downloaded = Counter(e["filename"] for d in daemons for e in d.named("delivery.downloaded"))
    assert downloaded == Counter(list(files))
    for daemon in daemons:
        uids = [e["uid"] for e in daemon.named("notification.received")]
        assert len(uids) == len(set(uids)), f"a mail was handled twice: {uids}"
    assert Counter(sim.stats.file_url_names) == Counter(url_requests or list(files))


def back_in_idle(proxy: FaultProxy) -> None:
    """Wait until the watcher has handed its mail over and idles again (through `proxy`)."""
    wait_until(proxy.idling, timeout=30)


def first_file_lands(
    daemon: DaemonProcess, sim: Any, server: Any, folder: str, proxy: FaultProxy
) -> dict[str, bytes]:
    """One notification end to end: the watcher is then in its IDLE loop."""
    name = "4300_20261121_080000.csv"
    files = {name: post(sim, name)}
    deliver(server, folder, name)
    daemon.wait_event("delivery.downloaded", filename=name)
    back_in_idle(proxy)
    return files


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_cut_mid_idle_reconnects_and_catches_up(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
    reset: bool,
) -> None:
    """The connection is closed (FIN or RST) mid-IDLE and stays down while mail arrives:
    the daemon notices at once, reconnects, and the mail from the outage lands once."""
    daemon = start_daemon(**via(proxy))
    files = first_file_lands(daemon, cb_sim, imap_server, imap_folder, proxy)
    proxy.cut(reset=reset)
    cut_at = time.monotonic()
    proxy.stop()  # and refuse new connections for a while
    event = daemon.wait_event("imap.disconnected", timeout=5)
    assert event["_at"] - cut_at < 1.5
    name = "4300_20261121_081500.csv"
    files[name] = post(cb_sim, name)
    deliver(imap_server, imap_folder, name)
    proxy.start()
    daemon.wait_event("delivery.downloaded", filename=name, timeout=30)
    assert len(daemon.named("imap.connected")) == 2
    assert daemon.stop() == 0
    assert_each_once([daemon], cb_sim, tmp_path, files)


def test_responses_split_mid_line_keep_the_connection(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    """Every server response reaches the daemon in two parts, cut mid-line: IDLE pushes
    and command answers are read whole, and the one connection stays up."""
    proxy.split_gap_s = 0.02
    daemon = start_daemon(**via(proxy))
    files = first_file_lands(daemon, cb_sim, imap_server, imap_folder, proxy)
    name = "4300_20261121_082000.csv"
    files[name] = post(cb_sim, name)
    deliver(imap_server, imap_folder, name)
    daemon.wait_event("delivery.downloaded", filename=name)
    assert daemon.stop() == 0
    assert not daemon.named("imap.disconnected")
    assert len(daemon.named("imap.connected")) == 1
    assert_each_once([daemon], cb_sim, tmp_path, files)


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
def test_blackhole_mid_idle_is_noticed_within_read_timeout(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    """The peer goes silent mid-IDLE (no bytes, no reset), new connections too: the
    daemon drops the connection within read_timeout; once the path is back, the mail
    sent into the silence lands once."""
    daemon = start_daemon(**via(proxy))
    files = first_file_lands(daemon, cb_sim, imap_server, imap_folder, proxy)
    silenced = time.monotonic()
    proxy.blackhole(new=True)
    name = "4300_20261121_083000.csv"
    files[name] = post(cb_sim, name)
    deliver(imap_server, imap_folder, name)
    event = daemon.wait_event("imap.disconnected", timeout=READ_TIMEOUT_S + 10)
    detected = event["_at"] - silenced
    print(f"black hole noticed after {detected:.2f}s (read_timeout {READ_TIMEOUT_S:g}s)")
    assert detected < READ_TIMEOUT_S + SLACK_S
    assert "read_timeout" in event["error"]
    # Reconnects meet the same silence and give up after connect_timeout.
    daemon.wait_for(
        lambda e: e.get("event") == "imap.disconnected",
        start=daemon.events.index(event) + 1,
        timeout=15,
    )
    assert not daemon.named("delivery.downloaded", filename=name)
    restored = time.monotonic()
    proxy.restore()
    landed_event = daemon.wait_event("delivery.downloaded", filename=name, timeout=30)
    print(f"mail from the black hole landed {landed_event['_at'] - restored:.2f}s after restore")
    assert daemon.stop() == 0
    assert_each_once([daemon], cb_sim, tmp_path, files)


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)  # the proxy is the fault
def test_blackholed_connection_is_replaced(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    """Only the open connection goes silent (a firewall forgot it): a new connection
    replaces it within read_timeout plus the first backoff, and catches up."""
    daemon = start_daemon(**via(proxy))
    files = first_file_lands(daemon, cb_sim, imap_server, imap_folder, proxy)
    silenced = time.monotonic()
    proxy.blackhole()
    name = "4300_20261121_084500.csv"
    files[name] = post(cb_sim, name)
    deliver(imap_server, imap_folder, name)
    daemon.wait_event("imap.disconnected", timeout=READ_TIMEOUT_S + 10)
    landed_event = daemon.wait_event("delivery.downloaded", filename=name, timeout=20)
    replaced = daemon.named("imap.connected")[-1]["_at"] - silenced
    print(
        f"replaced after {replaced:.2f}s, mail landed after {landed_event['_at'] - silenced:.2f}s"
    )
    assert replaced < READ_TIMEOUT_S + 1.0 + SLACK_S  # + the first backoff (1 s)
    assert daemon.stop() == 0
    assert_each_once([daemon], cb_sim, tmp_path, files)


def test_bye_mid_idle_reconnects_and_loses_nothing(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    """The server says BYE mid-IDLE and hangs up, twice: each time the daemon reconnects
    after the first backoff step (a new outage, not the old one continued) and handles
    the mail that arrived meanwhile, once."""
    daemon = start_daemon(**via(proxy))
    files = first_file_lands(daemon, cb_sim, imap_server, imap_folder, proxy)
    for name in ("4300_20261121_090000.csv", "4300_20261121_091500.csv"):
        proxy.say_bye()
        files[name] = post(cb_sim, name)
        deliver(imap_server, imap_folder, name)
        daemon.wait_event("delivery.downloaded", filename=name, timeout=20)
        back_in_idle(proxy)
    assert daemon.stop() == 0
    assert ["BYE" in e["error"] for e in daemon.named("imap.disconnected")] == [True, True]
    assert [e["delay_s"] for e in daemon.named("imap.reconnecting")] == [1.0, 1.0]
    assert_each_once([daemon], cb_sim, tmp_path, files)


def test_server_dropping_every_session_before_idle_meets_a_growing_backoff(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    """Each session selects and catches up, then the connection drops as IDLE is sent: no
    cycle is healthy, so the backoff grows (no 1-second loop against a sick server); once
    a session settles in IDLE, the next outage starts again from the first step."""
    first = "4300_20261121_094500.csv"
    files = {first: post(cb_sim, first)}
    deliver(imap_server, imap_folder, first)
    proxy.cut_when_client_sends = b" IDLE\r\n"
    daemon = start_daemon(**via(proxy))
    daemon.wait_for(lambda e: e.get("event") == "imap.reconnecting" and e["attempt"] == 3)
    proxy.cut_when_client_sends = None
    name = "4300_20261121_095000.csv"
    files[name] = post(cb_sim, name)
    deliver(imap_server, imap_folder, name)
    daemon.wait_event("delivery.downloaded", filename=name, timeout=20)
    back_in_idle(proxy)  # a session settled in IDLE: the next outage is a new one
    before_bye = len(daemon.events)
    proxy.say_bye()
    daemon.wait_for(lambda e: e.get("event") == "imap.reconnecting", start=before_bye)
    retries = daemon.named("imap.reconnecting")
    assert [e["attempt"] for e in retries] == [1, 2, 3, 1]
    assert all(1.0 <= e["delay_s"] <= 2 ** (e["attempt"] - 1) for e in retries)
    assert daemon.stop() == 0
    assert_each_once([daemon], cb_sim, tmp_path, files)


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
def test_sigkill_with_work_in_every_state_redoes_only_the_unfinished(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
) -> None:
    """SIGKILL with one file landed, one mid-download and one mail not yet seen: the next
    start finishes the second, handles the third and repeats nothing landed."""
    done, cut, later = (f"4300_20261121_10{i}000.csv" for i in range(3))
    files = {done: post(cb_sim, done), later: post(cb_sim, later)}
    cb_sim.publish_generated(cut, 4 * 1024 * 1024, seed=5)
    daemon = start_daemon()
    deliver(imap_server, imap_folder, done)
    daemon.wait_event("delivery.downloaded", filename=done)
    cb_sim.throttle_bps = 1024 * 1024
    deliver(imap_server, imap_folder, cut)
    part = tmp_path / "files" / "collegeboard" / f".{cut}.part"
    wait_until(lambda: part.exists() and part.stat().st_size > 0)  # the download started
    daemon.kill()
    cb_sim.throttle_bps = None
    deliver(imap_server, imap_folder, later)
    deliver(imap_server, imap_folder, done)  # a repeated notification of a landed file

    again = start_daemon()
    again.wait_event("delivery.downloaded", filename=cut)
    again.wait_event("delivery.downloaded", filename=later)
    again.wait_event("delivery.skipped", filename=done, reason="duplicate")
    assert again.stop() == 0
    assert again.named("delivery.resumed", filename=cut)
    files[cut] = landed(tmp_path)[cut]
    assert hashlib.sha256(files[cut]).hexdigest() == cb_sim.sha256_of(cut)
    # The killed download asked for its URL once more; nothing else was asked twice.
    assert_each_once([daemon, again], cb_sim, tmp_path, files, {done: 1, cut: 2, later: 1})


NO_IDLE = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE NAMESPACE UIDPLUS UNSELECT CHILDREN"


def test_server_without_idle_is_polled_with_noop(
    tmp_path: Path, cb_sim: CollegeBoardSimulator
) -> None:
    """A server that does not offer IDLE is polled every poll_interval with NOOP and a
    UID SEARCH; a mail lands within one interval."""
    poll_s = 2.0
    server = dovecot_or_skip(tmp_path / "dovecot-noidle")
    server.capability = NO_IDLE
    with server, FaultProxy(server.host, server.port, transcript=True) as proxy:
        config = write_config(
            tmp_path,
            cb_sim,
            server,
            imap_address=(proxy.host, proxy.port),
            extra_imap=f"{FAST}  poll_interval: {poll_s:g}s\n",
        )
        daemon = DaemonProcess(config)
        try:
            daemon.wait_event("daemon.ready")
            wait_until(lambda: b"NOOP" in proxy.sent)  # polling: the mail comes between polls
            name = "4300_20261121_110000.csv"
            files = {name: post(cb_sim, name)}
            sent = time.monotonic()
            deliver(server, "INBOX", name)
            event = daemon.wait_event("delivery.downloaded", filename=name, timeout=15)
            assert event["_at"] - sent < poll_s + 1.0
        finally:
            assert daemon.stop() == 0
    assert b"NOOP" in proxy.sent
    assert b"IDLE" not in proxy.sent
    assert_no_secrets(daemon.lines, [server.password, cb_sim.password])
    assert_each_once([daemon], cb_sim, tmp_path, files)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_memory_stays_flat_over_many_idle_cycles(
    start_daemon: Start,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    tmp_path: Path,
    proxy: FaultProxy,
) -> None:
    """A hundred IDLE cycles under a flood of flag changes and new mail: RSS grows by less
    than 10 MB over the 75 after warm-up (counted, however long they take)."""
    daemon = start_daemon(
        imap_address=(proxy.host, proxy.port), extra_imap="  idle_timeout: 50ms\n"
    )
    stop = threading.Event()

    def flood() -> None:
        with imap_server.client() as client:
            client.select_folder(imap_folder)
            i = 0
            while not stop.is_set():
                client.append(
                    imap_folder,
                    mail.marketing() if i % 5 else mail.notification(f"4300_20261122_{i:06d}.csv"),
                )
                uids = client.search(["ALL"])[-50:]
                client.add_flags(uids, [b"\\Flagged"])
                client.remove_flags(uids, [b"\\Flagged"])
                i += 1

    for i in range(0, 10_000, 5):
        post(cb_sim, f"4300_20261122_{i:06d}.csv")
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()

    def cycles() -> int:
        return bytes(proxy.sent).count(b"DONE\r\n")

    try:
        wait_until(lambda: cycles() >= 25, timeout=120)  # imports done, caches, pools filled
        before, cycles_before = _rss_kib(daemon.proc.pid), cycles()
        wait_until(lambda: cycles() >= cycles_before + 75, timeout=240)
        after, counted = _rss_kib(daemon.proc.pid), cycles() - cycles_before
    finally:
        stop.set()
        thread.join(10)
    print(f"RSS {before / 1024:.1f} → {after / 1024:.1f} MB over {counted} IDLE cycles")
    assert after - before < 10 * 1024
    assert daemon.stop() == 0
