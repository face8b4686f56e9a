"""`hooks.on_delivery` / `hooks.on_failure`: programs run without a shell, the facts in
SCOREFETCH_* environment variables, a few at a time, each with a timeout.

A hook that fails, hangs or cannot start is logged (`hook.failed`) and never fails or
delays a delivery: the publishing thread only queues it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import IO

from scorefetch.config import HooksConfig
from scorefetch.core import logs
from scorefetch.core.errors import Failure
from scorefetch.core.events import (
    AuthFailing,
    DeliveryFailed,
    Digest,
    Downloaded,
    Event,
    ForwardFailed,
    ForwardUploaded,
    LedgerFailing,
    LedgerRecovered,
    Overdue,
    Quiet,
    Recovered,
    Suspect,
)
from scorefetch.core.logs import plain_name, untrusted

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")  # nothing that can hold a secret
MAX_WAITING = 256  # hooks queued beyond this are dropped (and logged): a flood never piles up
OUTPUT_TAIL = 400  # characters of a failed hook's output kept in its log line


def facts(event: Event) -> tuple[str, dict[str, str]] | None:
    """Which hook an event runs (`on_delivery` / `on_failure`) and its SCOREFETCH_* variables;
    None for events no hook hears. A credential failure reaches `on_failure` once per run
    (as `auth.failing`), not once per file."""
    match event:
        case Downloaded():
            return "on_delivery", {
                "EVENT": "delivery.downloaded",
                "VENDOR": event.vendor,
                "FILENAME": event.path.name,
                "PATH": str(event.path),
                "BYTES": str(event.size),
                "SHA256": event.sha256,
            }
        case DeliveryFailed(will_retry=False) if event.kind is not Failure.AUTH:
            return "on_failure", {
                "EVENT": "delivery.failed",
                "VENDOR": event.vendor,
                "FILENAME": event.filename,
                "ERROR": event.error,
            }
        case ForwardUploaded():
            return "on_delivery", {
                "EVENT": "forward.uploaded",
                "DESTINATION": event.destination,
                "VENDOR": event.vendor,
                "FILENAME": event.filename,
                "PATH": str(event.path),
                "REMOTE_PATH": event.remote_path,
                "BYTES": str(event.bytes),
                "SHA256": event.sha256,
            }
        case ForwardFailed(will_retry=False) if event.kind is not Failure.AUTH:
            return "on_failure", {
                "EVENT": "forward.failed",
                "DESTINATION": event.destination,
                "VENDOR": event.vendor,
                "FILENAME": event.filename,
                "PATH": str(event.path),
                "ERROR": event.error,
            }
        case LedgerFailing():
            return "on_failure", {
                "EVENT": "ledger.failing",
                "ERROR": event.error,
                "SINCE": event.since,
            }
        case LedgerRecovered():
            return "on_delivery", {"EVENT": "ledger.recovered", "DOWN_S": str(round(event.down_s))}
        case AuthFailing():
            return "on_failure", {
                "EVENT": "auth.failing",
                "VENDOR": event.vendor,
                "FILENAME": event.filename,
                "ERROR": event.error,
            }
        case Overdue():
            return "on_failure", {
                "EVENT": "delivery.overdue",
                "VENDOR": event.vendor,
                "KEY": event.key,
                "FILENAME": event.filename,
                "ANNOUNCED_AT": event.announced_at,
                "STAGE": event.stage,
                "ERROR": event.error,
            }
        case Recovered():
            return "on_delivery", {
                "EVENT": "delivery.recovered",
                "VENDOR": event.vendor,
                "KEY": event.key,
                "FILENAME": event.filename,
                "LATE_S": str(round(event.late_s)),
            }
        case Suspect():
            return "on_failure", {
                "EVENT": "delivery.suspect",
                "VENDOR": event.vendor,
                "FILENAME": event.filename,
                "PATH": str(event.path),
                "BYTES": str(event.bytes),
                "EXPECTED_BYTES": "" if event.expected_bytes is None else str(event.expected_bytes),
                "ROWS": "" if event.rows is None else str(event.rows),
                "EXPECTED_ROWS": "" if event.expected_rows is None else str(event.expected_rows),
            }
        case Quiet():
            return "on_failure", {
                "EVENT": "source.quiet",
                "VENDOR": event.vendor,
                "SINCE": event.since,
            }
        case Digest():
            variables = {"EVENT": "daemon.digest", "SUMMARY": event.summary}
            for vendor, counts in event.counts.items():
                for what, n in counts.items():
                    variables[f"{vendor.upper()}_{what.upper()}"] = str(n)
            return "on_digest", variables
    return None


MAX_FACT = 4096  # characters of one hook value


NAMES = frozenset({"FILENAME", "PATH", "REMOTE_PATH"})  # files a hook acts on: exact


def clean_fact(value: str, key: str = "") -> str:
    """A hook value that can break no hook: no NUL (it would stop the exec), no control
    characters or terminal escapes, no secret, at most MAX_FACT characters. A file's name
    or path goes as it is when it is plain (a hook copies that very file; two spaces or a
    `password=` in a vendor's name are part of it), else cleaned like the rest."""
    if key in NAMES and plain_name(value):
        return value
    return untrusted(value, MAX_FACT)


def hook_environment(variables: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment: PATH and locale from ours, then SCOREFETCH_*. Never
    $CREDENTIALS_DIRECTORY, $NOTIFY_SOCKET or anything else the daemon was given."""
    env = {key: environ[key] for key in PASSED_THROUGH if key in environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({f"SCOREFETCH_{key}": clean_fact(value, key) for key, value in variables.items()})
    return env


class Hooks:
    """An events listener that runs the configured hooks on a small pool of threads."""

    def __init__(self, config: HooksConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = dict(os.environ if environ is None else environ)
        self._pool = ThreadPoolExecutor(config.max_parallel, thread_name_prefix="hook")
        self._lock = threading.Lock()
        self._futures: set[Future[bool]] = set()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._closed = False
        self._log = logs.get()

    def __call__(self, event: Event) -> None:
        found = facts(event)
        if found is None:
            return
        which, variables = found
        argv: tuple[str, ...] = getattr(self.config, which)
        if not argv:
            return
        with self._lock:
            if self._closed:
                return
            if len(self._futures) >= MAX_WAITING:
                self._failed(argv, variables, f"dropped: {MAX_WAITING} hooks already waiting")
                return
            future = self._pool.submit(self._run_logged, argv, variables)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run_logged(self, argv: tuple[str, ...], variables: Mapping[str, str]) -> bool:
        try:
            return self.run(argv, variables)
        except Exception as exc:  # noqa: BLE001 - a pool thread has nobody else to tell
            self._failed(argv, variables, f"internal error: {exc!r}")
            return False

    def run(self, argv: tuple[str, ...], variables: Mapping[str, str]) -> bool:
        """Run one hook to its end or its timeout; True when it exited 0.

        Its output goes to an unnamed file, not a pipe: the hook is over when its process
        exits, not when every process it started (a daemon of its own, in another process
        group) has closed the pipe; and its output costs no memory however much it is."""
        try:
            with tempfile.TemporaryFile() as output:
                proc = subprocess.Popen(
                    argv,
                    env=hook_environment(variables, self._environ),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    close_fds=True,
                    start_new_session=True,  # its own process group: a timeout kills it all
                )
                error = self._wait(proc)
                tail = _tail(output) if error else b""
        except OSError as exc:
            self._failed(argv, variables, f"cannot start: {exc.strerror or exc}")
            return False
        if error:
            self._failed(argv, variables, error, tail)
        return not error

    def _wait(self, proc: subprocess.Popen[bytes]) -> str:
        """Wait for `proc` (killing its group at the timeout); what went wrong, or ''."""
        with self._lock:
            self._running.add(proc)
        try:
            proc.wait(timeout=self.config.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            return f"timeout after {self.config.timeout:g}s (killed)"
        finally:
            with self._lock:
                self._running.discard(proc)
        status = proc.returncode
        if status < 0:
            return f"killed by signal {-status}"
        return f"exit status {status}" if status else ""

    def _failed(
        self, argv: tuple[str, ...], variables: Mapping[str, str], error: str, output: bytes = b""
    ) -> None:
        tail = output.decode("utf-8", "replace").strip()[-OUTPUT_TAIL:]
        self._log.warning(
            "hook.failed",
            hook=argv[0],
            hook_event=variables.get("EVENT"),  # `event` is the log line's own name
            filename=variables.get("FILENAME"),
            error=error,
            **({"output": tail} if tail else {}),
        )

    def close(self, timeout: float) -> bool:
        """Take no more; let queued and running hooks finish for up to `timeout` seconds,
        then kill what still runs. True when all finished."""
        with self._lock:
            self._closed = True
            pending = set(self._futures)
        _, not_done = wait_futures(pending, timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = list(self._running)
        for proc in running:
            _kill_group(proc)
        return not not_done


def _tail(output: IO[bytes]) -> bytes:
    """The last bytes of a hook's output file (enough for OUTPUT_TAIL characters)."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(size - 4 * OUTPUT_TAIL, 0))
    return output.read()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
