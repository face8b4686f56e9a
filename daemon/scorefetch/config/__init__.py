"""The YAML configuration, validated once into frozen typed objects.

Every error becomes a ConfigError whose message names the file and the key path,
e.g. ``config.yaml: collegeboard.formats[1]: 'xls' is not one of csv, txt, zip``.
values.py: durations, sizes, URLs; sources.py: imap, collegeboard, encoura;
outputs.py: forward, retention, hooks, metrics.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError, model_validator

from scorefetch import configfile
from scorefetch.config.outputs import (
    VENDORS,
    AlertsConfig,
    Destinations,
    HooksConfig,
    MetricsConfig,
    RetentionConfig,
    SftpDestination,
    Vendor,
    parse_listen,
)
from scorefetch.config.sources import (
    AuthenticationResults,
    CollegeBoardConfig,
    CommandOAuth,
    EncouraConfig,
    GoogleOAuth,
    ImapAuth,
    ImapConfig,
    MicrosoftOAuth,
    PasswordAuth,
)
from scorefetch.config.values import (
    DEFAULT_MAX_FILE_SIZE,
    S3_HOSTS,
    Model,
    format_duration,
    is_loopback,
    parse_duration,
    parse_size,
)
from scorefetch.core.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "S3_HOSTS",
    "VENDORS",
    "AlertsConfig",
    "AuthenticationResults",
    "CollegeBoardConfig",
    "CommandOAuth",
    "Config",
    "EncouraConfig",
    "GoogleOAuth",
    "HooksConfig",
    "ImapAuth",
    "ImapConfig",
    "LogConfig",
    "MetricsConfig",
    "MicrosoftOAuth",
    "PasswordAuth",
    "RetentionConfig",
    "SftpDestination",
    "Vendor",
    "default_path",
    "is_loopback",
    "load",
    "masked",
    "parse_duration",
    "parse_listen",
    "parse_size",
]

DEFAULT_PATH = Path("/etc/scorefetch/config.yaml")


class LogConfig(Model):
    format: Literal["json", "console"] | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Model):
    download_dir: Path
    state_dir: Path
    log: LogConfig = LogConfig()
    imap: ImapConfig | None = None
    collegeboard: CollegeBoardConfig | None = None
    encoura: EncouraConfig | None = None
    forward: Destinations = {}  # noqa: RUF012 - pydantic copies field defaults
    retention: RetentionConfig = RetentionConfig()
    hooks: HooksConfig = HooksConfig()
    metrics: MetricsConfig | None = None
    alerts: AlertsConfig = AlertsConfig()

    @model_validator(mode="after")
    def _sources(self) -> Config:
        if self.collegeboard is not None and self.collegeboard.enabled and self.imap is None:
            raise ValueError("imap: required, because collegeboard is enabled")
        return self

    @model_validator(mode="after")
    def _one_remote_folder_each(self) -> Config:
        """Two local folders (two vendors, two Encoura product keys) sent to one remote
        folder would meet at the same names: one file would block, or pass for, the other."""
        local: list[tuple[str, str | None]] = []
        if self.collegeboard is not None and self.collegeboard.enabled:
            local.append(("collegeboard", None))
        if self.encoura is not None and self.encoura.enabled:
            local += [("encoura", key) for key in self.encoura.product_keys]
        for name, dest in self.forward.items():
            seen: dict[str, str] = {}
            for vendor, key in local:
                if vendor not in dest.vendors:
                    continue
                remote = dest.remote_dir.format(vendor=vendor, product_key=key or "")
                here = vendor + (f"/{key}" if key else "")
                if remote in seen:
                    raise ValueError(
                        f"forward.{name}.remote_dir: {seen[remote]} and {here} would both go "
                        f"to {remote!r}; keep them apart with {{vendor}}, and for Encoura's "
                        "product keys a destination of vendors: [encoura] with {product_key}"
                    )
                seen[remote] = here
        return self

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite3"


def default_path() -> Path:
    """`$SCOREFETCH_CONFIG`, then /etc/scorefetch/config.yaml."""
    return Path(os.environ.get("SCOREFETCH_CONFIG") or DEFAULT_PATH)


def load(path: Path, environ: dict[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML at `path`; ConfigError on any problem."""
    raw = configfile.read(path, dict(os.environ if environ is None else environ))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(path, e) for e in exc.errors())) from None


def _describe(path: Path, error: Any) -> str:
    """configfile.describe, plus "did you mean" for a misspelt key."""
    line = configfile.describe(path, error)
    if error["type"] == "extra_forbidden":
        *parents, key = (p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        guess = difflib.get_close_matches(str(key), _keys_at(tuple(parents)), n=1, cutoff=0.7)
        if guess:
            line += f"; did you mean {guess[0]!r}?"
    return line


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _keys_at(loc: tuple[str | int, ...]) -> list[str]:
    """The keys allowed at a key path (every branch of a union), for suggestions."""
    models: list[type[BaseModel]] = [Config]
    for part in loc:
        if isinstance(part, int):
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        found = [m for f in fields for m in _models(f.annotation)]
        if found:
            models = found
        # else a dict key (a destination's name): the models stay those of the values
    return sorted({name for m in models for name in m.model_fields})


def masked(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ********."""

    def walk(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return "********"
        if isinstance(node, BaseModel):
            return {
                name: (
                    _as_duration(walk(getattr(node, name)))
                    if _is_duration(field.metadata, field.annotation)
                    else walk(getattr(node, name))
                )
                for name, field in type(node).model_fields.items()
            }
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, tuple | list):
            return [walk(item) for item in node]
        if isinstance(node, Path):
            return str(node)
        return node

    result: dict[str, Any] = walk(config)
    return result


def _is_duration(metadata: list[Any], annotation: Any) -> bool:
    """A field declared as Duration (or a union or tuple of them): echoed as `5m`."""
    if any(getattr(m, "func", None) is parse_duration for m in metadata):
        return True
    if get_origin(annotation) is Annotated:
        return _is_duration(list(get_args(annotation)[1:]), get_args(annotation)[0])
    return any(_is_duration([], arg) for arg in get_args(annotation))


def _as_duration(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_duration(v) for v in value]
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format_duration(value)
    return value
