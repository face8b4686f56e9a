"""One file to a real OpenSSH server (internal-sftp on loopback): pinned host keys, the
dot-name then rename, never overwriting, and what a cut connection or a full disk leaves."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.config import SftpDestination
from scorefetch.core.errors import Failure, ScorefetchError
from scorefetch.forward import ForwardError
from scorefetch.forward.sftp import SftpTarget, _part_stem
from scorefetch.sandbox.sshd import new_ed25519_key
from tests.standins.proxy import FaultProxy
from tests.support import wait_until

_folders = itertools.count(1)


@pytest.fixture
def remote(sshd_server: Any) -> Path:
    """A fresh folder on the server for this test (the server runs as us, on this host)."""
    folder: Path = sshd_server.root / f"t{os.getpid()}x{next(_folders)}"
    folder.mkdir()
    return folder


def target(server: Any, remote_dir: str, **overrides: Any) -> SftpTarget:
    values = {
        "type": "sftp",
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "private_key": server.client_key,
        "host_key": server.host_key,
        "remote_dir": remote_dir,
        "timeout": "5s",
        **overrides,
    }
    return SftpTarget("slate", SftpDestination.model_validate(values))


def landed(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_upload_lands_under_final_name_with_the_same_bytes(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """The file arrives complete under its name in remote_dir/{vendor}, made on the way;
    no temporary name is left."""
    data = os.urandom(300_000)
    placed = target(sshd_server, f"{remote}/{{vendor}}").upload(
        landed(tmp_path, "4300_20260101_101500.csv", data),
        "4300_20260101_101500.csv",
        "collegeboard",
        None,
    )
    final = remote / "collegeboard" / "4300_20260101_101500.csv"
    assert placed.remote_path == str(final) and placed.size == len(data) and not placed.already
    assert final.read_bytes() == data
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


@pytest.mark.parametrize("length", [240, 245, 255])
def test_a_name_of_up_to_255_bytes_reaches_the_server(
    sshd_server: Any, remote: Path, tmp_path: Path, length: int
) -> None:
    """A vendor's name may be 255 bytes: its temporary name on the server is shortened to
    fit too (`.NAME.XXXXXXXX.part` would pass NAME_MAX: "Bad message", given up), and a
    stale one of an interrupted attempt is still found and removed."""
    name = "4300_" + "é" * ((length - 9) // 2) + "x" * ((length - 9) % 2) + ".csv"
    assert len(name.encode()) == length
    dest = target(sshd_server, f"{remote}/{{vendor}}")
    stale = remote / "collegeboard" / f"{_part_stem(name)}.deadbeef.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    dest.upload(landed(tmp_path, "long.csv", b"a,b\r\n"), name, "collegeboard", None)
    assert [p.name for p in stale.parent.iterdir()] == [name]
    assert (stale.parent / name).read_bytes() == b"a,b\r\n"


def test_product_key_placeholder_files_encoura_exports_by_product(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """{product_key} puts each Encoura export in its product's folder."""
    dest = target(sshd_server, f"{remote}/{{vendor}}/{{product_key}}", vendors=["encoura"])
    assert dest.wants("encoura") and not dest.wants("collegeboard")
    dest.upload(landed(tmp_path, "x.csv", b"a,b\n"), "x.csv", "encoura", "score-reporter")
    assert (remote / "encoura" / "score-reporter" / "x.csv").read_bytes() == b"a,b\n"


def test_host_key_mismatch_refuses_before_any_credential(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """A server showing another key than the pinned one gets no login attempt; the error
    names the fingerprint it saw."""
    _, other = new_ed25519_key()
    log_before = sshd_server.log_path.read_text()
    with pytest.raises(ForwardError) as caught:
        target(sshd_server, str(remote), host_key=other).upload(
            landed(tmp_path, "a.csv", b"1"), "a.csv", "collegeboard", None
        )
    assert caught.value.kind == Failure.AUTH
    assert "host key mismatch" in str(caught.value)
    assert sshd_server.host_key_fingerprint in str(caught.value)
    assert sshd_server.client_key not in str(caught.value)
    new_lines = sshd_server.log_path.read_text()[len(log_before) :]
    assert "publickey" not in new_lines and "Accepted" not in new_lines
    assert list(remote.iterdir()) == []


def test_known_hosts_file_pins_the_key(sshd_server: Any, remote: Path, tmp_path: Path) -> None:
    """A known_hosts file (as ssh-keyscan writes it, [host]:port form) pins the key too."""
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd_server.host}]:{sshd_server.port} {sshd_server.host_key}\n")
    dest = target(sshd_server, str(remote), host_key=(), known_hosts_file=str(known))
    dest.upload(landed(tmp_path, "k.csv", b"k"), "k.csv", "collegeboard", None)
    assert (remote / "k.csv").read_bytes() == b"k"


def test_wrong_client_key_is_an_auth_failure(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """A key the server does not accept is an AUTH failure whose text holds no key."""
    stranger, _ = new_ed25519_key()
    with pytest.raises(ForwardError) as caught:
        target(sshd_server, str(remote), private_key=stranger).upload(
            landed(tmp_path, "a.csv", b"1"), "a.csv", "collegeboard", None
        )
    assert caught.value.kind == Failure.AUTH
    assert "PRIVATE KEY" not in str(caught.value) and stranger[40:80] not in str(caught.value)


def test_our_own_rename_already_there_counts_as_delivered(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """The file our recorded rename put there, with our bytes (a crash between rename and
    ledger), is this delivery: nothing is written again."""
    (remote / "a.csv").write_bytes(b"12345")
    placed = target(sshd_server, str(remote)).upload(
        landed(tmp_path, "a.csv", b"12345"),
        "a.csv",
        "collegeboard",
        None,
        sha256=hashlib.sha256(b"12345").hexdigest(),
        ours=str(remote / "a.csv"),
    )
    assert placed.already


@pytest.mark.parametrize("recorded", [False, True])
def test_a_same_size_file_not_ours_is_a_conflict(
    sshd_server: Any, remote: Path, tmp_path: Path, recorded: bool
) -> None:
    """Same name and size but not our upload (no rename recorded), or recorded but other
    bytes (another product's export of that name): a conflict, never counted as sent."""
    (remote / "a.csv").write_bytes(b"54321")
    with pytest.raises(ForwardError) as caught:
        target(sshd_server, str(remote)).upload(
            landed(tmp_path, "a.csv", b"12345"),
            "a.csv",
            "collegeboard",
            None,
            sha256=hashlib.sha256(b"12345").hexdigest(),
            ours=str(remote / "a.csv") if recorded else None,
        )
    assert caught.value.kind == Failure.REFUSED and caught.value.reason == "conflict"
    assert (remote / "a.csv").read_bytes() == b"54321"


def test_a_different_file_under_the_name_is_never_overwritten(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """Another file of that name stays as it is; the refusal is not retried and says why."""
    (remote / "a.csv").write_bytes(b"theirs")
    with pytest.raises(ForwardError) as caught:
        target(sshd_server, str(remote)).upload(
            landed(tmp_path, "a.csv", b"ours, longer"), "a.csv", "collegeboard", None
        )
    assert caught.value.kind == Failure.REFUSED
    assert "not overwritten" in str(caught.value)
    assert (remote / "a.csv").read_bytes() == b"theirs"
    assert [p.name for p in remote.iterdir()] == ["a.csv"]


def test_stale_parts_of_an_interrupted_upload_are_removed(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """Dot-named parts an earlier attempt left are cleared; others' files are not."""
    (remote / ".a.csv.0badf00d.part").write_bytes(b"half")
    (remote / ".other.csv.1234.part").write_bytes(b"not ours")
    target(sshd_server, str(remote)).upload(
        landed(tmp_path, "a.csv", b"whole"), "a.csv", "collegeboard", None
    )
    assert sorted(p.name for p in remote.iterdir()) == [".other.csv.1234.part", "a.csv"]


def test_a_server_that_is_down_is_a_transient_failure(tmp_path: Path, sshd_server: Any) -> None:
    """Nothing listening: TRANSIENT (retried soon, then on the schedule)."""
    from scorefetch.sandbox.ports import free_port

    dest = target(sshd_server, "/x", port=free_port())
    with pytest.raises(ForwardError) as caught:
        dest.upload(landed(tmp_path, "a.csv", b"1"), "a.csv", "collegeboard", None)
    assert caught.value.kind == Failure.TRANSIENT
    assert "cannot connect" in str(caught.value)


def test_no_descriptor_for_the_connection_is_a_local_failure(
    tmp_path: Path, sshd_server: Any
) -> None:
    """No descriptor left for the socket: LOCAL (ours, retried for ever, never given up
    after the schedule as a server's fault would be), the errno named."""
    from tests.test_local_faults import no_free_descriptors

    dest = target(sshd_server, "/x")
    local = landed(tmp_path, "a.csv", b"1")
    for spare, step in ((0, "cannot read the local copy"), (1, "cannot connect")):
        with no_free_descriptors(spare), pytest.raises(ForwardError) as caught:
            dest.upload(local, "a.csv", "collegeboard", None)
        assert caught.value.kind == Failure.LOCAL, caught.value
        assert str(caught.value).startswith(step)


def test_a_connection_cut_mid_upload_leaves_no_final_name(
    sshd_server: Any, remote: Path, tmp_path: Path
) -> None:
    """The link dies while bytes flow: TRANSIENT, only a dot-named part (if anything) on
    the server, and the next attempt lands the whole file."""
    data = os.urandom(64 * 1024 * 1024)
    source = landed(tmp_path, "big.csv", data)
    with FaultProxy(sshd_server.host, sshd_server.port) as proxy:
        dest = target(sshd_server, str(remote), port=proxy.port)
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                dest.upload(source, "big.csv", "collegeboard", None)
            except ScorefetchError as exc:
                errors.append(exc)

        worker = threading.Thread(target=upload)
        worker.start()
        wait_until(lambda: any(p.stat().st_size > 0 for p in remote.glob(".big.csv.*.part")))
        proxy.cut(reset=True)
        worker.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], ForwardError)
    assert errors[0].kind == Failure.TRANSIENT
    assert not (remote / "big.csv").exists()
    target(sshd_server, str(remote)).upload(source, "big.csv", "collegeboard", None)
    assert (remote / "big.csv").read_bytes() == data
    assert [p.name for p in remote.iterdir()] == ["big.csv"]


@pytest.fixture
def small_disk(remote: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted in the remote folder (root only)."""
    folder = remote / "full"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_remote_disk_fails_transiently_and_leaves_nothing(
    sshd_server: Any, small_disk: Path, tmp_path: Path
) -> None:
    """No space on the server: a retryable failure, no file under the final name and no
    part left; once there is room the same upload lands."""
    (small_disk / "blocker").write_bytes(b"\0" * 900_000)
    data = os.urandom(500_000)
    source = landed(tmp_path, "a.csv", data)
    dest = target(sshd_server, str(small_disk))
    with pytest.raises(ForwardError) as caught:
        dest.upload(source, "a.csv", "collegeboard", None)
    assert caught.value.kind == Failure.TRANSIENT
    assert sorted(p.name for p in small_disk.iterdir()) == ["blocker"]
    (small_disk / "blocker").unlink()
    dest.upload(source, "a.csv", "collegeboard", None)
    assert (small_disk / "a.csv").read_bytes() == data


def test_probe_writes_and_removes_a_file(sshd_server: Any, remote: Path) -> None:
    """doctor's probe logs in, writes in each folder and leaves nothing behind: not the
    file, and not the folders it had to make (doctor changes nothing); folders that were
    there stay."""
    (remote / "collegeboard").mkdir()
    said = target(sshd_server, f"{remote}/{{vendor}}/in").probe()
    assert sshd_server.host_key_fingerprint in said and "probe file" in said
    assert [p.relative_to(remote) for p in remote.rglob("*")] == [Path("collegeboard")]


def test_probe_says_what_is_wrong(sshd_server: Any, remote: Path) -> None:
    """A probe against a mismatching key raises a ScorefetchError naming the problem."""
    _, other = new_ed25519_key()
    with pytest.raises(ScorefetchError, match="host key mismatch"):
        target(sshd_server, str(remote), host_key=other).probe()
