"""The YAML configuration, validated once into frozen typed objects.

Every error becomes a ConfigError whose message names the file and the key path,
e.g. ``config.yaml: collegeboard.formats[1]: 'xls' is not one of csv, txt, zip``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from scorefetch.errors import ConfigError

DEFAULT_PATH = Path("/etc/scorefetch/config.yaml")
SECRET_KEYS = frozenset({"password", "api_key", "client_secret", "refresh_token"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_NAMED_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*): (.*)$", re.S)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{url!r}: http:// is accepted only for loopback hosts; use https://")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL carries no query or fragment")
    return url.rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_check_base_url)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class LogConfig(_Model):
    format: Literal["json", "console"] | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"


class ImapConfig(_Model):
    host: str
    port: int = Field(993, ge=1, le=65535)
    security: Literal["tls", "starttls", "plain"] = "tls"
    username: str
    password: SecretStr
    folder: str = "INBOX"
    lookback_days: int = Field(14, ge=0)
    idle_timeout: Duration = Field(300.0, gt=0, le=29 * 60)
    poll_interval: Duration = Field(60.0, gt=0, le=29 * 60)  # NOOP polling without IDLE
    connect_timeout: Duration = Field(15.0, gt=0)
    read_timeout: Duration = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _plain_only_on_loopback(self) -> ImapConfig:
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError(
                f"security: plain sends the password in clear text; it is accepted only for "
                f"loopback hosts, not {self.host!r} (use tls or starttls)"
            )
        return self


class AuthenticationResults(_Model):
    authserv_id: str = Field(min_length=1)


class CollegeBoardConfig(_Model):
    enabled: bool = True
    base_url: BaseUrl = "https://scoresdownload.collegeboard.org"
    auth: Literal["one-step", "token"] = "one-step"
    username: str
    password: SecretStr
    formats: tuple[Literal["csv", "txt", "zip"], ...] = ("csv",)
    senders: tuple[str, ...] = ("@collegeboard.org",)
    require_authentication_results: AuthenticationResults | None = None
    download_hosts: tuple[str, ...] = ("s3.amazonaws.com", "*.s3.amazonaws.com")
    poll_interval: Duration = 3600.0
    listing_overlap: Duration = 3600.0
    timezone: str = "America/New_York"
    max_parallel: int = Field(4, ge=1, le=32)
    retry_schedule: tuple[Duration, ...] = (30.0, 120.0, 600.0, 3600.0)
    download_timeout: Duration = Field(3600.0, gt=0)

    @field_validator("formats")
    @classmethod
    def _some_format(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one of csv, txt, zip")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (e.g. America/New_York)") from None
        return value

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for sender in value:
            _, at, domain = sender.partition("@")
            if not at or "." not in domain or " " in sender:
                raise ValueError(f"{sender!r} is neither an address nor an @domain")
        return tuple(s.lower() for s in value)


class EncouraConfig(_Model):
    enabled: bool = False
    base_url: BaseUrl = "https://api.datalab.nrccua.org/v1"
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    organization: str | None = None
    product_keys: tuple[str, ...] = ("score-reporter",)
    poll_interval: Duration = Field(900.0, gt=0)
    download_hosts: tuple[str, ...] = ("s3.amazonaws.com", "*.s3.amazonaws.com")
    max_parallel: int = Field(2, ge=1, le=16)
    retry_schedule: tuple[Duration, ...] = (30.0, 120.0, 600.0, 3600.0)
    download_timeout: Duration = Field(3600.0, gt=0)

    @field_validator("product_keys")
    @classmethod
    def _product_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one product key (e.g. score-reporter)")
        for key in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", key):
                raise ValueError(f"{key!r} is not a product key (lower-case, e.g. score-reporter)")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> EncouraConfig:
        if self.enabled:
            for key in ("api_key", "username", "password"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key}: required when encoura is enabled")
        return self


class Config(_Model):
    download_dir: Path
    state_dir: Path
    log: LogConfig = LogConfig()
    imap: ImapConfig | None = None
    collegeboard: CollegeBoardConfig | None = None
    encoura: EncouraConfig | None = None

    @model_validator(mode="after")
    def _sources(self) -> Config:
        if self.collegeboard is not None and self.collegeboard.enabled and self.imap is None:
            raise ValueError("imap: required, because collegeboard is enabled")
        return self

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite3"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (a typo, like unknown keys)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def default_path() -> Path:
    """`$SCOREFETCH_CONFIG`, then /etc/scorefetch/config.yaml."""
    return Path(os.environ.get("SCOREFETCH_CONFIG") or DEFAULT_PATH)


def load(path: Path, environ: dict[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML at `path`; ConfigError on any problem."""
    env = dict(os.environ if environ is None else environ)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    secrets_dir = Path(env["CREDENTIALS_DIRECTORY"]) if env.get("CREDENTIALS_DIRECTORY") else None
    expanded = _expand(raw, (), path, env, secrets_dir or path.parent)
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(path, err) for err in exc.errors())) from None


def _key_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(path: Path, err: Any) -> str:
    # Drop pydantic's union/validator branch names ("function-after[...]") from the location.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        message = f"{err['input']!r} is not one of {expected}"
    elif kind == "extra_forbidden":
        message = "unknown key (check the spelling)"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        # A model validator names the key it is about as "key: reason".
        named = _NAMED_KEY.match(message) if kind == "value_error" else None
        if named:
            loc, message = (*loc, *named.group(1).split(".")), named.group(2)
    return f"{path}: {_key_path(loc)}: {message}"


def _expand(
    node: Any, loc: tuple[str | int, ...], path: Path, env: dict[str, str], base: Path
) -> Any:
    """Expand ${VAR} in every string and turn `x_file` secrets into `x`."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(
                    f"{path}: {_key_path(loc)}: environment variable {name} is not set"
                )
            return env[name]

        return _VAR.sub(substitute, node)
    if isinstance(node, list):
        return [_expand(item, (*loc, i), path, env, base) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        key = str(key)
        name = key.removesuffix("_file")
        if key.endswith("_file") and name in SECRET_KEYS:
            if name in node:
                raise ConfigError(
                    f"{path}: {_key_path((*loc, key))}: give {name} or {key}, not both"
                )
            out[name] = _read_secret(
                _expand(value, (*loc, key), path, env, base), (*loc, key), path, base
            )
        else:
            out[key] = _expand(value, (*loc, key), path, env, base)
    return out


def _read_secret(value: Any, loc: tuple[str | int, ...], path: Path, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {_key_path(loc)}: must be a file path")
    secret_path = base / value  # an absolute value replaces base
    try:
        secret = secret_path.read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise ConfigError(
            f"{path}: {_key_path(loc)}: cannot read {secret_path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {_key_path(loc)}: {secret_path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{path}: {_key_path(loc)}: {secret_path} is empty")
    return secret


def masked(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ********."""

    def walk(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return "********"
        if isinstance(node, BaseModel):
            return {name: walk(getattr(node, name)) for name in type(node).model_fields}
        if isinstance(node, tuple | list):
            return [walk(item) for item in node]
        if isinstance(node, Path):
            return str(node)
        return node

    result: dict[str, Any] = walk(config)
    return result
