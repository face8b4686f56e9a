"""Ctrl-C in an interactive command (`fetch`, `sync`), made sure of.

Python raises KeyboardInterrupt wherever the main thread happens to be. Raised inside a
finalizer (a `__del__`, a weakref callback: a dropped socket or response is closed by
one), it is printed as "Exception ignored" and lost, and a download went on to its end:
Ctrl-C, then exit 0 and the file. The handler here also notes the interrupt, and the
long loops (a download's chunks, a wait on another process) look at the note at points
where raising is safe. It takes no lock: it runs between any two bytecodes.
"""

from __future__ import annotations

import signal
from types import FrameType

_asked = False


def install() -> None:
    """Take SIGINT for an interactive command (the daemon has its own handling)."""
    signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _asked
    _asked = True
    raise KeyboardInterrupt


def asked() -> bool:
    """Whether Ctrl-C came (the command then exits 130, whatever it finished)."""
    return _asked


def check() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C came and was lost where it was raised."""
    if _asked:
        raise KeyboardInterrupt
