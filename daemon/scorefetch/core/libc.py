"""The C library through ctypes, loaded once: what the standard library does not wrap
(renameat2 in localfs.py; mallopt and malloc_trim in memory.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library (errno kept for ctypes.get_errno), or None where it cannot be found
    (`find_library` runs ldconfig: once per process, not per call)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
