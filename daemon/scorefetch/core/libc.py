"""The C library through ctypes, loaded once: what the standard library does not wrap
(renameat2 in localfs.py; mallopt and malloc_trim in memory.py)."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library the interpreter already runs with (errno kept for ctypes.get_errno):
    the process's own symbols, so no `find_library` (an ldconfig subprocess, and
    ctypes.util with subprocess imported for good), or None where there are none."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
