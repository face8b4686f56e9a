"""The real `scorefetch run` as a child process against the sandbox, with its config.

Used by `scorefetch demo`, the end-to-end tests and the benchmarks alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.encoura import EncouraSimulator
from scorefetch.sandbox.imapserver import ImapServer

Event = dict[str, Any]


def write_config(
    folder: Path,
    sim: CollegeBoardSimulator,
    imap: ImapServer,
    *,
    imap_folder: str = "INBOX",
    formats: Sequence[str] = ("csv",),
    retry_schedule: Sequence[str] = ("2s", "5s"),
    lookback_days: int = 14,
    poll_interval: str = "0",
    extra_collegeboard: str = "",
    extra_imap: str = "",
    imap_auth: str = "",
    imap_address: tuple[str, int] | None = None,
    imap_security: str = "plain",
    encoura: EncouraSimulator | None = None,
    product_keys: Sequence[str] = ("score-reporter",),
    encoura_poll_interval: str = "15m",
) -> Path:
    """A config for the sandbox under `folder`, secrets in 0600 files beside it.
    `imap_auth` (indented YAML lines) replaces the IMAP password with an `auth:` block;
    `imap_address` sends the daemon elsewhere than `imap` itself (a FaultProxy before it),
    with `imap_security` (tls or starttls where the server has a certificate)."""
    host, port = imap_address or (imap.host, imap.port)
    secrets = folder / "credentials"
    secrets.mkdir(mode=0o700, exist_ok=True)
    values = [("imap_password", imap.password), ("collegeboard_password", sim.password)]
    if encoura is not None:
        values += [("encoura_api_key", encoura.api_key), ("encoura_password", encoura.password)]
    for name, value in values:
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    path = folder / "config.yaml"
    path.write_text(f"""\
# Written for the sandbox: the daemon against local stand-ins on loopback.
download_dir: {folder / "files"}
state_dir: {folder / "state"}
log:
  format: json
  level: info
imap:
  host: {host}
  port: {port}
  security: {imap_security}
  username: "{imap.username}"
{imap_auth.rstrip() or "  password_file: credentials/imap_password"}
  folder: "{imap_folder}"
  lookback_days: {lookback_days}
{extra_imap}collegeboard:
  base_url: {sim.base_url}
  username: "{sim.username}"
  password_file: credentials/collegeboard_password
  formats: [{", ".join(formats)}]
  senders: ["@collegeboard.org"]
  download_hosts: ["{sim.download_host}"]
  retry_schedule: [{", ".join(retry_schedule)}]
  poll_interval: {poll_interval}         # listing-based reconciliation; 0 is off
{extra_collegeboard}""")
    if encoura is not None:
        with path.open("a") as out:
            out.write(f"""\
encoura:
  enabled: true
  base_url: {encoura.base_url}
  api_key_file: credentials/encoura_api_key
  username: "{encoura.username}"
  password_file: credentials/encoura_password
  product_keys: [{", ".join(product_keys)}]
  poll_interval: {encoura_poll_interval}
  download_hosts: ["{encoura.download_host}"]
  retry_schedule: [{", ".join(retry_schedule)}]
""")
    return path


class DaemonProcess:
    """`scorefetch run -c CONFIG` as a child; its JSON log lines are kept and can be waited on."""

    def __init__(
        self,
        config: Path,
        *,
        echo: Callable[[Event], None] | None = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        module: str = "scorefetch",
    ) -> None:
        """`python`: the interpreter whose `scorefetch` runs (the benchmarks run another
        release's from its own venv); `module`: another entry point (the daemon with
        another vendor registered, tests/dropfolder)."""
        # PYTHONFAULTHANDLER: a daemon that will not stop is sent SIGABRT and says where
        # each of its threads is (see stop) before it is killed.
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
        if env is None or "NOTIFY_SOCKET" not in env:
            environ.pop("NOTIFY_SOCKET", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [python, "-m", module, "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=environ,
        )
        self.lines: list[str] = []  # every stdout and stderr line, for secret checks
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._echo = echo
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "line": line}
            if not isinstance(event, dict):
                event = {"event": "output", "line": line}
            event["_at"] = time.monotonic()
            with self._cond:
                self.lines.append(line)
                self.events.append(event)
                self._cond.notify_all()
            if self._echo is not None:
                self._echo(event)

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 30, start: int = 0
    ) -> Event:
        """The first event from index `start` on that matches; TimeoutError naming the last ones."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and index >= len(self.events)):
                    tail = [e.get("event") for e in self.events[-8:]]
                    raise TimeoutError(f"no matching log event within {timeout}s; last: {tail}")
                self._cond.wait(min(remaining, 0.2))

    def named(self, name: str, **fields: Any) -> list[Event]:
        """Every event so far called `name` whose fields match `fields`."""
        with self._cond:
            return [
                e
                for e in self.events
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_event(self, name: str, timeout: float = 30, **fields: Any) -> Event:
        return self.wait_for(
            lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()),
            timeout,
        )

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM, then the exit code. A daemon still there after `timeout` is sent
        SIGABRT (its threads' stacks and its last lines go to stderr, for the test's
        report), then killed: -6 or -9."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.kill()
            for reader in self._readers:
                reader.join(timeout=5)
            with self._cond:
                tail = self.lines[-80:]
            print(f"daemon did not stop within {timeout:g}s; its last lines:", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def pretty(event: Event) -> str:
    """One event as a readable line for people watching the demo."""
    stamp = str(event.get("timestamp", ""))[11:23]
    rest = {k: v for k, v in event.items() if k not in ("timestamp", "event", "level", "_at")}
    fields = "  ".join(f"{k}={v}" for k, v in rest.items())
    return f"  {stamp}  {event.get('event', ''):<22} {fields}"
