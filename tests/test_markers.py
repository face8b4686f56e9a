"""The suite's own rules: `e2e` is derived from the fixtures that start servers, and a test
without it cannot start one, so `make test-fast` (`-m "not e2e"`) starts no server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import E2E_FIXTURES
from tests.support import ServerOutsideE2e, starts_a_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "server"),
    [
        (["/usr/sbin/dovecot", "-F", "-c", "dovecot.conf"], "dovecot"),
        (["/usr/sbin/sshd", "-D", "-e", "-f", "sshd_config"], "sshd"),
        ([sys.executable, "-c", "from pymap.main import main; main()", "--port", "1"], "pymap"),
        ([sys.executable, "-m", "scorefetch", "run", "-c", "c.yaml"], "scorefetch run"),
        ([sys.executable, "-m", "scorefetch", "demo"], "scorefetch demo"),
        ("/opt/scorefetch/bin/scorefetch run -c /etc/scorefetch/config.yaml", "scorefetch run"),
        ([sys.executable, "-m", "scorefetch", "fetch", "-c", "c.yaml", "collegeboard", "a"], None),
        ([sys.executable, "-m", "scorefetch", "check-config", "-c", "c.yaml"], None),
        (["/bin/sh", "-c", "exit 3"], None),
        ([], None),
    ],
)
def test_server_command_lines_are_recognised(argv: object, server: str | None) -> None:
    """Dovecot, sshd, pymap and the daemon are servers; other commands are not."""
    assert starts_a_server(argv) == server


def test_a_test_not_marked_e2e_cannot_start_a_server(tmp_path: Path) -> None:
    """Starting sshd outside an e2e test fails before anything is spawned."""
    with pytest.raises(ServerOutsideE2e, match="sshd started by a test not marked e2e"):
        subprocess.Popen(["/usr/sbin/sshd", "-t", "-f", str(tmp_path / "none")])


def test_fixtures_that_start_servers_make_their_tests_e2e() -> None:
    """With -m "not e2e" no test left uses a fixture that starts a server or the daemon."""
    modules = [
        "tests/test_forwarder.py",  # sshd_server
        "tests/test_forward_sftp.py",  # sshd_server
        "tests/test_attack_sftp.py",  # silent_sftp
        "tests/test_exports.py",  # start_encoura_daemon (pymap_server)
        "tests/test_hooks.py",  # start_daemon, imap_server
    ]
    listing = ["--fixtures-per-test", "-v", "-p", "no:cacheprovider", "-m", "not e2e"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *listing, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    used = {line.split(" -- ")[0] for line in done.stdout.splitlines() if " -- " in line}
    assert "tmp_path" in used  # the listing is what we think it is
    assert not used & E2E_FIXTURES
    kept = {
        line.split("(")[1].split(":")[0] for line in done.stdout.splitlines() if "(tests/" in line
    }
    assert {"tests/test_forwarder.py", "tests/test_exports.py", "tests/test_hooks.py"} <= kept
