"""The manifest: the single source of truth for what a gateway serves.

Only data shapes live here. Whether a (type, format) pair has a backend, and
whether a catalog name exists, is checked by `gateway.config`, because schemas
import nothing of ours.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class ModelType(str, Enum):
    NLP = "NLP"
    COMPUTER_VISION = "COMPUTER_VISION"
    MULTIMODAL = "MULTIMODAL"
    AUDIO = "AUDIO"
    TEXT_EMBEDDING = "TEXT_EMBEDDING"


class ModelFormat(str, Enum):
    gguf = "gguf"
    onnx = "onnx"
    bin = "bin"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    metal = "metal"
    vulkan = "vulkan"


class ServerSettings(BaseSettings):
    """The `server:` section. `NEXA_*` environment variables win over the file,
    so one manifest in git can be deployed with per-machine ports and hosts."""

    model_config = SettingsConfigDict(env_prefix="NEXA_", extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    engine: Literal["granian"] = "granian"
    reload: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    stream_buffer: int = Field(4, ge=1, le=256)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # Environment first: it overrides what the manifest file says.
        return env_settings, init_settings


class ModelSpec(BaseModel):
    """One served model. Load-relevant fields (source, format, device, nctx,
    options) decide whether a change needs new weights."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    aliases: list[str] = Field(default_factory=list)
    type: ModelType = ModelType.NLP
    format: ModelFormat = ModelFormat.gguf
    source: str = Field(min_length=1, description="catalog name, local path, hf:owner/repo[/file] or pypi:pkg==ver#member")
    file: str | None = Field(None, description="file inside a hub repository or a local folder")
    revision: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    device: Device = Device.auto
    nctx: int = Field(2048, gt=0)
    n_threads: int | None = Field(None, gt=0)
    n_gpu_layers: int | None = Field(None, ge=-1)
    chat_format: str | None = None
    system_prompt: str | None = None
    preload: bool = Field(False, description="load at start; otherwise on the first request")
    max_tokens_limit: int = Field(4096, gt=0)
    options: dict[str, Any] = Field(default_factory=dict, description="engine options passed to the backend")

    @field_validator("aliases")
    @classmethod
    def _aliases_are_names(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not re.match(NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} is not a valid model name")
        return value

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    server: ServerSettings = Field(default_factory=ServerSettings)
    models: list[ModelSpec] = Field(min_length=1)
