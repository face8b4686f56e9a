"""Shared fixtures: the real sandbox servers and the real daemon process.

IMAP servers are started once per session (pymap always; Dovecot when installed,
required with SCOREFETCH_REQUIRE_DOVECOT=1); each test gets a folder of its own.
Every daemon a test starts has its whole output checked for secrets at teardown.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from scorefetch.core import logs
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import ImapServer, PymapServer
from tests.standins.hostile import HostileCollegeBoard
from tests.support import LogLines, ServerOutsideE2e, assert_no_secrets, starts_a_server

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
# Every fixture that starts a server (pymap, Dovecot, sshd) or the real daemon, here or in a
# test module: a test that uses one, directly or through another fixture, is `e2e`, left out
# of `make test-fast`. A test that starts one in its body carries the marker itself; one that
# forgets fails at once (`_servers_only_in_e2e`).
E2E_FIXTURES = frozenset(
    {
        "pymap_server",
        "dovecot_server",
        "imap_server",
        "start_daemon",
        "sshd_server",
        "oauth_dovecot",  # test_oauth.py
        "start_encoura_daemon",  # test_exports.py
        "silent_sftp",  # test_attack_sftp.py
        "refusing_sftp",  # test_attack_sftp.py
        "drop_daemon",  # test_third_source.py
        "hostile_sftp",  # test_attack_text.py
    }
)
_running_e2e = True  # outside a test (collection, session teardown) nothing is refused


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of this test, session-scoped ones included, is set up."""
    global _running_e2e
    _running_e2e = item.get_closest_marker("e2e") is not None


@pytest.fixture(scope="session", autouse=True)
def _servers_only_in_e2e() -> Iterator[None]:
    """A test not marked e2e that starts a server or the daemon (a fixture missing from
    E2E_FIXTURES, a server started in a test's body) fails with ServerOutsideE2e, so
    `make test-fast` starts none."""
    real_init = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        what = starts_a_server(args)
        if what is not None and not _running_e2e:
            raise ServerOutsideE2e(f"{what} started by a test not marked e2e")
        real_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real_init  # type: ignore[method-assign]


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
def cb_sim() -> Iterator[HostileCollegeBoard]:
    """College Board's simulator, with the faults and hostile mode tests switch on."""
    with HostileCollegeBoard() as sim:
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
        if wait_ready:  # READY=1 no longer waits for the mailbox: wait for both
            daemon.wait_event("daemon.ready", timeout=30)
            daemon.wait_event("imap.connected", timeout=30)
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
