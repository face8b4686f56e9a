"""The project stands alone: a user's clone has no ../shared beside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `../shared`, `parent / "shared"`, `"shared/samples"`: any way of reaching the team folder.
REACHES_SHARED = re.compile(r"\.\./shared|[\"']shared[\"']|shared/(samples|seeds)")
CHECKS_ITS_ABSENCE = {".ci/run"}  # it makes sure the clone it tests has no ../shared


def _code(text: str) -> str:
    """The text without `#` comments (a comment may say why ../shared is not read)."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False
    ).stdout.split(b"\0")
    return [ROOT / name.decode() for name in listed if name]


def test_no_file_reads_the_team_folder() -> None:
    """No test, script, Makefile target or module names ../shared (CI also runs from a
    clone without it, which catches a path built some other way)."""
    this = Path(__file__).resolve()
    offenders = [
        str(path.relative_to(ROOT))
        for path in _tracked_files() or ROOT.rglob("*.py")
        if path.is_file()
        and path.resolve() != this
        and str(path.relative_to(ROOT)) not in CHECKS_ITS_ABSENCE
        and path.suffix in {".py", ".sh", ""}
        and REACHES_SHARED.search(_code(path.read_text(errors="replace")))
    ]
    assert offenders == []
