"""A vendor name of up to 255 bytes is accepted; when a different file already has it,
the new one lands as NAME-N. That name did not fit (ENAMETOOLONG): a local fault, retried
for ever, the file never landing. The numbered name is shortened to fit, like `.part`."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorefetch.core.downloads import fetch_to_file
from scorefetch.core.filenames import check_name
from scorefetch.core.http import build_session
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from tests.test_downloads import presigned

NAME_MAX = 255


@pytest.mark.parametrize(
    "name",
    [
        "4300_" + "9" * 246 + ".csv",  # 255 bytes
        "4300_" + "é" * 123 + ".csv",  # 255 bytes, two per character
        "4300." + "x" * 250,  # an "extension" that alone fills the name
        "x" * 255,  # no extension at all
    ],
)
def test_a_long_name_taken_by_another_file_lands_under_a_numbered_name_that_fits(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, name: str
) -> None:
    """A 250-byte name already taken by other bytes lands as NAME-1 cut to fit 255 bytes."""
    assert len(name.encode()) == NAME_MAX
    check_name(name)
    (tmp_path / name).write_bytes(b"someone else's file\n")
    taken: list[Path] = []
    for body in (b"first\n", b"second\n", b"first\n"):
        cb_sim.publish(name, body)
        landed = fetch_to_file(
            build_session(),
            presigned(cb_sim, name),
            tmp_path,
            name,
            hosts=[cb_sim.download_host],
            deadline_s=30,
        )
        assert landed.path.read_bytes() == body
        assert len(landed.path.name.encode()) <= NAME_MAX
        check_name(landed.path.name)
        taken.append(landed.path)
    assert taken[0] != taken[1]
    assert taken[2] == taken[0]  # the very same bytes again: the file already there
    assert (tmp_path / name).read_bytes() == b"someone else's file\n"
    assert len(list(tmp_path.iterdir())) == 3
