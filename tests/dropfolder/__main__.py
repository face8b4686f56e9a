"""`python -m tests.dropfolder run -c CONFIG`: the daemon with the drop-folder vendor
registered — the one registry line — and nothing else changed."""

from __future__ import annotations

import sys

from scorefetch import sources
from tests.dropfolder import DropFolderSource

sources.SOURCES = (*sources.SOURCES, DropFolderSource)  # the registry line

from scorefetch.cli import main  # noqa: E402 - after the registry has its line

sys.exit(main(sys.argv[1:]))
