"""Process limits the daemon sets for itself at start."""

from __future__ import annotations

import resource

OPEN_FILES = 16384  # the soft limit wanted; also LimitNOFILE= in systemd/*.service


def raise_open_files_limit(wanted: int = OPEN_FILES) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit, never
    lowered); returns the soft limit now in force. The default soft limit of 1024 is a
    few hundred stray connections from every vendor call failing with EMFILE. Our own
    waits use poll(), not select(), so descriptors above 1023 are safe."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
