"""Shared fixtures: the real sandbox servers and the real daemon process.

IMAP servers are started once per session (pymap always; Dovecot when installed,
required with SCOREFETCH_REQUIRE_DOVECOT=1); each test gets a folder of its own.
Every daemon a test starts has its whole output checked for secrets at teardown.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from scorefetch.core import logs
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import ImapServer, PymapServer
from tests.support import LogLines, assert_no_secrets

# Property tests: a quick `dev` run by default, a thorough `ci` one where .ci/run asks for it
# (HYPOTHESIS_PROFILE=ci). No deadline: a busy machine must not turn slowness into failure.
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REQUIRE_DOVECOT = os.environ.get("SCOREFETCH_REQUIRE_DOVECOT") == "1"
_folders = itertools.count(1)
# A test that uses any of these talks to real servers or runs the real daemon: `e2e`,
# left out of `make test-fast`.
_E2E_FIXTURES = frozenset({"pymap_server", "dovecot_server", "imap_server", "start_daemon"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def dovecot_or_skip(workdir: Path) -> Any:
    try:
        from tests.standins.dovecot import DovecotServer, dovecot_binary
    except ImportError:  # pragma: no cover - the module ships with the package
        dovecot_binary = None  # type: ignore[assignment]
    if dovecot_binary is None or dovecot_binary() is None:
        if REQUIRE_DOVECOT:
            pytest.fail("SCOREFETCH_REQUIRE_DOVECOT=1 but dovecot is not installed")
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)")
    return DovecotServer(workdir)


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """What this process logs during the test (JSON, debug and up), read back with
    `.events(name, **fields)`; logging goes back to stdout afterwards (an in-process
    `main()` may otherwise leave it pointed at a stream that is closed by then)."""
    stream = LogLines()
    logs.configure("json", "debug", stream)
    yield stream
    logs.configure("json", "info")


@pytest.fixture(scope="session")
def pymap_server() -> Iterator[PymapServer]:
    with PymapServer() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    server = dovecot_or_skip(tmp_path_factory.mktemp("dovecot"))
    with server:
        yield server


@pytest.fixture(params=["pymap", "dovecot"])
def imap_server(request: pytest.FixtureRequest) -> ImapServer:
    """Each end-to-end test runs on both servers."""
    server: ImapServer = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture
def imap_folder(imap_server: Any) -> str:
    """A fresh, empty folder on the server for this test."""
    name = f"test{os.getpid()}x{next(_folders)}"
    with imap_server.client() as client:
        client.create_folder(name)
    return name


@pytest.fixture
def cb_sim() -> Iterator[CollegeBoardSimulator]:
    with CollegeBoardSimulator() as sim:
        yield sim


@pytest.fixture
def log_secrets() -> Iterable[str]:
    """Secrets beyond the IMAP and College Board passwords that no daemon line may hold;
    read at teardown, so a test module may override it with a lazy iterable."""
    return ()


@pytest.fixture
def start_daemon(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
    log_secrets: Iterable[str],
) -> Iterator[Callable[..., DaemonProcess]]:
    """Start `scorefetch run` on a sandbox config; stops it and checks its output at teardown."""
    started: list[DaemonProcess] = []

    def start(
        wait_ready: bool = True, env: dict[str, str] | None = None, **config: Any
    ) -> DaemonProcess:
        path = tmp_path / "config.yaml"
        if not path.exists() or config:
            write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder, **config)
        daemon = DaemonProcess(path, env=env)
        started.append(daemon)
        if wait_ready:
            daemon.wait_event("daemon.ready", timeout=30)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    assert_no_secrets(
        [line for d in started for line in d.lines],
        [imap_server.password, cb_sim.password, *log_secrets],
    )


REQUIRE_SSHD = os.environ.get("SCOREFETCH_REQUIRE_SSHD") == "1"


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real OpenSSH server (internal-sftp) on a free loopback port, for the session;
    skipped when sshd is not installed, unless SCOREFETCH_REQUIRE_SSHD=1 (CI)."""
    from scorefetch.sandbox.sshd import SshServer, sshd_binary

    if sshd_binary() is None:
        if REQUIRE_SSHD:
            pytest.fail("SCOREFETCH_REQUIRE_SSHD=1 but sshd is not installed")
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    with SshServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server
