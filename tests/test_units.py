"""The systemd units: they verify, score as hardened, and a config error stops them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def runnable_copy(folder: Path, name: str) -> Path:
    """The unit with its program replaced by /bin/true (verify wants an executable)."""
    text = (UNITS / name).read_text().replace("/opt/scorefetch/bin/scorefetch", "/bin/true")
    path = folder / name
    path.write_text(text)
    return path


@needs_analyze
@pytest.mark.parametrize("name", ["scorefetch.service", "scorefetch@.service"])
def test_units_verify_and_score_at_most_2(tmp_path: Path, name: str) -> None:
    """`systemd-analyze verify` is clean and `systemd-analyze security` rates each unit
    2.0 or better (offline: no running systemd needed)."""
    path = runnable_copy(tmp_path, name)
    target = path if "@" not in name else path.with_name("scorefetch@inst.service")
    verify = subprocess.run(
        [str(ANALYZE), "verify", str(target)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert found, security.stdout[-500:] + security.stderr[-500:]
    assert float(found.group(1)) <= 2.0


@pytest.mark.parametrize("name", ["scorefetch.service", "scorefetch@.service"])
def test_config_error_stops_the_unit(name: str) -> None:
    """No ExecStartPre= (RestartPreventExitStatus= applies to the main process only, so a
    failing pre-command restarted forever); the main process exits 78 and is not restarted."""
    text = (UNITS / name).read_text()
    assert not re.search(r"^ExecStartPre=", text, re.M)
    assert re.search(r"^RestartPreventExitStatus=78$", text, re.M)
    assert re.search(r"^Restart=on-failure$", text, re.M)


def test_instance_unit_keeps_instances_apart() -> None:
    """scorefetch@NAME reads /etc/scorefetch/NAME.yaml, its secrets from /etc/scorefetch/NAME/,
    and keeps its state in /var/lib/scorefetch/NAME."""
    text = (UNITS / "scorefetch@.service").read_text()
    assert "run -c /etc/scorefetch/%i.yaml" in text
    assert re.search(r"^StateDirectory=scorefetch/%i$", text, re.M)
    for line in re.findall(r"^LoadCredential=(.*)$", text, re.M):
        assert line.split(":", 1)[1].startswith("/etc/scorefetch/%i/")
