"""Checks shared by the tests."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What must never reach a log line: presigned query parameters and their signature.
PRESIGNED = re.compile(r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Expires=\d", re.I)


ROOT = Path(__file__).resolve().parents[1]


def fresh_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`script` (its argv: `args`) run by a fresh interpreter from the repository's root,
    with this tree's daemon and tests importable and nothing of this process's state or
    environment but PATH. Its stderr is the failure's message when it exits non-zero."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "daemon"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert done.returncode == 0, done.stderr
    return done


def assert_no_secrets(lines: list[str], secrets: list[str]) -> None:
    """No secret value and no presigned query string in any line."""
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"a secret leaked into a log line: {line[:200]}"
        assert not PRESIGNED.search(line), f"a presigned URL query leaked: {line[:200]}"


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Poll until `condition()` holds; a simulator's server thread may still be finishing
    its bookkeeping after the client has read the last byte."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden `.part` files included, by its path relative to
    `folder` (for one vendor's flat folder: by name)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class LogLines(io.StringIO):
    """The JSON lines logged in this process during one test (the `log_lines` fixture)."""

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Every line so far as a dict, or only those called `name` whose fields match."""
        found = [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]
        return [
            e
            for e in found
            if (name is None or e.get("event") == name)
            and all(e.get(k) == v for k, v in fields.items())
        ]


class ServerOutsideE2e(RuntimeError):
    """A test not marked e2e tried to start a server or the daemon (see conftest.py)."""


def starts_a_server(argv: object) -> str | None:
    """What a command line would start that only an `e2e` test may: Dovecot, sshd, pymap,
    or the daemon (`scorefetch run`, `scorefetch demo`); None for anything else."""
    if isinstance(argv, str | bytes | os.PathLike):
        args = shlex.split(os.fsdecode(argv))
    else:
        args = [os.fsdecode(a) if isinstance(a, bytes | os.PathLike) else str(a) for a in argv]
    if not args:
        return None
    program = Path(args[0]).name
    if program in ("dovecot", "sshd"):
        return program
    if any("pymap.main" in a for a in args):
        return "pymap"
    for here, following in itertools.pairwise(args):
        if Path(here).name == "scorefetch" and following in ("run", "demo"):
            return f"scorefetch {following}"
    return None


def encoura_config(sim: Any, **overrides: Any) -> Any:
    """An EncouraConfig for the Encoura simulator `sim` (its account, its download host),
    with `overrides` on top."""
    from scorefetch.encoura.settings import EncouraConfig

    return EncouraConfig.model_validate(
        {
            "enabled": True,
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "username": sim.username,
            "password": sim.password,
            "download_hosts": [sim.download_host],
            **overrides,
        }
    )
