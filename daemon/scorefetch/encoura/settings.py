"""Encoura's section of the config (`encoura:`)."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from scorefetch.config import (
    DEFAULT_MAX_FILE_SIZE,
    S3_HOSTS,
    BaseUrl,
    Duration,
    MaxFileSize,
    SourceSettings,
)


class EncouraConfig(SourceSettings):
    """`encoura:` in the config."""

    by_product_key: ClassVar[bool] = True  # download_dir/encoura/<product key>/
    enabled: bool = False
    base_url: BaseUrl = "https://api.datalab.nrccua.org/v1"
    api_key: SecretStr | None = None
    username: str | None = None
    login_as: Literal["auto", "userName", "email"] = "auto"  # auto: email when it has an @
    password: SecretStr | None = None
    organization: str | None = None
    product_keys: tuple[str, ...] = ("score-reporter",)
    poll_interval: Duration = Field(900.0, gt=0)
    download_hosts: tuple[str, ...] = S3_HOSTS
    max_file_size: MaxFileSize = DEFAULT_MAX_FILE_SIZE
    max_parallel: int = Field(2, ge=1, le=16)
    retry_schedule: tuple[Duration, ...] = Field((30.0, 120.0, 600.0, 3600.0), min_length=1)
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

    def folders(self) -> tuple[str | None, ...]:
        return self.product_keys

    @model_validator(mode="after")
    def _credentials(self) -> EncouraConfig:
        if self.enabled:
            for key in ("api_key", "username", "password"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key}: required when encoura is enabled")
        return self
