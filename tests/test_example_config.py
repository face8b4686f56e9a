"""The shipped example configuration stays valid."""

from __future__ import annotations

import shutil
from pathlib import Path

from scorefetch import sources

EXAMPLE = Path(__file__).parent.parent / "config" / "scorefetch.example.yaml"


def test_example_config_loads(tmp_path: Path) -> None:
    """config/scorefetch.example.yaml validates once its secret files exist."""
    shutil.copy(EXAMPLE, tmp_path / "config.yaml")
    for name in ("imap_password", "collegeboard_password", "encoura_api_key", "encoura_password"):
        (tmp_path / name).write_text("example-secret\n")
    loaded = sources.load(tmp_path / "config.yaml", environ={})
    assert loaded.imap is not None and loaded.imap.security == "tls"
    assert loaded.collegeboard is not None and loaded.collegeboard.formats == ("csv",)
    assert loaded.encoura is not None and loaded.encoura.enabled is False


def test_example_oauth_blocks_load(tmp_path: Path) -> None:
    """Each commented `auth:` example in the imap section validates once uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("  # auth:")]
    assert len(starts) == 3
    names = ("imap_client_secret", "imap_refresh_token", "collegeboard_password")
    for name in (*names, "encoura_api_key", "encoura_password"):
        (tmp_path / name).write_text("example-secret\n")
    imap_password = lines.index(
        "  password_file: imap_password   # with auth method password (the default)"
    )
    without_password = lines[:imap_password] + lines[imap_password + 1 :]
    providers = []
    for start in starts:
        end = start + 1
        while end < len(lines) and lines[end].startswith("  #   "):
            end += 1
        block = [lines[start].replace("# ", "", 1)]
        block += [ln.replace("#   ", "  ", 1) for ln in lines[start + 1 : end] if "#   #" not in ln]
        text = "\n".join(without_password).replace("imap:\n", "imap:\n" + "\n".join(block) + "\n")
        (tmp_path / "config.yaml").write_text(text)
        loaded = sources.load(tmp_path / "config.yaml", environ={})
        assert loaded.imap is not None
        providers.append(getattr(loaded.imap.auth, "provider", None))
    assert providers == ["microsoft", "google", "command"]
