"""Where files come from: what every vendor's section shares (`SourceSettings`), and the
mailbox with its OAuth2 logins. Each vendor's own section is a model in its folder
(collegeboard/settings.py, encoura/settings.py), registered in scorefetch/sources.py."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from scorefetch.config.values import (
    BaseUrl,
    Duration,
    Model,
    TokenUrl,
    is_loopback,
)


class PasswordAuth(Model):
    """LOGIN with `imap.password`."""

    method: Literal["password"] = "password"


class MicrosoftOAuth(Model):
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


class GoogleOAuth(Model):
    """Google Workspace: a long-lived refresh token exchanged for access tokens."""

    method: Literal["xoauth2"]
    provider: Literal["google"]
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    refresh_token: SecretStr
    token_url: TokenUrl = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL


class CommandOAuth(Model):
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


class ImapConfig(Model):
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


class AuthenticationResults(Model):
    authserv_id: str = Field(min_length=1)


# --- forwarding and retention ------------------------------------------------------------


class SourceSettings(Model):
    """What every vendor's config section is: a model of its own that subclasses this one,
    registered under its name (scorefetch/sources.py), read with `Config.section`."""

    enabled: bool = True
    needs_imap: ClassVar[bool] = False  # its notifications arrive by mail (`imap:` required)
    by_product_key: ClassVar[bool] = False  # its files go in sub-folders ({product_key})

    def folders(self) -> tuple[str | None, ...]:
        """The sub-folders its files land in under download_dir/<vendor> (None: none)."""
        return (None,)
