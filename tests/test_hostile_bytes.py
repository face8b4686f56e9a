"""The bytes are exactly what the vendor stored, bounded in size, and the deadline holds
however slowly they come: the real download code against the bucket in hostile mode."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.downloads import Landed, fetch_to_file
from scorefetch.core.errors import Failure, RefusedError, VendorError
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from tests.standins.hostile import gzipped


def client(sim: CollegeBoardSimulator, **overrides: object) -> CollegeBoard:
    config = CollegeBoardConfig.model_validate(
        {
            "base_url": sim.base_url,
            "username": sim.username,
            "password": sim.password,
            "download_hosts": [sim.download_host],
            **overrides,
        }
    )
    return CollegeBoard(config, build_session(connect_timeout=2, read_timeout=30))


def fetch(
    sim: CollegeBoardSimulator,
    name: str,
    folder: Path,
    deadline_s: float = 60,
    max_size: int | None = None,
) -> Landed:
    cb = client(sim)
    limits = {} if max_size is None else {"max_size": max_size}
    return fetch_to_file(
        cb.session,
        cb.file_url(name),
        folder,
        name,
        hosts=[sim.download_host],
        deadline_s=deadline_s,
        **limits,
    )


def test_gzip_encoded_file_lands_as_stored(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """A file served with Content-Encoding: gzip lands byte for byte as the bucket stores
    it (what curl without --compressed saves): no truncation error, no inflating."""
    data = b"Last,First,Total\r\n" + b"Doe,Jane,1400\r\n" * 400_000  # ~6 MB, ~30 KB gzipped
    cb_sim.publish("scores.csv", data)
    cb_sim.hostile.gzip = True
    landed = fetch(cb_sim, "scores.csv", tmp_path, max_size=1024 * 1024)
    stored = gzipped(data)
    assert landed.size == len(stored) and landed.path.read_bytes() == stored
    assert landed.sha256 == hashlib.sha256(stored).hexdigest()


def test_download_asks_for_identity_encoding(cb_sim: CollegeBoardSimulator, tmp_path: Path) -> None:
    """The bucket is asked for the stored bytes (Accept-Encoding: identity)."""
    seen: list[str] = []
    before = cb_sim.before

    def spy(endpoint: str, request: Any) -> bool:  # the simulators' extension point
        if endpoint == "download":
            seen.append(request.headers.get("Accept-Encoding", ""))
        return before(endpoint, request)

    cb_sim.publish("a.csv", b"1\n")
    cb_sim.before = spy  # type: ignore[method-assign]
    fetch(cb_sim, "a.csv", tmp_path)
    assert seen == ["identity"]


@pytest.mark.parametrize("announced", [True, False])
def test_file_over_max_file_size_is_refused(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, announced: bool
) -> None:
    """Larger than max_file_size: refused (never retried) from the Content-Length, or
    while streaming when there is none; nothing stays on disk."""
    cb_sim.publish_generated("big.csv", 3 * 1024 * 1024)
    cb_sim.hostile.no_content_length = not announced
    with pytest.raises(VendorError) as caught:
        fetch(cb_sim, "big.csv", tmp_path, max_size=1024 * 1024)
    assert caught.value.kind == Failure.REFUSED and "max_file_size" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_max_file_size_from_config_fails_the_delivery_for_good(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """`collegeboard.max_file_size` reaches the download: the row ends `failed`."""
    cb_sim.publish_generated("big.csv", 300_000)
    deliveries = CollegeBoardDeliveries(
        client(cb_sim, max_file_size="100k"), Ledger(tmp_path / "l.sqlite3"), tmp_path / "f"
    )
    deliveries.ledger.claim("collegeboard", "big.csv", "big.csv", "notification")
    try:
        assert deliveries.deliver("big.csv") is None
    finally:
        deliveries.close(5)
    row = deliveries.ledger.get("collegeboard", "big.csv")
    assert row is not None and row.state == "failed" and "max_file_size" in (row.error or "")


def test_lying_content_length_is_a_transient_failure(
    cb_sim: CollegeBoardSimulator, tmp_path: Path
) -> None:
    """A Content-Length larger than the body sent is a cut stream, retried; no file."""
    cb_sim.publish("a.csv", b"1,2,3\n")
    cb_sim.hostile.content_length = "100"
    with pytest.raises(VendorError) as caught:
        fetch(cb_sim, "a.csv", tmp_path)
    assert caught.value.kind == Failure.TRANSIENT
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["body", "headers", "body-no-length"])
def test_deadline_holds_against_a_trickle(
    cb_sim: CollegeBoardSimulator, tmp_path: Path, where: str
) -> None:
    """A bucket sending a few bytes a second, in its body or its headers, is cut off
    within a few seconds of the deadline (a read timeout alone never fires)."""
    cb_sim.publish("slow.csv", b"x" * 4000)  # 4000 bytes at 100 B/s: 40 s
    if where == "headers":
        cb_sim.hostile.trickle_headers_bps = 5
    else:
        cb_sim.hostile.trickle_bps = 100
    cb_sim.hostile.no_content_length = where == "body-no-length"
    started = time.monotonic()
    with pytest.raises(VendorError) as caught:
        fetch(cb_sim, "slow.csv", tmp_path, deadline_s=2)
    elapsed = time.monotonic() - started
    # The trickle alone would take 40 s: well under that is the deadline's doing, however
    # busy the machine.
    assert elapsed < 20, f"the deadline held only after {elapsed:.1f} s"
    assert caught.value.kind == Failure.TRANSIENT and "deadline" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_api_answer_trickle_is_bounded(cb_sim: CollegeBoardSimulator) -> None:
    """A vendor API trickling its JSON answer costs the session's call deadline, no more."""
    cb_sim.publish("a.csv", b"1\n")
    cb_sim.hostile.api_trickle_bps = 20  # a ~600-byte answer: 30 s
    cb = CollegeBoard(
        CollegeBoardConfig(
            base_url=cb_sim.base_url, username=cb_sim.username, password=cb_sim.password
        ),
        build_session(connect_timeout=1, read_timeout=2),
    )
    started = time.monotonic()
    with pytest.raises(VendorError) as caught:
        cb.file_url("a.csv")
    assert time.monotonic() - started < 20  # the trickle alone: 30 s
    assert caught.value.kind == Failure.TRANSIENT and "no answer within" in str(caught.value)


def test_containment_refuses_a_folder_that_leads_outside(tmp_path: Path) -> None:
    """A vendor folder that resolves outside the download root (a symlink) is refused
    before any connection or write."""
    root = tmp_path / "files" / "encoura"
    root.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "score-reporter").symlink_to(outside)
    with pytest.raises(RefusedError):
        fetch_to_file(
            build_session(),
            "http://127.0.0.1:9/b/x.csv",
            root / "score-reporter",
            "x.csv",
            hosts=["127.0.0.1"],
            deadline_s=5,
            root=root,
        )
    assert list(outside.iterdir()) == []
