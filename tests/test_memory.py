"""core/memory.py against the real C library: glibc here (the CI runs Debian); elsewhere
both calls must say they did nothing rather than fail."""

from __future__ import annotations

import json
import os

import pytest

from scorefetch.core import memory
from tests.support import fresh_python


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


GLIBC = _glibc()


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_glibc_takes_the_arena_limit_and_trims() -> None:
    """In a fresh interpreter: mallopt accepts the limit before threads start; after a
    burst of freed allocations, malloc_trim hands memory back and the resident size falls."""
    script = """
import sys
from scorefetch.core import memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
assert memory.limit_arenas()
blocks = [bytearray(4000) for _ in range(20000)]  # malloc'd (over 512 bytes), not mmap'd
keep = bytearray(4000)  # the heap's top stays in use: only a trim gives the rest back
del blocks
before = rss()
assert memory.trim()
print(before - rss())
"""
    out = fresh_python(script)
    assert int(out.stdout) > 10_000  # kB: most of the 80 MB freed


def test_an_operators_arena_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """MALLOC_ARENA_MAX in the environment (a unit's Environment=) is glibc's to read:
    mallopt would override it, so it is not called."""
    called: list[object] = []

    class Libc:
        def mallopt(self, *args: object) -> int:
            called.append(args)
            return 1

    monkeypatch.setattr(memory, "libc", Libc)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    assert memory.limit_arenas() is False
    assert called == []
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert memory.limit_arenas() is True
    assert len(called) == 1


def test_without_the_c_library_both_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "libc", lambda: None)
    assert memory.limit_arenas() is False
    assert memory.trim() is False


def test_every_library_the_daemon_may_load_leaves_out_what_it_never_uses() -> None:
    """In a fresh interpreter, the daemon's modules and every library a configuration may
    load (paramiko for a `forward`, msal for `xoauth2`, the metrics) import no encoding
    guesser (requests', under msal), no invoke (paramiko's, for ssh_config's `Match
    exec`), and so no asyncio or unittest, and no prometheus_client (its http.server,
    wsgiref, urllib.request): megabytes resident for the life of the service.
    paramiko's reading of the absence is checked too: no `Match exec`, nothing else lost."""
    script = """
import json, sys
import scorefetch.cli, scorefetch.service
import msal, paramiko, requests
import scorefetch.observers.metrics, scorefetch.observers.listener
from paramiko.config import invoke_import_error
unwanted = ["charset_normalizer", "chardet", "invoke", "asyncio", "unittest", "bs4", "structlog",
            "prometheus_client", "wsgiref"]
print(json.dumps([[m for m in unwanted if m in sys.modules and sys.modules[m] is not None],
                  type(invoke_import_error).__name__]))
"""
    out = fresh_python(script)
    assert json.loads(out.stdout) == [[], "ModuleNotFoundError"]


def test_threads_show_their_names_to_the_os() -> None:
    """After name_threads(), a thread's Python name is its name in /proc (top -H, ps -L),
    cut to 15 bytes; the hook leaves no profile function behind in any thread. In a fresh
    interpreter: threading's profile hook is process-wide from then on."""
    script = """
import json, sys, threading
from scorefetch.core import libc
libc.name_threads()
seen = {}
def look(key):
    me = threading.current_thread()
    seen[key] = [open(f"/proc/self/task/{me.native_id}/comm").read().strip(), sys.getprofile()]
threads = [threading.Thread(target=look, args=(n,), name=n)
           for n in ("engine", "collegeboard-mailbox", "ünïcode")]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps([seen[t.name][0] for t in threads] + [seen["engine"][1] is None]))
"""
    out = fresh_python(script)
    assert json.loads(out.stdout) == ["engine", "collegeboard-ma", "?n?code", True]
