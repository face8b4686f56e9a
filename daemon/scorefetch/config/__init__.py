"""The YAML configuration, validated once into frozen typed objects.

Every error becomes a ConfigError whose message names the file and the key path,
e.g. ``config.yaml: collegeboard.formats[1]: 'xls' is not one of csv, txt, zip``.
values.py: durations, sizes, URLs; sources.py: imap, collegeboard, encoura;
outputs.py: forward, retention, hooks, metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

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
                        f"to {remote!r}; use {{vendor}} and {{product_key}} to keep them apart"
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
        raise ConfigError("\n".join(configfile.describe(path, e) for e in exc.errors())) from None


def masked(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ********."""

    def walk(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return "********"
        if isinstance(node, BaseModel):
            return {name: walk(getattr(node, name)) for name in type(node).model_fields}
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, tuple | list):
            return [walk(item) for item in node]
        if isinstance(node, Path):
            return str(node)
        return node

    result: dict[str, Any] = walk(config)
    return result
