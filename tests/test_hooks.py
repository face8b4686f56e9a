"""Hooks: which event runs which hook with what environment; a failing or hanging hook is
logged and never holds up a delivery; end to end with the real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scorefetch.config import HooksConfig
from scorefetch.core.errors import Failure
from scorefetch.core.events import (
    AuthFailing,
    DeliveryFailed,
    Downloaded,
    ForwardFailed,
    ForwardUploaded,
    Skipped,
)
from scorefetch.observers.hooks import Hooks, facts, hook_environment
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.imapserver import PymapServer
from tests.support import LogLines, wait_until

DUMP_ENV = f"""#!{sys.executable}
# Appends one JSON line per run: the arguments and the whole environment.
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({{"argv": " ".join(sys.argv[2:]), "env": dict(os.environ)}}) + "\\n")
"""


@pytest.fixture
def dump_env(tmp_path: Path) -> tuple[Path, Path]:
    """A hook script that records its argv and environment, and the file it writes."""
    script = tmp_path / "dump-env"
    script.write_text(DUMP_ENV)
    script.chmod(0o755)
    return script, tmp_path / "runs.jsonl"


def runs(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


def landed(tmp_path: Path) -> Downloaded:
    return Downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 12, "ab" * 32, 0.1)


def test_facts_choose_the_hook_and_its_variables(tmp_path: Path) -> None:
    """Downloads and uploads run on_delivery; only final failures run on_failure; credential
    failures reach on_failure once, as auth.failing, not per file."""
    which, env = facts(landed(tmp_path)) or ("", {})
    assert which == "on_delivery"
    assert env == {
        "EVENT": "delivery.downloaded",
        "VENDOR": "collegeboard",
        "FILENAME": "a.csv",
        "PATH": str(tmp_path / "a.csv"),
        "BYTES": "12",
        "SHA256": "ab" * 32,
    }

    def failed(kind: Failure, will_retry: bool) -> DeliveryFailed:
        return DeliveryFailed("collegeboard", "a.csv", "a.csv", 2, "boom", kind, will_retry)

    assert facts(failed(Failure.NOT_FOUND, True)) is None
    assert facts(failed(Failure.NOT_FOUND, False)) == (
        "on_failure",
        {
            "EVENT": "delivery.failed",
            "VENDOR": "collegeboard",
            "FILENAME": "a.csv",
            "ERROR": "boom",
        },
    )
    assert facts(failed(Failure.AUTH, False)) is None
    assert facts(AuthFailing("collegeboard", "401", "a.csv")) == (
        "on_failure",
        {"EVENT": "auth.failing", "VENDOR": "collegeboard", "FILENAME": "a.csv", "ERROR": "401"},
    )
    assert facts(Skipped("collegeboard", "a.txt", "format")) is None
    up = ForwardUploaded("slate", "encoura", "b.csv", tmp_path / "b.csv", "/in/b.csv", 5, "cd", 0.2)
    assert facts(up) == (
        "on_delivery",
        {
            "EVENT": "forward.uploaded",
            "DESTINATION": "slate",
            "VENDOR": "encoura",
            "FILENAME": "b.csv",
            "PATH": str(tmp_path / "b.csv"),
            "REMOTE_PATH": "/in/b.csv",
            "BYTES": "5",
            "SHA256": "cd",
        },
    )
    retrying = ForwardFailed("slate", "encoura", "b.csv", tmp_path / "b.csv", 1, "refused", True)
    assert facts(retrying) is None
    final = ForwardFailed("slate", "encoura", "b.csv", tmp_path / "b.csv", 5, "refused", False)
    assert (facts(final) or ("", {}))[1]["EVENT"] == "forward.failed"


def test_hook_environment_carries_no_daemon_secrets() -> None:
    """Only PATH, locale and SCOREFETCH_* reach a hook: not $CREDENTIALS_DIRECTORY, not the
    notify socket, not anything else the daemon's environment holds."""
    environ = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "CREDENTIALS_DIRECTORY": "/run/credentials/scorefetch.service",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "IMAP_PASSWORD": "hunter2",
    }
    env = hook_environment({"EVENT": "delivery.downloaded"}, environ)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "SCOREFETCH_EVENT": "delivery.downloaded",
    }
    assert hook_environment({}, {})["PATH"].startswith("/usr/local/sbin")


def test_hook_runs_with_its_arguments_and_facts(
    tmp_path: Path, dump_env: tuple[Path, Path]
) -> None:
    """A hook is run as given (argv, no shell) with the event's facts in its environment."""
    script, out = dump_env
    hooks = Hooks(
        HooksConfig(on_delivery=(str(script), str(out), "x y;z")), {"PATH": "/usr/bin:/bin"}
    )
    hooks(landed(tmp_path))
    assert hooks.close(10)
    (run,) = runs(out)
    assert run["argv"] == "x y;z"
    env = run["env"]
    assert env["SCOREFETCH_EVENT"] == "delivery.downloaded"
    assert env["SCOREFETCH_FILENAME"] == "a.csv"
    assert env["SCOREFETCH_BYTES"] == "12"
    assert not {k for k in env if k.startswith(("CREDENTIALS", "NOTIFY", "IMAP"))}


def test_failing_hook_is_logged(tmp_path: Path, log_lines: LogLines) -> None:
    """A non-zero exit and a program that cannot start are `hook.failed` lines with the
    exit status and the output's tail."""
    failing = tmp_path / "fails"
    failing.write_text("#!/bin/sh\necho 'no route to mail server' >&2\nexit 3\n")
    failing.chmod(0o755)
    hooks = Hooks(HooksConfig(on_delivery=(str(failing),), on_failure=("/nonexistent/hook",)))
    hooks(landed(tmp_path))
    hooks(DeliveryFailed("encoura", "u1", "e.csv", 4, "gone", Failure.FATAL, False))
    assert hooks.close(10)
    failures = {e["hook"]: e for e in log_lines.events("hook.failed")}
    assert failures[str(failing)]["error"] == "exit status 3"
    assert failures[str(failing)]["output"] == "no route to mail server"
    assert failures[str(failing)]["hook_event"] == "delivery.downloaded"
    assert failures["/nonexistent/hook"]["error"].startswith("cannot start")
    assert failures["/nonexistent/hook"]["filename"] == "e.csv"


def test_hanging_hook_is_killed_whole_and_never_blocks(tmp_path: Path, log_lines: LogLines) -> None:
    """The publisher returns at once; a hook past its timeout is killed with everything it
    started (its process group), and logged."""
    child_pid = tmp_path / "child.pid"
    hang = tmp_path / "hang"
    hang.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_pid}\nwait\n")
    hang.chmod(0o755)
    hooks = Hooks(HooksConfig(on_delivery=(str(hang),), timeout=1.0))
    for _ in range(3):
        hooks(landed(tmp_path))
    assert log_lines.events("hook.failed") == []  # had a call waited, a timeout would show
    wait_until(lambda: len(log_lines.events("hook.failed")) == 3, timeout=15)
    assert all(e["error"] == "timeout after 1s (killed)" for e in log_lines.events("hook.failed"))
    pid = int(child_pid.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), timeout=5)
    hooks.close(1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "Z"


# --- end to end: the real daemon against the sandbox ---


@pytest.fixture
def imap_server(pymap_server: PymapServer) -> PymapServer:
    """Hooks do not depend on the IMAP server: pymap only."""
    return pymap_server


def start_with(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: PymapServer,
    imap_folder: str,
    start_daemon: Callable[..., DaemonProcess],
    extra: str,
    **config: Any,
) -> DaemonProcess:
    path = write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder, **config)
    with path.open("a") as out:
        out.write(extra)
    return start_daemon()


@pytest.mark.e2e
def test_daemon_runs_hooks_and_pages_once_per_credential_failure(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: PymapServer,
    imap_folder: str,
    start_daemon: Callable[..., DaemonProcess],
    dump_env: tuple[Path, Path],
) -> None:
    """A landed file runs on_delivery; College Board refusing the password for two files
    runs on_failure once (auth.failing), and the next file that lands is auth.recovered."""
    script, out = dump_env
    hooks = f"""\
hooks:
  on_delivery: ["{script}", "{out}", "delivered"]
  on_failure: ["{script}", "{out}", "failed"]
  timeout: 10s
  max_parallel: 1
"""
    daemon = start_with(
        tmp_path, cb_sim, imap_server, imap_folder, start_daemon, hooks, retry_schedule=()
    )
    cb_sim.publish("ok_1.csv", b"a,b\n1,2\n")
    imap_server.deliver(mail.notification("ok_1.csv"), imap_folder)
    daemon.wait_event("delivery.downloaded", filename="ok_1.csv")
    wait_until(lambda: len(runs(out)) == 1)
    (run,) = runs(out)
    assert run["argv"] == "delivered"
    assert run["env"]["SCOREFETCH_PATH"] == str(tmp_path / "files" / "collegeboard" / "ok_1.csv")
    assert run["env"]["SCOREFETCH_SHA256"] == cb_sim.sha256_of("ok_1.csv")

    cb_sim.inject("file", 401, count=10)  # the password expired
    for name in ("late_1.csv", "late_2.csv"):
        cb_sim.publish(name, b"x\n")
        imap_server.deliver(mail.notification(name), imap_folder)
        daemon.wait_event("delivery.failed", filename=name, will_retry=False)
    daemon.wait_event("auth.failing", vendor="collegeboard")
    assert len(daemon.named("auth.failing")) == 1

    cb_sim.clear_faults()  # someone reset the password
    cb_sim.publish("ok_2.csv", b"c\n")
    imap_server.deliver(mail.notification("ok_2.csv"), imap_folder)
    daemon.wait_event("auth.recovered", vendor="collegeboard")
    ok_2 = str(tmp_path / "files" / "collegeboard" / "ok_2.csv")
    # One hook at a time, in order: once ok_2's has run, any page for the failures has too.
    wait_until(lambda: runs(out)[-1:] != [] and runs(out)[-1]["env"].get("SCOREFETCH_PATH") == ok_2)
    assert [r["argv"] for r in runs(out)] == ["delivered", "failed", "delivered"], (
        "one page per run of credential failures"
    )
    failed = runs(out)[1]
    assert failed["env"]["SCOREFETCH_EVENT"] == "auth.failing"
    assert "401" in failed["env"]["SCOREFETCH_ERROR"]
    assert not daemon.named("hook.failed")


@pytest.mark.e2e
def test_hanging_hook_does_not_delay_deliveries(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: PymapServer,
    imap_folder: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """With an on_delivery hook that hangs, every file still lands, and the daemon stops
    cleanly. No clock: the hook cannot end before the test lets it (it waits for a file),
    so had a delivery waited for its hook, the second file would never land. (The killing
    at the timeout: test_hanging_hook_is_killed_whole_and_never_blocks.)"""
    release, began = tmp_path / "release", tmp_path / "began"
    hang = tmp_path / "hang"
    hang.write_text(f"#!/bin/sh\ntouch {began}\nwhile [ ! -e {release} ]; do sleep 0.1; done\n")
    hang.chmod(0o755)
    extra = f'hooks:\n  on_delivery: ["{hang}"]\n  timeout: 5m\n  max_parallel: 1\n'
    daemon = start_with(tmp_path, cb_sim, imap_server, imap_folder, start_daemon, extra)
    names = [f"burst_{i}.csv" for i in range(5)]
    for name in names:
        cb_sim.publish(name, name.encode())
    for name in names:
        imap_server.deliver(mail.notification(name), imap_folder)
    for name in names:
        daemon.wait_event("delivery.downloaded", filename=name, timeout=60)
    wait_until(began.exists, timeout=30)  # the first hook runs, and waits
    release.touch()
    assert daemon.stop() == 0


@pytest.mark.e2e
def test_a_refused_mailbox_login_pages_once_and_recovers(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    imap_server: PymapServer,
    imap_folder: str,
    start_daemon: Callable[..., DaemonProcess],
    dump_env: tuple[Path, Path],
) -> None:
    """The mailbox refusing the password is one auth.failing (vendor=imap) and one
    on_failure run, not one per retry or restart; `status` shows it; the next session that
    logs in is auth.recovered."""
    script, out = dump_env
    hooks = f'hooks:\n  on_failure: ["{script}", "{out}", "failed"]\n  timeout: 10s\n'
    path = write_config(tmp_path, cb_sim, imap_server, imap_folder=imap_folder)
    with path.open("a") as config:
        config.write(hooks)
    secret = tmp_path / "credentials" / "imap_password"
    secret.write_text("not-the-password\n")  # someone changed it on the server
    for _ in range(2):  # a restart with the same stale password stays quiet
        daemon = start_daemon(wait_ready=False)
        daemon.wait_event("imap.auth_failed", timeout=30)
        assert daemon.stop() == 0
    assert [r["env"]["SCOREFETCH_VENDOR"] for r in runs(out)] == ["imap"]
    assert runs(out)[0]["env"]["SCOREFETCH_EVENT"] == "auth.failing"
    status = subprocess.run(
        [sys.executable, "-m", "scorefetch", "status", "-c", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout)["watcher"]["auth.imap"]["value"].startswith("failing")
    secret.write_text(imap_server.password + "\n")
    daemon = start_daemon()
    daemon.wait_event("auth.recovered", vendor="imap")
    assert len(runs(out)) == 1


def test_a_fact_with_nul_and_controls_still_runs_the_hook(
    dump_env: tuple[Path, Path], log_lines: LogLines
) -> None:
    """A vendor's error text with a NUL (which no environment variable can hold: Popen
    refused the hook outright) or terminal escapes runs on_failure all the same, with
    the fact cleaned."""
    script, out = dump_env
    hooks = Hooks(HooksConfig(on_failure=(str(script), str(out), "failed"), timeout=10.0))
    error = "refused\x00 by \x1b[31mvendor\x1b[0m\r\nFAKE: line"
    hooks(DeliveryFailed("encoura", "u1", "e\x00.csv", 4, error, Failure.FATAL, False))
    assert hooks.close(10)
    assert log_lines.events("hook.failed") == []
    (run,) = runs(out)
    env = run["env"]
    assert "\x00" not in env["SCOREFETCH_ERROR"] and "\x1b" not in env["SCOREFETCH_ERROR"]
    assert "\n" not in env["SCOREFETCH_ERROR"] and "refused" in env["SCOREFETCH_ERROR"]
    assert "\x00" not in env["SCOREFETCH_FILENAME"]


def test_a_files_name_and_path_reach_the_hook_exactly(tmp_path: Path) -> None:
    """A hook copies the file it is told of: a vendor's name with two spaces, `?` or
    `password=` in it is that file's name, not one to tidy (the hook copied another file,
    or none). Text that is not a plain name is still cleaned."""
    for name in ("4300 Smith  Jones.csv", "Report?id=4300.csv", "4300 password=2026.csv"):
        path = tmp_path / name
        env = hook_environment(facts(Downloaded("collegeboard", name, path, 1, "ab", 0.1))[1], {})  # type: ignore[index]
        assert env["SCOREFETCH_FILENAME"] == name and env["SCOREFETCH_PATH"] == str(path)
    failed = DeliveryFailed(
        "encoura", "u", "a\x1b[2Jb.csv", 1, "x password=hunter2", Failure.FATAL, False
    )
    env = hook_environment(facts(failed)[1], {})  # type: ignore[index]
    assert "\x1b" not in env["SCOREFETCH_FILENAME"] and "hunter2" not in env["SCOREFETCH_ERROR"]
