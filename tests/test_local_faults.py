"""Local faults — a full disk, a file-size limit, a read-only folder, too many open files, a
folder that refuses hard links, a 255-byte name — are recorded, retried, and land once the
cause is gone, without a restart. Real file systems (a small tmpfs, as root), real limits
(setrlimit), the real simulator over loopback."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core import localfs
from scorefetch.core.answers import json_answer
from scorefetch.core.deliveries import retry_delay
from scorefetch.core.downloads import Landed, fetch_to_file
from scorefetch.core.errors import Failure, LocalError, VendorError, local_errno
from scorefetch.core.http import HttpError, build_session
from scorefetch.core.ledger import Ledger
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from tests.support import LogLines, files_under, fresh_python, wait_until

ROOT = os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "1m", options: str = "") -> Iterator[Path]:
    """A small tmpfs at `where`, always unmounted again (root only)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0700" + (f",{options}" if options else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


needs_root = pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")


def client(sim: CollegeBoardSimulator, **overrides: object) -> CollegeBoard:
    config = CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "download_hosts": [sim.download_host],
            "retry_schedule": [0.3, 0.3],
            **overrides,
        }
    )
    return CollegeBoard(config, build_session())


def fetch(sim: CollegeBoardSimulator, name: str, folder: Path) -> Landed:
    cb = client(sim)
    return fetch_to_file(
        cb.session, cb.file_url(name), folder, name, hosts=[sim.download_host], deadline_s=60
    )


def visible(folder: Path) -> dict[str, bytes]:
    """Every file in `folder`, hidden ones included."""
    return files_under(folder)


def test_local_failures_are_retried_forever_on_the_schedule() -> None:
    """A local failure never gives up: soon first, then the schedule, then its last step."""
    schedule = (30.0, 120.0)
    delays = [retry_delay(Failure.LOCAL, n, schedule) for n in range(6)]
    assert delays == [5.0, 30.0, 120.0, 120.0, 120.0, 120.0]
    assert retry_delay(Failure.INTERNAL, 0, schedule) == 30.0
    assert retry_delay(Failure.INTERNAL, 2, schedule) is None


def test_long_names_get_a_temporary_name_that_fits() -> None:
    """`.NAME.part` of a 250–255-byte name is shortened with a hash, distinct per name and n."""
    for length in range(240, 256):
        name = "é" * ((length - 4) // 2) + "x" * ((length - 4) % 2) + ".csv"
        assert len(name.encode()) == length
        parts = {localfs.part_name(name, n) for n in range(3)}
        assert len(parts) == 3
        for part in parts:
            assert len(part.encode()) <= localfs.NAME_MAX
            assert part.startswith(".") and part.endswith(".part")
    assert localfs.part_name("a" * 250 + ".csv") != localfs.part_name("a" * 249 + "b.csv")
    assert localfs.part_name("short.csv") == ".short.csv.part"


def test_a_255_byte_name_lands(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """A vendor name of 255 bytes lands under that name (its temporary name was too long)."""
    name = "4300_" + "9" * 246 + ".csv"
    assert len(name.encode()) == 255
    cb_sim.publish(name, b"long,name\r\n")
    landed = fetch(cb_sim, name, tmp_path / "files")
    assert landed.path.name == name
    assert visible(tmp_path / "files") == {name: b"long,name\r\n"}


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EXDEV])
@pytest.mark.parametrize("renameat2", [True, False])
def test_folder_refusing_hard_links_still_lands_without_replacing(
    cb_sim: CollegeBoardSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    renameat2: bool,
) -> None:
    """Where os.link is refused (SMB/CIFS), the file is renamed into place, and a different
    file already there keeps its name. (No such file system here: os.link is made to fail.)"""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(localfs.os, "link", refuse)
    if not renameat2:
        monkeypatch.setattr(localfs, "_libc_renameat2", lambda: None)
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "taken.csv").write_bytes(b"someone else's\r\n")
    cb_sim.publish("taken.csv", b"ours\r\n")
    cb_sim.publish("free.csv", b"free\r\n")
    assert fetch(cb_sim, "free.csv", folder).path == folder / "free.csv"
    assert fetch(cb_sim, "taken.csv", folder).path == folder / "taken-1.csv"
    assert fetch(cb_sim, "taken.csv", folder).path == folder / "taken-1.csv"  # same bytes
    assert visible(folder) == {
        "free.csv": b"free\r\n",
        "taken.csv": b"someone else's\r\n",
        "taken-1.csv": b"ours\r\n",
    }


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def no_free_descriptors(spare: int = 0) -> Iterator[None]:
    """Every file descriptor the (lowered) limit allows is taken, but `spare`. The cyclic
    garbage collector is held off meanwhile: an earlier test's socket or file left in a
    reference cycle, collected at some allocation inside the block, would free a
    descriptor (CI saw a connection get one and be refused instead of failing EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    highest = max(int(fd.name) for fd in Path("/proc/self/fd").iterdir())
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        for _ in range(spare):
            os.close(taken.pop())
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if collecting:
            gc.enable()


def _state(ledger: Ledger, key: str) -> str | None:
    row = ledger.get("collegeboard", key)
    return row.state if row else None


def _open_connections(port: int) -> list[str]:
    """TCP connections to or from local `port` not yet closed by both sides (ESTABLISHED,
    or CLOSE_WAIT: the peer closed, the owner has not), from /proc/net/tcp."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        ports = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
        if port in ports and state in ("01", "08"):
            found.append(line)
    return found


def _full(folder: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def fill() -> Iterator[None]:
        with tmpfs(folder, "256k"):
            with contextlib.suppress(OSError), (folder / "ballast").open("wb") as out:
                while True:
                    out.write(b"\0" * 65536)
            yield

    return fill()


def _read_only(folder: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def ro() -> Iterator[None]:
        with tmpfs(folder, "1m", "ro"):
            yield

    return ro()


def _not_a_folder(folder: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def blocked() -> Iterator[None]:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_bytes(b"a file where the folder should be")
        yield
        folder.unlink()

    return blocked()


FAULTS: dict[str, tuple[Callable[[Path], contextlib.AbstractContextManager[None]], str, bool]] = {
    "full disk": (_full, "ENOSPC", True),
    "read-only": (_read_only, "EROFS", True),
    "file size limit": (lambda _f: file_size_limit(100_000), "EFBIG", False),
    "no descriptors": (lambda _f: no_free_descriptors(), "EMFILE", False),
    "not a folder": (_not_a_folder, "EEXIST", False),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_local_fault_is_a_local_error_leaving_nothing(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, fault: str
) -> None:
    """Each local fault is a LocalError naming its errno, with no partial file left."""
    make, code, root_only = FAULTS[fault]
    if root_only and not ROOT:
        pytest.skip("needs root for a tmpfs")
    folder = tmp_path / "files" / "collegeboard"
    cb_sim.publish("big.csv", b"x" * 600_000)
    cb = client(cb_sim)
    url = cb.file_url("big.csv")
    cb.session.close()
    # The simulator serves on threads of this process: the fault must not begin before
    # they have let go of the URL call's connection, or a descriptor freed meanwhile
    # gives the download a socket the server then has none to accept.
    ports = {urlsplit(cb_sim.base_url).port, urlsplit(url).port}
    wait_until(lambda: not any(_open_connections(p) for p in ports if p), timeout=30)
    with make(folder), pytest.raises(LocalError) as caught:
        fetch_to_file(
            cb.session, url, folder, "big.csv", hosts=[cb_sim.download_host], deadline_s=60
        )
    assert caught.value.kind == Failure.LOCAL
    assert code in str(caught.value)
    if folder.is_dir():
        assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def no_descriptor_scenario(tmp: Path) -> None:
    """The body of the next test, in a fresh interpreter: see there."""
    nowhere = "http://127.0.0.1:9/late.csv"  # discard: never reached
    with no_free_descriptors(), pytest.raises(HttpError) as raw:
        build_session().get(nowhere, timeout=5)
    assert local_errno(raw.value) == errno.EMFILE
    with no_free_descriptors(), pytest.raises(VendorError) as api:
        json_answer(build_session(), "POST", nowhere, "/late")
    assert api.value.kind == Failure.LOCAL
    assert "EMFILE" in str(api.value)
    folder = tmp / "files"
    folder.mkdir()
    session = build_session()
    with no_free_descriptors(spare=1), pytest.raises(LocalError) as caught:
        fetch_to_file(session, nowhere, folder, "late.csv", hosts=["127.0.0.1"], deadline_s=60)
    assert caught.value.errno == errno.EMFILE
    assert str(caught.value).startswith("download failed")  # the socket's, not the part's
    assert list(folder.iterdir()) == []


def test_no_descriptor_for_a_socket_is_ours_not_the_vendors(tmp_path: Path) -> None:
    """The part file opened, then the socket found no descriptor (another thread took the
    last one; CI saw it): EMFILE from a connection is a local fault, named, with nothing
    left, and a vendor API call says so in its kind. In a fresh interpreter: no thread
    there (a simulator's, an earlier test's) can free a descriptor meanwhile, and none
    does, since the socket is refused before any connect."""
    script = "import sys; from pathlib import Path; from tests.test_local_faults import "
    script += "no_descriptor_scenario as run; run(Path(sys.argv[1]))"
    fresh_python(script, str(tmp_path))


@needs_root
def test_full_disk_is_recorded_retried_and_lands_once_freed(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, log_lines: LogLines
) -> None:
    """ENOSPC: `delivery.failed` kind=local will_retry=true, the row `retrying` with the
    error; once space is freed the file lands by itself, once, with nothing partial."""
    root = tmp_path / "files"
    data = b"s" * 400_000
    cb_sim.publish("full.csv", data)
    with tmpfs(root, "512k"):
        ballast = root / "ballast"
        ballast.write_bytes(b"\0" * 300_000)
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        deliveries = CollegeBoardDeliveries(client(cb_sim), ledger, root)
        try:
            deliveries.announce(["full.csv"], source="notification")
            wait_until(lambda: bool(log_lines.events("delivery.failed")))
            failed = log_lines.events("delivery.failed")[0]
            assert failed["kind"] == "local" and failed["will_retry"] is True
            row = ledger.get("collegeboard", "full.csv")
            assert row is not None and row.state == "retrying" and "ENOSPC" in (row.error or "")
            wait_until(lambda: len(log_lines.events("delivery.failed")) >= 3)  # more rounds fail
            ballast.unlink()
            # The file is in place a moment before the ledger says so: wait for that.
            wait_until(lambda: _state(ledger, "full.csv") == "downloaded", timeout=30)
            assert visible(root / "collegeboard") == {"full.csv": data}
        finally:
            deliveries.close(5)
            ledger.close()
