"""The kinds of value a configuration holds: durations, sizes, URLs, the frozen base model."""

from __future__ import annotations

import math
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from scorefetch.core.urls import UrlError, connect_target
from scorefetch.core.urls import is_loopback as is_loopback  # config re-exports it

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`30s`, `15m`, `1h`, `2d` or plain seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 15m, 1h or seconds)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def format_duration(seconds: float) -> str:
    """Seconds as the config would say them: 300.0 → `5m`, 3600 → `1h`, 45 → `45s`."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return "0" if seconds == 0 else f"{seconds:g}s"


def _check_base_url(url: str) -> str:
    try:  # read as the connection will read it: no userinfo, no parser tricks
        target = connect_target(url)
    except UrlError as exc:
        raise ValueError(str(exc)) from None  # not the URL: it may carry user:password
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(target.host):
        raise ValueError(f"{url!r}: http:// is accepted only for loopback hosts; use https://")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL carries no query or fragment")
    return url.rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_check_base_url)]

# Where presigned S3 URLs point: global, regional, dual-stack, and the older dash forms,
# virtual-hosted (`bucket.` first) and path-style. Not `*.amazonaws.com`: EC2 hosts
# (`ec2-….compute-1.amazonaws.com`) belong to whoever rents them.
S3_HOSTS = (
    "s3.amazonaws.com",
    "*.s3.amazonaws.com",
    "s3.*.amazonaws.com",
    "*.s3.*.amazonaws.com",
    "s3.dualstack.*.amazonaws.com",
    "*.s3.dualstack.*.amazonaws.com",
    "s3-*.amazonaws.com",
    "*.s3-*.amazonaws.com",
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)


def parse_size(value: object) -> int:
    """`500M`, `2GiB`, `1.5G` or plain bytes → bytes (K, M, G, T are powers of 1024)."""
    if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (use e.g. 500M, 2G or bytes)")
    unit = (match.group(2) or "b")[0].lower()
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(unit))


MaxFileSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
DEFAULT_MAX_FILE_SIZE = 2 * 1024**3  # a year of SAT scores is a few hundred MB


def _check_endpoint(url: str) -> str:
    """Like a base URL, but the whole address of one endpoint (kept as given)."""
    _check_base_url(url)
    return url


TokenUrl = Annotated[str, AfterValidator(_check_endpoint)]


class Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, defer_build=True
    )
