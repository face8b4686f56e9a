"""Durable downloads over real loopback HTTP to the sandbox's S3 stand-in."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.core import downloads
from scorefetch.core.downloads import (
    Landed,
    check_url,
    fetch_to_file,
    host_allowed,
    remove_partials,
)
from scorefetch.core.errors import RefusedError, VendorError
from scorefetch.core.http import build_session
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator


def presigned(sim: CollegeBoardSimulator, name: str) -> str:
    from scorefetch.collegeboard.settings import CollegeBoardConfig

    config = CollegeBoardConfig(
        base_url=sim.base_url,
        username=sim.username,
        password=sim.password,
        download_hosts=(sim.download_host,),
    )
    return CollegeBoard(config, build_session()).file_url(name)


def fetch(sim: CollegeBoardSimulator, name: str, folder: Path, deadline_s: float = 60) -> Landed:
    """A fresh URL for `name`, fetched at once into `folder`."""
    return fetch_to_file(
        build_session(),
        presigned(sim, name),
        folder,
        name,
        hosts=[sim.download_host],
        deadline_s=deadline_s,
    )


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("s3.amazonaws.com", True),
        ("bucket.s3.amazonaws.com", True),
        ("a.b.s3.amazonaws.com", True),
        ("S3.AMAZONAWS.COM.", True),
        ("evils3.amazonaws.com", False),
        ("s3.amazonaws.com.evil.com", False),
        ("amazonaws.com", False),
        ("", False),
    ],
)
def test_host_allowlist(host: str, allowed: bool) -> None:
    """Exact hosts and `*.suffix` patterns; lookalikes are refused."""
    assert host_allowed(host, ["s3.amazonaws.com", "*.s3.amazonaws.com"]) is allowed


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket.s3.amazonaws.com/x.csv",
        "ftp://s3.amazonaws.com/x.csv",
        "https://user:pw@s3.amazonaws.com/x.csv",
        "https://elsewhere.example/x.csv",
        "x.csv",
    ],
)
def test_check_url_refuses(url: str) -> None:
    """Plain http to a remote host, other schemes, credentials and other hosts are refused."""
    with pytest.raises(RefusedError):
        check_url(url, ["s3.amazonaws.com", "*.s3.amazonaws.com"])


def test_lands_exact_bytes_with_modes(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """The file appears whole under its name, 0600 in a new 0700 folder, no .part left."""
    cb_sim.publish_generated("big.csv", 3 * 1024 * 1024 + 17, seed=1)
    folder = tmp_path / "files" / "collegeboard"
    landed = fetch(cb_sim, "big.csv", folder, deadline_s=60)
    assert landed.path == folder / "big.csv"
    assert landed.size == 3 * 1024 * 1024 + 17
    assert landed.sha256 == cb_sim.sha256_of("big.csv")
    assert hashlib.sha256(landed.path.read_bytes()).hexdigest() == landed.sha256
    assert landed.path.stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["big.csv"]


def test_write_behind_keeps_every_byte(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages handed to the kernel for early writeback (many rounds here, with a 256 KiB
    step) come back whole: the landed file has every byte, in order."""
    monkeypatch.setattr(downloads, "WRITE_BEHIND", 256 * 1024)
    size = 5 * 1024 * 1024 + 3
    cb_sim.publish_generated("behind.csv", size, seed=4)
    landed = fetch(cb_sim, "behind.csv", tmp_path / "files")
    assert landed.size == size and landed.sha256 == cb_sim.sha256_of("behind.csv")
    assert hashlib.sha256(landed.path.read_bytes()).hexdigest() == landed.sha256


def test_refused_host_makes_no_connection(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """A URL outside download_hosts is refused before connecting: no request, no file."""
    cb_sim.publish("a.csv", b"1,2\n")
    url = presigned(cb_sim, "a.csv")
    with pytest.raises(RefusedError):
        fetch_to_file(
            build_session(), url, tmp_path, "a.csv", hosts=["s3.amazonaws.com"], deadline_s=60
        )
    assert cb_sim.stats.downloads_started == 0
    assert list(tmp_path.iterdir()) == []


def test_expired_url_is_kind_expired_and_leaves_nothing(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """403 from S3 means "ask for a new URL"; no partial file stays."""
    cb_sim.publish("a.csv", b"1,2\n")
    cb_sim.url_lifetime = 0
    with pytest.raises(VendorError) as caught:
        fetch(cb_sim, "a.csv", tmp_path, deadline_s=60)
    assert caught.value.kind == "expired"
    assert list(tmp_path.iterdir()) == []


def test_overall_deadline(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """A download slower than its deadline is abandoned as transient, its .part removed."""
    cb_sim.publish_generated("slow.csv", 2 * 1024 * 1024)
    cb_sim.throttle_bps = 512 * 1024
    with pytest.raises(VendorError) as caught:
        fetch(cb_sim, "slow.csv", tmp_path, deadline_s=0.5)
    assert caught.value.kind == "transient"
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_a_different_file(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """An existing different file keeps its name, the new one lands as NAME-1; same bytes reuse."""
    cb_sim.publish("a.csv", b"new bytes\n")
    (tmp_path / "a.csv").write_bytes(b"someone else's file\n")
    landed = fetch(cb_sim, "a.csv", tmp_path, deadline_s=60)
    assert landed.path == tmp_path / "a-1.csv"
    assert (tmp_path / "a.csv").read_bytes() == b"someone else's file\n"
    again = fetch(cb_sim, "a.csv", tmp_path, deadline_s=60)
    assert again.path == tmp_path / "a-1.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.csv", "a.csv"]


def test_remove_partials_only_touches_part_files(tmp_path: Path) -> None:
    """Leftover .NAME.part files are removed at start; everything else stays."""
    (tmp_path / "encoura" / "prospect").mkdir(parents=True)
    keep = [tmp_path / "a.csv", tmp_path / "part.csv", tmp_path / "encoura" / "prospect" / "x.csv"]
    gone = [tmp_path / ".a.csv.part", tmp_path / "encoura" / "prospect" / ".x.csv.part"]
    for path in keep + gone:
        path.write_bytes(b"x")
    assert sorted(remove_partials(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_land_takes_bytes_from_any_source(tmp_path: Path) -> None:
    """`land` is the landing without HTTP: chunks from anywhere become one complete file,
    checksummed; the same bytes again are that file; other bytes take NAME-1."""
    folder = tmp_path / "drop"
    first = downloads.land(iter([b"id,score\n", b"1,1600\n"]), folder, "a.csv", expected=16)
    assert first.path == folder / "a.csv" and first.size == 16
    assert first.sha256 == hashlib.sha256(b"id,score\n1,1600\n").hexdigest()
    again = downloads.land([b"id,score\n1,1600\n"], folder, "a.csv")
    assert again.path == first.path
    other = downloads.land([b"other\n"], folder, "a.csv")
    assert other.path == folder / "a-1.csv" and other.path.read_bytes() == b"other\n"
    assert (folder / "a.csv").stat().st_mode & 0o777 == 0o600 and _hidden(folder) == []


class _Broken(Exception):
    pass


def _dies_after(data: bytes) -> Iterator[bytes]:
    yield data
    raise _Broken("the source went away")


@pytest.mark.parametrize(
    ("chunks", "kwargs", "error"),
    [
        (lambda: _dies_after(b"half"), {}, _Broken),
        (lambda: iter([b"short"]), {"expected": 10}, VendorError),
        (lambda: iter([b"x" * 11]), {"max_size": 10}, VendorError),
        (lambda: iter([b"x"]), {"name": "../escape.csv"}, RefusedError),
    ],
    ids=["source-raises", "short", "too-large", "bad-name"],
)
def test_land_leaves_nothing_when_the_bytes_fail(
    tmp_path: Path, chunks: Any, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Whatever stops a landing (the source's own error, too few or too many bytes, a name
    that would leave the folder), no file and no part stays behind."""
    folder = tmp_path / "drop"
    folder.mkdir()
    name = kwargs.pop("name", "a.csv")
    with pytest.raises(error):
        downloads.land(chunks(), folder, name, **kwargs)
    assert list(folder.iterdir()) == []
