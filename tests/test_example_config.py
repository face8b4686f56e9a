"""The shipped example configuration stays valid."""

from __future__ import annotations

import shutil
from pathlib import Path

from scorefetch import config

EXAMPLE = Path(__file__).parent.parent / "config" / "scorefetch.example.yaml"


def test_example_config_loads(tmp_path: Path) -> None:
    """config/scorefetch.example.yaml validates once its secret files exist."""
    shutil.copy(EXAMPLE, tmp_path / "config.yaml")
    for name in ("imap_password", "collegeboard_password", "encoura_api_key", "encoura_password"):
        (tmp_path / name).write_text("example-secret\n")
    loaded = config.load(tmp_path / "config.yaml", environ={})
    assert loaded.imap is not None and loaded.imap.security == "tls"
    assert loaded.collegeboard is not None and loaded.collegeboard.formats == ("csv",)
    assert loaded.encoura is not None and loaded.encoura.enabled is False
