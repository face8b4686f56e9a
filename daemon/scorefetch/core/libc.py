"""The C library through ctypes, loaded once: what the standard library does not wrap
(renameat2 in localfs.py; mallopt and malloc_trim in memory.py; thread names here)."""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from types import FrameType
from typing import Any

THREAD_NAME_MAX = 15  # bytes; the kernel's comm is 16 with its NUL


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library the interpreter already runs with (errno kept for ctypes.get_errno):
    the process's own symbols, so no `find_library` (an ldconfig subprocess, and
    ctypes.util with subprocess imported for good), or None where there are none."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def name_threads() -> None:
    """From now on every thread started through `threading` shows its Python name to the
    operating system (`top -H`, `ps -L`, /proc/PID/task/*/comm, a core dump), cut to
    THREAD_NAME_MAX bytes, as Python 3.14 does by itself: not a screen of "scorefetch"
    threads with one of them spinning. threading's profile hook runs in each new thread
    before its run(); it names the thread and removes itself there."""
    if _pthread_setname() is not None:
        threading.setprofile(_name_this_thread)


def _name_this_thread(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)  # once per thread: no profile hook stays behind
    set_thread_name(threading.current_thread().name)


def set_thread_name(name: str) -> bool:
    """Name the calling thread for the OS; False where the C library cannot."""
    setname = _pthread_setname()
    if setname is None:
        return False
    raw = name.encode("ascii", "replace")[:THREAD_NAME_MAX]
    return bool(setname(threading.get_ident(), raw) == 0)


@functools.cache
def _pthread_setname() -> Any:
    """pthread_setname_np with its argument types, once; None where there is none."""
    setname = getattr(libc(), "pthread_setname_np", None)
    if setname is not None:
        setname.argtypes = [ctypes.c_ulong, ctypes.c_char_p]
    return setname
