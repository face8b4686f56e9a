"""`scorefetch doctor`'s check of College Board: the harmless call (the listing)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.errors import Failure, VendorError
from scorefetch.core.http import build_session
from scorefetch.doctor.checks import Check, Clock


def check(cfg: CollegeBoardConfig, clock: Clock) -> Check:
    """A week's listing through the daemon's own client, on a session built as the
    daemon builds it (collegeboard/source.py): the same timeouts, no redirects."""
    client = CollegeBoard(cfg, clock.watch(build_session(), "College Board"))
    try:
        listed = client.list_files(datetime.now(UTC) - timedelta(days=7))
    except VendorError as exc:
        if exc.kind is Failure.AUTH:
            return Check(
                "collegeboard",
                False,
                f"{cfg.base_url} refused {cfg.username}: {exc}",
                "the web-service password expires periodically: set a new one in College "
                "Board's professional account, put it in collegeboard_password, restart",
            )
        return Check(
            "collegeboard",
            False,
            f"{cfg.base_url}: {exc}",
            "check collegeboard.base_url and that this host may reach it (HTTPS out)",
        )
    types = Counter(f.file_type or "no fileType" for f in listed)
    kinds = "".join(f"; {n} {kind}" for kind, n in sorted(types.items()))
    return Check(
        "collegeboard",
        True,
        f"{cfg.base_url} accepts {cfg.username} ({len(listed)} files posted in 7 days{kinds})",
    )
