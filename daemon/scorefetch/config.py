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

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from scorefetch import configfile
from scorefetch.core.errors import ConfigError
from scorefetch.core.urls import UrlError, connect_target

DEFAULT_PATH = Path("/etc/scorefetch/config.yaml")
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


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class LogConfig(_Model):
    format: Literal["json", "console"] | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"


class PasswordAuth(_Model):
    """LOGIN with `imap.password`."""

    method: Literal["password"] = "password"


class MicrosoftOAuth(_Model):
    """Microsoft 365, app-only: client credentials through msal (secret or certificate)."""

    method: Literal["xoauth2"]
    provider: Literal["microsoft"]
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    certificate: SecretStr | None = None  # PEM: private key and certificate
    thumbprint: str | None = None  # SHA-1 of the certificate, as Entra shows it
    authority: BaseUrl = "https://login.microsoftonline.com"
    scope: str = "https://outlook.office365.com/.default"

    @field_validator("authority")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r}: msal accepts only an https:// authority")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> MicrosoftOAuth:
        if (self.client_secret is None) == (self.certificate is None):
            raise ValueError("client_secret: give client_secret or certificate, one of them")
        if self.certificate is not None and not self.thumbprint:
            raise ValueError("thumbprint: required with certificate")
        if self.thumbprint is not None and self.certificate is None:
            raise ValueError("thumbprint: only used with certificate")
        return self


class GoogleOAuth(_Model):
    """Google Workspace: a long-lived refresh token exchanged for access tokens."""

    method: Literal["xoauth2"]
    provider: Literal["google"]
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    refresh_token: SecretStr
    token_url: TokenUrl = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL


class CommandOAuth(_Model):
    """Any other source: a program that prints an access token on stdout."""

    method: Literal["xoauth2"]
    provider: Literal["command"]
    token_command: tuple[str, ...] = Field(min_length=1)
    command_timeout: Duration = Field(30.0, gt=0)
    token_lifetime: Duration = Field(600.0, ge=60)


def _tag(key: str, default: str | None = None) -> Any:
    """A discriminator reading `key`. Tags are spelled `key[value]`, so that _describe drops
    them from error locations like pydantic's other branch names."""

    def pick(value: Any) -> str | None:
        # A mapping, a model already validated, or neither (the branch will say so).
        got = value.get(key, default) if isinstance(value, dict) else getattr(value, key, default)
        return f"{key}[{got}]" if isinstance(got, str) else None

    pick.__name__ = key  # what "required key is missing" names
    return Discriminator(pick)


OAuth = Annotated[
    Annotated[MicrosoftOAuth, Tag("provider[microsoft]")]
    | Annotated[GoogleOAuth, Tag("provider[google]")]
    | Annotated[CommandOAuth, Tag("provider[command]")],
    _tag("provider"),
]
ImapAuth = Annotated[
    Annotated[PasswordAuth, Tag("method[password]")] | Annotated[OAuth, Tag("method[xoauth2]")],
    _tag("method", "password"),
]


class ImapConfig(_Model):
    host: str
    port: int = Field(993, ge=1, le=65535)
    security: Literal["tls", "starttls", "plain"] = "tls"
    username: str
    password: SecretStr | None = None
    auth: ImapAuth = PasswordAuth()
    folder: str = "INBOX"
    lookback_days: int = Field(14, ge=0)
    idle_timeout: Duration = Field(300.0, gt=0, le=29 * 60)
    poll_interval: Duration = Field(60.0, gt=0, le=29 * 60)  # NOOP polling without IDLE
    connect_timeout: Duration = Field(15.0, gt=0)
    read_timeout: Duration = Field(60.0, gt=0)
    session_lifetime: Duration = Field(25 * 60.0, gt=0, le=25 * 60)
    processed_folder: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _password_for_password_auth(self) -> ImapConfig:
        if self.auth.method == "password" and self.password is None:
            raise ValueError("password: required key is missing (password or password_file)")
        if self.auth.method != "password" and self.password is not None:
            raise ValueError(f"password: not used with auth method {self.auth.method}; remove it")
        return self

    @model_validator(mode="after")
    def _plain_only_on_loopback(self) -> ImapConfig:
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError(
                f"security: plain sends the password in clear text; it is accepted only for "
                f"loopback hosts, not {self.host!r} (use tls or starttls)"
            )
        return self

    @model_validator(mode="after")
    def _processed_elsewhere(self) -> ImapConfig:
        if self.processed_folder is not None and self.processed_folder == self.folder:
            raise ValueError("processed_folder: must differ from folder")
        return self


class AuthenticationResults(_Model):
    authserv_id: str = Field(min_length=1)


class CollegeBoardConfig(_Model):
    enabled: bool = True
    base_url: BaseUrl = "https://scoresdownload.collegeboard.org"
    auth: Literal["one-step", "token"] = "one-step"
    username: str | None = None  # required when enabled (checked below)
    password: SecretStr | None = None
    formats: tuple[Literal["csv", "txt", "zip"], ...] = ("csv",)
    senders: tuple[str, ...] = ("@collegeboard.org",)
    require_authentication_results: AuthenticationResults | None = None
    download_hosts: tuple[str, ...] = S3_HOSTS
    max_file_size: MaxFileSize = DEFAULT_MAX_FILE_SIZE
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

    @model_validator(mode="after")
    def _credentials(self) -> CollegeBoardConfig:
        if self.enabled:
            for key in ("username", "password"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key}: required key is missing")
        return self


class EncouraConfig(_Model):
    enabled: bool = False
    base_url: BaseUrl = "https://api.datalab.nrccua.org/v1"
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    organization: str | None = None
    product_keys: tuple[str, ...] = ("score-reporter",)
    poll_interval: Duration = Field(900.0, gt=0)
    download_hosts: tuple[str, ...] = S3_HOSTS
    max_file_size: MaxFileSize = DEFAULT_MAX_FILE_SIZE
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


# --- hooks and metrics (telling people) ---


def _check_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    if argv and not argv[0].startswith("/"):
        raise ValueError(f"{argv[0]!r}: give the program's absolute path (no shell, no PATH)")
    return argv


HookArgv = Annotated[tuple[str, ...], AfterValidator(_check_argv)]


class HooksConfig(_Model):
    """Programs run (argv, no shell) with the facts in SCOREFETCH_* environment variables."""

    on_delivery: HookArgv = ()
    on_failure: HookArgv = ()  # only for failures that will not be retried
    timeout: Duration = Field(30.0, gt=0, le=3600)
    max_parallel: int = Field(4, ge=1, le=16)


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


class MetricsConfig(_Model):
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


# --- end of hooks and metrics ---


class Config(_Model):
    download_dir: Path
    state_dir: Path
    log: LogConfig = LogConfig()
    imap: ImapConfig | None = None
    collegeboard: CollegeBoardConfig | None = None
    encoura: EncouraConfig | None = None
    hooks: HooksConfig = HooksConfig()
    metrics: MetricsConfig | None = None

    @model_validator(mode="after")
    def _sources(self) -> Config:
        if self.collegeboard is not None and self.collegeboard.enabled and self.imap is None:
            raise ValueError("imap: required, because collegeboard is enabled")
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
        if isinstance(node, tuple | list):
            return [walk(item) for item in node]
        if isinstance(node, Path):
            return str(node)
        return node

    result: dict[str, Any] = walk(config)
    return result
