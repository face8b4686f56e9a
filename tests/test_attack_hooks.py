"""A hook that starts a daemon of its own (setsid, its own process group) which keeps
the hook's stdout open: the hook had exited 0, but the daemon waited for the end of its
output, called it a timeout, and then waited again with no limit at all, so a hook
thread (and the daemon's exit, which joins them) hung as long as that child lived."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorefetch.config import HooksConfig
from scorefetch.core.events import Downloaded
from scorefetch.observers.hooks import Hooks
from tests.support import LogLines


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    """Where the hook writes its detached child's pid; the child is killed afterwards."""
    path = tmp_path / "child.pid"
    yield path
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text()), signal.SIGKILL)


def _hook(tmp_path: Path, pid_file: Path, then: str) -> str:
    script = tmp_path / "hook"
    script.write_text(
        f"#!/bin/sh\necho starting the uploader\nsetsid sleep 60 &\necho $! > {pid_file}\n{then}\n"
    )
    script.chmod(0o755)
    return str(script)


def _landed(tmp_path: Path) -> Downloaded:
    return Downloaded("collegeboard", "a.csv", tmp_path / "a.csv", 12, "ab" * 32, 0.1)


def test_a_hook_that_exits_0_leaving_a_detached_child_succeeds_at_once(
    tmp_path: Path, pid_file: Path, log_lines: LogLines
) -> None:
    """A hook is over when its own process exits, even if a detached child holds its output."""
    hooks = Hooks(HooksConfig(timeout=30.0))  # True: over before its timeout (the child: 60 s)
    assert hooks.run((_hook(tmp_path, pid_file, "exit 0"),), {"EVENT": "delivery.downloaded"})
    assert log_lines.events("hook.failed") == []


def test_a_hanging_hook_with_a_detached_child_is_still_over_at_its_timeout(
    tmp_path: Path, pid_file: Path, log_lines: LogLines
) -> None:
    """A hook that hangs is killed at its timeout; its detached child cannot hold the daemon."""
    hooks = Hooks(HooksConfig(on_delivery=(_hook(tmp_path, pid_file, "sleep 60"),), timeout=1.0))
    hooks(_landed(tmp_path))
    assert hooks.close(30), "the hook thread is still waiting"  # the child: 60 s
    (failure,) = log_lines.events("hook.failed")
    assert failure["error"] == "timeout after 1s (killed)"
    assert failure["output"] == "starting the uploader"
