"""Files we write outside the ledger go through one helper (core/files.py). The metrics
textfile was written through a predictable temporary name without O_EXCL|O_NOFOLLOW: a
local user who can write the textfile folder planted a symlink and had a score file
overwritten with metrics text, readable by all. Doctor's probe stayed behind when its
write failed."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorefetch.config import MetricsConfig
from scorefetch.core import files
from scorefetch.core.ledger import Ledger
from scorefetch.doctor.checks import probe_folder
from scorefetch.observers.metrics import Metrics

NOBODY = 65534


def _plant(link: Path, target: Path) -> None:
    """A symlink made by another user (root in the tests hands it to nobody)."""
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(link, NOBODY, NOBODY)


@pytest.fixture
def shared_folder(tmp_path: Path) -> Path:
    """A group- and world-writable textfile folder (sticky, as /tmp), as node_exporter's
    often is."""
    folder = tmp_path / "textfile"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


def test_the_textfile_never_writes_through_a_planted_symlink(
    tmp_path: Path, shared_folder: Path
) -> None:
    """Symlinks planted at the old predictable temporary name and at the textfile itself
    leave the score file they point to untouched; the textfile is our own file, 0644."""
    victim = tmp_path / "4300_20261201_000001.csv"
    victim.write_bytes(b"student,score\r\n")
    victim.chmod(0o600)
    target = shared_folder / "scorefetch.prom"
    _plant(shared_folder / f".scorefetch.prom.{os.getpid()}.tmp", victim)
    _plant(target, victim)
    metrics = Metrics(
        MetricsConfig(textfile=target), Ledger(tmp_path / "l.sqlite3"), ["cb"], imap=False
    )
    metrics.write_textfile()
    assert victim.read_bytes() == b"student,score\r\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    info = target.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o644
    assert info.st_uid == os.geteuid()
    assert b"scorefetch_deliveries_total" in target.read_bytes()
    leftovers = {p.name for p in shared_folder.iterdir()} - {"scorefetch.prom"}
    assert leftovers == {f".scorefetch.prom.{os.getpid()}.tmp"}  # the planted link only


def test_replace_file_sets_the_mode_on_its_own_descriptor_whatever_the_umask(
    tmp_path: Path,
) -> None:
    """A 0077 umask does not make the textfile unreadable, nor 0000 a private file public."""
    old = os.umask(0o077)
    try:
        files.replace_file(tmp_path / "a.prom", b"x\n", 0o644)
        os.umask(0)
        files.replace_file(tmp_path / "b", b"y\n", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.prom").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


@contextlib.contextmanager
def _no_file_may_grow() -> Iterator[None]:
    """RLIMIT_FSIZE 0: every write to a file fails with EFBIG (SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_doctors_probe_is_removed_when_its_write_fails(tmp_path: Path) -> None:
    """A probe whose write fails is a FAIL with the reason, and leaves no file behind."""
    folder = tmp_path / "files"
    folder.mkdir()
    with _no_file_may_grow():
        problem = probe_folder(folder)
    assert problem is not None and "cannot write" in problem
    assert list(folder.iterdir()) == []
