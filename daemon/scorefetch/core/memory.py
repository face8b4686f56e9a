"""The C library's allocator, asked to keep the resident size of a long-running daemon low.

glibc gives each thread that allocates its own arena (up to eight per core), each holding
on to its freed memory; the daemon's threads take turns at the GIL, so two arenas serve
them as well as eight (the setting `MALLOC_ARENA_MAX=2` is the usual advice for Python
services). Start-up (imports, the config's validation, the ledger's migration) leaves freed
memory inside the heap that glibc keeps for reuse, and so does a burst of work;
`malloc_trim` hands it back each time the engine goes to rest (the first time within
ACTIVE_S of start-up). Elsewhere than glibc (musl), both do nothing.
"""

from __future__ import annotations

import ctypes
import os

from scorefetch.core.libc import libc

_M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on (call before threads start); True when
    the C library took the setting. An operator's `MALLOC_ARENA_MAX` (a unit's
    Environment=) is left as it is: then nothing is set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas)))


def trim() -> bool:
    """Hand freed heap memory back to the kernel; True when some was."""
    malloc_trim = getattr(libc(), "malloc_trim", None)
    if malloc_trim is None:
        return False
    return bool(malloc_trim(ctypes.c_size_t(0)))
