"""College Board's section of the config (`collegeboard:`)."""

from __future__ import annotations

from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from scorefetch.config import (
    DEFAULT_MAX_FILE_SIZE,
    S3_HOSTS,
    AuthenticationResults,
    BaseUrl,
    Duration,
    MaxFileSize,
    SourceSettings,
)


class CollegeBoardConfig(SourceSettings):
    """`collegeboard:` in the config."""

    needs_imap: ClassVar[bool] = True  # notifications arrive by mail
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
    listing_overlap: Duration = 24 * 3600.0  # one cheap call; the ledger deduplicates
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
