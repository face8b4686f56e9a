"""The YAML configuration, validated once into frozen typed objects.

Every error becomes a ConfigError whose message names the file and the key path,
e.g. ``config.yaml: collegeboard.formats[1]: 'xls' is not one of csv, txt, zip``.
values.py: durations, sizes, URLs; sources.py: what a vendor's section is, and imap;
outputs.py: forward, retention, hooks, metrics, alerts. Each vendor's section is a model in
its own folder; `schema()` composes them with these into the Config that `load()` reads
(the registry, scorefetch/sources.py, does it once for the vendors there are).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError, create_model, model_validator

from scorefetch import configfile
from scorefetch.config.outputs import (
    AlertsConfig,
    Destinations,
    HooksConfig,
    MetricsConfig,
    RetentionConfig,
    SftpDestination,
    parse_listen,
)
from scorefetch.config.sources import (
    AuthenticationResults,
    CommandOAuth,
    GoogleOAuth,
    ImapAuth,
    ImapConfig,
    MicrosoftOAuth,
    PasswordAuth,
    SourceSettings,
)
from scorefetch.config.values import (
    DEFAULT_MAX_FILE_SIZE,
    S3_HOSTS,
    BaseUrl,
    Duration,
    MaxFileSize,
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
    "AlertsConfig",
    "AuthenticationResults",
    "BaseUrl",
    "CommandOAuth",
    "Config",
    "Duration",
    "GoogleOAuth",
    "HooksConfig",
    "ImapAuth",
    "ImapConfig",
    "LogConfig",
    "MaxFileSize",
    "MetricsConfig",
    "MicrosoftOAuth",
    "PasswordAuth",
    "RetentionConfig",
    "SftpDestination",
    "SourceSettings",
    "default_path",
    "is_loopback",
    "load",
    "masked",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "schema",
]

DEFAULT_PATH = Path("/etc/scorefetch/config.yaml")


class LogConfig(Model):
    format: Literal["json", "console"] | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"


S = TypeVar("S", bound=SourceSettings)


class Config(Model):
    """The settings every deployment has; `schema()` adds one section per vendor."""

    download_dir: Path
    state_dir: Path
    log: LogConfig = LogConfig()
    imap: ImapConfig | None = None
    forward: Destinations = {}  # noqa: RUF012 - pydantic copies field defaults
    retention: RetentionConfig = RetentionConfig()
    hooks: HooksConfig = HooksConfig()
    metrics: MetricsConfig | None = None
    alerts: AlertsConfig = AlertsConfig()

    @classmethod
    def vendors(cls) -> tuple[str, ...]:
        """Every vendor this Config has a section for, enabled or not (registry order)."""
        return tuple(
            name
            for name, field in cls.model_fields.items()
            if _models(field.annotation)
            and all(issubclass(m, SourceSettings) for m in _models(field.annotation))
        )

    def sections(self) -> dict[str, SourceSettings]:
        """The enabled vendors' sections, by name."""
        found = {name: getattr(self, name) for name in self.vendors()}
        return {name: s for name, s in found.items() if s is not None and s.enabled}

    def section(self, name: str, model: type[S]) -> S | None:
        """`name`'s section when it is configured (enabled or not), as its model."""
        found = getattr(self, name, None) if name in self.vendors() else None
        return found if isinstance(found, model) else None

    @model_validator(mode="before")
    @classmethod
    def _every_vendor_by_default(cls, data: Any) -> Any:
        """A destination without `vendors:` takes every vendor there is."""
        forward = data.get("forward") if isinstance(data, dict) else None
        if not isinstance(forward, dict) or not cls.vendors():
            return data
        filled = {
            name: {**dest, "vendors": list(cls.vendors())}
            if isinstance(dest, dict) and "vendors" not in dest
            else dest
            for name, dest in forward.items()
        }
        return {**data, "forward": filled}

    @model_validator(mode="after")
    def _sources(self) -> Config:
        known = self.vendors()
        for name, section in self.sections().items():
            if section.needs_imap and self.imap is None:
                raise ValueError(f"imap: required, because {name} is enabled")
        for name, dest in self.forward.items():
            for vendor in dest.vendors:
                if vendor not in known:
                    raise ValueError(
                        f"forward.{name}.vendors: {vendor!r} is not one of {', '.join(known)}"
                    )
            if "{product_key}" in dest.remote_dir:
                keyed = [v for v in known if self._keyed(v)]
                if any(v not in keyed for v in dest.vendors):
                    raise ValueError(
                        f"forward.{name}.remote_dir: {{product_key}} is known only for "
                        f"{', '.join(keyed) or 'no'} files; set vendors: [{', '.join(keyed)}] "
                        "or use {vendor}"
                    )
        for vendor in self.alerts.quiet_after:
            if vendor not in known:
                raise ValueError(f"alerts.quiet_after: {vendor!r} is not one of {', '.join(known)}")
        return self

    @classmethod
    def _keyed(cls, vendor: str) -> bool:
        models = _models(cls.model_fields[vendor].annotation)
        return any(issubclass(m, SourceSettings) and m.by_product_key for m in models)

    @model_validator(mode="after")
    def _one_remote_folder_each(self) -> Config:
        """Two local folders (two vendors, two Encoura product keys) sent to one remote
        folder would meet at the same names: one file would block, or pass for, the other."""
        local = [
            (vendor, key)
            for vendor, section in self.sections().items()
            for key in section.folders()
        ]
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


def schema(sections: Mapping[str, type[SourceSettings]]) -> type[Config]:
    """The Config with a section for each vendor (`name: model`, in registry order)."""
    taken = set(Config.model_fields) & set(sections)
    if taken:  # a programming error in the registry, not the admin's
        raise ValueError(f"a vendor may not be named like a config section: {sorted(taken)}")
    fields: dict[str, Any] = {name: (model | None, None) for name, model in sections.items()}
    composed: type[Config] = create_model("Config", __base__=Config, **fields)
    return composed


def load(path: Path, environ: dict[str, str] | None = None, *, model: type[Config]) -> Config:
    """Read, expand and validate the YAML at `path` as `model` (see schema()); ConfigError
    on any problem."""
    raw = configfile.read(path, dict(os.environ if environ is None else environ))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(path, e, model) for e in exc.errors())) from None


def _describe(path: Path, error: Any, model: type[Config]) -> str:
    """configfile.describe, plus "did you mean" for a misspelt key."""
    line = configfile.describe(path, error)
    if error["type"] == "extra_forbidden":
        *parents, key = (p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        import difflib  # only for a key nobody knows

        guess = difflib.get_close_matches(
            str(key), _keys_at(tuple(parents), model), n=1, cutoff=0.7
        )
        if guess:
            line += f"; did you mean {guess[0]!r}?"
    return line


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _keys_at(loc: tuple[str | int, ...], model: type[Config]) -> list[str]:
    """The keys allowed at a key path (every branch of a union), for suggestions."""
    models: list[type[BaseModel]] = [model]
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
