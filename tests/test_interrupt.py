"""Ctrl-C: an interactive command exits 130 (128 + SIGINT) and leaves nothing partial;
`run` treats SIGINT as a clean stop (0)."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scorefetch.core import interrupt
from scorefetch.core.downloads import land
from scorefetch.core.errors import Failure, VendorError
from scorefetch.core.throttle import honouring_retry_after
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from tests.support import wait_until


@pytest.mark.e2e
def test_ctrl_c_in_fetch_exits_130_with_nothing_partial(
    cb_sim: CollegeBoardSimulator, pymap_server: Any, tmp_path: Path
) -> None:
    """SIGINT while `fetch` streams a slow file: exit 130, no file, no `.part`."""
    config = write_config(tmp_path, cb_sim, pymap_server)
    cb_sim.publish_generated("slow.csv", 8 * 1024 * 1024, seed=1)
    cb_sim.throttle_bps = 1024 * 1024
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scorefetch",
            "fetch",
            "-c",
            str(config),
            "collegeboard",
            "slow.csv",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    folder = tmp_path / "files" / "collegeboard"
    wait_until(lambda: proc.poll() is not None or (folder.is_dir() and any(folder.glob(".*.part"))))
    assert proc.poll() is None, "the fetch ended before its download started"
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=20)
    assert code == 130, (proc.stderr.read() if proc.stderr else b"")[-3000:]
    assert list(folder.iterdir()) == []


def test_a_ctrl_c_lost_where_it_was_raised_still_stops_the_download(tmp_path: Path) -> None:
    """Python raises KeyboardInterrupt wherever the main thread is; inside a finalizer it is
    printed and lost. The interrupt is noted too, and the download's next chunk raises it:
    no file, no part, however the first one was lost."""
    chunks_read: list[int] = []

    def chunks() -> Any:
        for n in range(100):
            chunks_read.append(n)
            if n == 3:
                with contextlib.suppress(KeyboardInterrupt):  # lost, as in a finalizer
                    interrupt._on_sigint(signal.SIGINT, None)
            yield b"x" * 1024

    try:
        with pytest.raises(KeyboardInterrupt):
            land(chunks(), tmp_path, "slow.csv")
    finally:
        interrupt._asked = False
    assert chunks_read == [0, 1, 2, 3]  # stopped at the chunk that came with it
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_stops_cleanly_on_sigint_and_sigterm_mid_download(
    cb_sim: CollegeBoardSimulator, pymap_server: Any, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C or systemd's SIGTERM while `run` streams a slow file: `daemon.stopping` names
    the signal, exit 0 (the download in flight gets its grace, so the file is there whole
    or not at all), no part file; if it was not finished, the next start lands it."""
    name = "4300_20261201_000001.csv"
    config = write_config(tmp_path, cb_sim, pymap_server, poll_interval="1s")
    cb_sim.publish_generated(name, 8 * 1024 * 1024, seed=2)
    cb_sim.throttle_bps = 1024 * 1024
    daemon = DaemonProcess(config)
    folder = tmp_path / "files" / "collegeboard"
    try:
        wait_until(lambda: folder.is_dir() and any(folder.glob(".*.part")), timeout=60)
        daemon.proc.send_signal(signum)
        assert daemon.proc.wait(timeout=60) == 0
    finally:
        daemon.kill()
    assert daemon.named("daemon.stopping")[0]["signal"] == signum.name
    assert not list(folder.glob(".*.part"))
    cb_sim.throttle_bps = None
    if not (folder / name).exists():
        again = DaemonProcess(config)
        try:
            again.wait_event("delivery.downloaded", filename=name, timeout=60)
        finally:
            assert again.stop() == 0
    assert [p.name for p in folder.iterdir()] == [name]
    assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == cb_sim.sha256_of(name)


def test_a_ctrl_c_lost_after_the_last_chunk_still_leaves_no_file(tmp_path: Path) -> None:
    """Lost at the end of the stream (where the response is released): the file is not
    placed, and no part is left."""

    def chunks() -> Any:
        yield b"x" * 1024
        with contextlib.suppress(KeyboardInterrupt):  # lost, as in a finalizer
            interrupt._on_sigint(signal.SIGINT, None)

    try:
        with pytest.raises(KeyboardInterrupt):
            land(chunks(), tmp_path, "end.csv")
        assert interrupt.asked()
    finally:
        interrupt._asked = False
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_lost_in_a_throttled_call_ends_the_retry_after_wait() -> None:
    """A 429 asks for a wait; a Ctrl-C lost during the call (in a finalizer) is raised
    before the wait begins, and the call is not made again."""
    calls: list[int] = []
    waits: list[float] = []

    def throttled() -> None:
        calls.append(1)
        with contextlib.suppress(KeyboardInterrupt):  # lost, as in a finalizer
            interrupt._on_sigint(signal.SIGINT, None)
        raise VendorError("HTTP 429", kind=Failure.TRANSIENT, status=429, retry_after=30.0)

    try:
        with pytest.raises(KeyboardInterrupt):
            honouring_retry_after(throttled, waits.append, "encoura", "/exports")
    finally:
        interrupt._asked = False
    assert calls == [1] and waits == []
