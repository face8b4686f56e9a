"""Where files and news go next: SFTP destinations, retention, hooks, metrics."""

from __future__ import annotations

import re
import string
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from scorefetch.config.values import Duration, Model

if TYPE_CHECKING:
    from paramiko import PKey

# A vendor's name, as registered in scorefetch/sources.py (checked there, by Config).
Vendor = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
_PLACEHOLDERS = {"vendor", "product_key"}


def _keys() -> ModuleType:
    """config/keys.py (SSH keys, parsed and pinned), imported when a destination is
    configured: paramiko (15 MB) is not loaded by a daemon that forwards nothing."""
    from scorefetch.config import keys

    return keys


def _host_keys(value: object) -> object:
    """One pinned key, or a list of them."""
    return (value,) if isinstance(value, str) else value


def _check_host_key(line: str) -> str:
    from scorefetch.config import keys  # paramiko loads only with a forward destination

    keys.parse_host_key(line)
    return line


HostKey = Annotated[str, AfterValidator(_check_host_key)]


class SftpDestination(Model):
    """An SFTP server that gets a copy of each landed file (Slate's, usually)."""

    type: Literal["sftp"]
    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1)
    private_key: SecretStr | None = None
    passphrase: SecretStr | None = None  # of an encrypted private_key
    password: SecretStr | None = None
    host_key: Annotated[tuple[HostKey, ...], BeforeValidator(_host_keys)] = ()
    known_hosts_file: Path | None = None
    remote_dir: str = Field(min_length=1)
    vendors: tuple[Vendor, ...] = ()  # not given: every vendor (Config fills in their names)
    retry_schedule: tuple[Duration, ...] = (30.0, 120.0, 600.0, 3600.0, 21600.0)
    timeout: Duration = Field(30.0, gt=0)

    @field_validator("remote_dir")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
        unknown = names - _PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"{value!r}: unknown placeholder {{{sorted(unknown)[0]}}} "
                "(use {vendor} or {product_key})"
            )
        return value

    def wants(self, vendor: str) -> bool:
        # () when the destination was built without a Config (which fills in every vendor)
        return not self.vendors or vendor in self.vendors

    @field_validator("vendors")
    @classmethod
    def _some_vendor(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one vendor (or leave vendors out: all of them)")
        return value

    @model_validator(mode="after")
    def _checks(self) -> SftpDestination:
        if self.private_key is None and self.password is None:
            raise ValueError("private_key: required key is missing (private_key or password)")
        if self.private_key is not None:
            passphrase = self.passphrase.get_secret_value() if self.passphrase else None
            try:
                _keys().load_private_key(self.private_key.get_secret_value(), passphrase)
            except ValueError as exc:
                raise ValueError(f"private_key: {exc}") from None
        elif self.passphrase is not None:
            raise ValueError("passphrase: only used with private_key")
        if bool(self.host_key) == (self.known_hosts_file is not None):
            raise ValueError(
                "host_key: pin the server's key: give host_key or known_hosts_file, one of them"
            )
        if self.known_hosts_file is not None:
            if not self.known_hosts_file.is_absolute():
                raise ValueError("known_hosts_file: must be an absolute path")
            try:
                _keys().read_known_hosts(self.known_hosts_file, self.host, self.port)
            except ValueError as exc:
                raise ValueError(f"known_hosts_file: {exc}") from None
        return self

    def pinned_keys(self) -> list[PKey]:
        from scorefetch.config import keys

        if self.known_hosts_file is not None:
            return keys.read_known_hosts(self.known_hosts_file, self.host, self.port)
        return [keys.parse_host_key(line) for line in self.host_key]


class RetentionConfig(Model):
    keep_days: float | None = Field(None, gt=0)  # None: keep forever


def _destination_names(value: dict[str, Any]) -> dict[str, Any]:
    for name in value:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(name)):
            raise ValueError(f"{name!r}: a destination name is letters, digits, - and _")
    return value


Destinations = Annotated[dict[str, SftpDestination], AfterValidator(_destination_names)]

# Hooks and metrics: telling people.


def _check_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    if argv and not argv[0].startswith("/"):
        raise ValueError(f"{argv[0]!r}: give the program's absolute path (no shell, no PATH)")
    return argv


HookArgv = Annotated[tuple[str, ...], AfterValidator(_check_argv)]


class HooksConfig(Model):
    """Programs run (argv, no shell) with the facts in SCOREFETCH_* environment variables."""

    on_delivery: HookArgv = ()
    on_failure: HookArgv = ()  # only for failures that will not be retried
    on_digest: HookArgv = ()  # once a day at alerts.digest_at
    timeout: Duration = Field(30.0, gt=0, le=3600)
    max_parallel: int = Field(4, ge=1, le=16)


def _time_of_day(value: object) -> object:
    text = str(value).strip()
    match = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", text)
    if match is None:
        raise ValueError(f"{text!r} is not a time of day (HH:MM, e.g. 07:30)")
    return f"{int(match[1]):02d}:{match[2]}"


class AlertsConfig(Model):
    """When a person is told without a failure to point at: a file announced but not at
    every destination after `overdue_after`; a vendor silent for `quiet_after`; a daily
    digest at `digest_at` (local time) through hooks.on_digest."""

    overdue_after: Duration = Field(3600.0, gt=0)
    quiet_after: dict[Vendor, Duration] = {}  # noqa: RUF012 - pydantic copies field defaults
    digest_at: Annotated[str, BeforeValidator(_time_of_day)] | None = None


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or a bare `PORT` (loopback) → (host, port)."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return host, int(port)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


class MetricsConfig(Model):
    """Prometheus metrics (the `metrics` extra): an HTTP endpoint and/or a textfile for
    node_exporter's textfile collector."""

    listen: Annotated[str, AfterValidator(_check_listen)] | None = None
    textfile: Path | None = None
    interval: Duration = Field(15.0, gt=0, le=3600)  # how often the textfile is rewritten

    @field_validator("textfile")
    @classmethod
    def _prom(cls, value: Path | None) -> Path | None:
        if value is not None and (not value.is_absolute() or value.suffix != ".prom"):
            raise ValueError(f"{str(value)!r}: an absolute path ending in .prom (node_exporter)")
        return value

    @model_validator(mode="after")
    def _somewhere(self) -> MetricsConfig:
        if self.listen is None and self.textfile is None:
            raise ValueError("listen: give listen, textfile, or both")
        return self

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen is not None else None
