"""scorefetch: collects vendor score files the moment they are published."""

import sys
import warnings

__version__ = "0.1.0"

# requests (which msal, with `xoauth2`, imports; the daemon's own HTTP is core/http.py)
# imports charset_normalizer (or chardet) to guess the encoding of a text answer that
# names none: 2.6 MB resident in every process, used by nothing here. Every answer
# is read as bytes (files, and JSON parsed from its bytes); requests documents running
# without either, reading such text as UTF-8 (`Response.apparent_encoding`). So neither is
# imported, and requests' warning about their absence is not said. One that is already
# imported (by whoever imported scorefetch) is left as it is.
for _guesser in ("charset_normalizer", "chardet"):
    sys.modules.setdefault(_guesser, None)  # type: ignore[arg-type]  # None: "not importable"
warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")

# paramiko imports invoke (to run an ssh_config's `Match exec` command, which scorefetch
# never reads: its destinations pin their host keys in its own config): 5.6 MB resident,
# asyncio and unittest among it, in every daemon with a `forward`. paramiko reads invoke's
# absence as "no `Match exec`".
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
