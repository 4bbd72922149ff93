"""The manifest: the single source of truth for what a gateway serves.

Only data shapes live here. Whether a (type, format) pair has a backend, and
whether a catalog name exists, is checked by `gateway.manifest.load`, because schemas
import nothing of ours.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.observability import TracingSettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class ModelType(str, Enum):
    NLP = "NLP"
    COMPUTER_VISION = "COMPUTER_VISION"
    MULTIMODAL = "MULTIMODAL"
    AUDIO = "AUDIO"
    TEXT_EMBEDDING = "TEXT_EMBEDDING"
    RERANK = "RERANK"  # cross-encoders: (query, document) -> relevance score, /v1/rerank
    TTS = "TTS"  # speech synthesis: text -> audio, /v1/audio/speech


class ModelFormat(str, Enum):
    gguf = "gguf"
    onnx = "onnx"
    bin = "bin"
    remote = "remote"  # an upstream OpenAI-compatible API (base_url); nothing is downloaded


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    metal = "metal"
    vulkan = "vulkan"


class ApiKey(BaseModel):
    """An API key, optionally limited to some models (names or aliases)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=8)
    models: list[str] | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"key": value} if isinstance(value, str) else value


class ServerSettings(BaseSettings):
    """The `server:` section. `NEXA_*` environment variables win over the file,
    so one manifest in git can be deployed with per-machine ports and hosts."""

    model_config = SettingsConfigDict(env_prefix="NEXA_", extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    http_server: Literal["granian", "robyn"] = "granian"
    engine: Literal["granian", "robyn"] | None = Field(
        None, description="deprecated name of http_server (\"engine\" means the inference library elsewhere)")
    playground: bool = True
    offline: bool = Field(False, description="never download model files; use only the cache")
    verify: Literal["first_load", "always", "never"] = Field(
        "first_load", description="when a cached model file's content is hashed again before loading it: at the "
                                  "first load in this process, at every load, or never (trust size and mtime)")
    reload: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_audio_bytes: int = Field(25 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(30.0, gt=0, description="the whole request body must arrive within this; "
                                                           "else 408 (a client that never sends it)")
    shutdown_grace_s: float = Field(30.0, ge=0)
    stream_buffer: int = Field(4, ge=1, le=256)
    # Residency: how many models (and how many bytes of model files) may be loaded at once.
    max_loaded: int | None = Field(None, gt=0)
    memory_budget: ByteSize | None = Field(None, description="e.g. 8GiB; estimated from model file sizes")
    # Security
    api_keys: list[ApiKey] = Field(default_factory=list, description="empty: no authentication")
    api_keys_file: str | None = Field(None, description="one key per line, or `key model1,model2`")
    cors_origins: list[str] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    reload_debounce_ms: int = Field(300, ge=0)
    # Images: `image_path` in /v1/img2img is read only inside these folders (none: base64 only);
    # generated images are written to image_output_dir (default: <nexa cache>/outputs).
    image_input_dirs: list[str] = Field(default_factory=list)
    image_output_dir: str | None = None
    image_output_keep: int | None = Field(1000, gt=0, description="newest generated images kept; older ones deleted")
    # The URLs of generated images: `public_url` (e.g. https://ai.example.com) when set; else the
    # request's X-Forwarded-Proto/-Host only when trust_forwarded_headers (a proxy sets them), else its Host.
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$",
                                   description="the base URL clients reach this gateway at")
    trust_forwarded_headers: bool = Field(False, description="believe X-Forwarded-Proto and X-Forwarded-Host")
    # Vision chat: http(s) image URLs are fetched only from these hosts ("example.com", "*.example.com",
    # "127.0.0.1:8080"); empty: never (data: URLs and base64 always work).
    image_url_hosts: list[str] = Field(default_factory=list)
    image_fetch_max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    image_fetch_timeout_s: float = Field(10.0, gt=0)
    # Every input image (vision chat, /v1/img2img): at most this many pixels (width x height); a
    # vision model's options.max_image_pixels overrides it for that model.
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest input image, width x height")
    # Stored responses and conversations (gateway/state): where, how many, how long, how many bytes.
    state: str | None = Field(None, pattern=r"^(memory://|sqlite:///.|rediss?://.)",
                              description="the state store: sqlite:///path/state.db (default: <nexa cache>/state.db), "
                                          "redis://[:${PASSWORD_VAR}@]host:port/db, rediss://... (TLS), or memory://")
    responses_max_stored: int = Field(1000, ge=0, description="most stored responses (the oldest go first); 0: none")
    responses_ttl_s: float = Field(3600.0, gt=0, description="a stored response or conversation is forgotten this "
                                                             "long after its last write")
    state_max_bytes: ByteSize = Field(256 * 1024 * 1024, gt=0, description="bytes of stored JSON in all (responses, "
                                                                           "their items, conversations); oldest go first")
    # GGUF text models' prompt caches (per-model `prompt_cache`) written here when a model unloads (eviction,
    # a reload that replaces it, shutdown) and read back when it loads: agents' next turns stay warm across restarts.
    prompt_cache_dir: str | None = Field(None, description="keep the prompt caches across restarts in this folder "
                                                          "(one subfolder per model); unset: in memory only")
    # OpenTelemetry: one span per request over OTLP/HTTP (gateway/observability/tracing.py); off by default.
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("image_input_dirs", "image_output_dir", "prompt_cache_dir")
    @classmethod
    def _absolute_dirs(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else [value] if value else []:
            if not item.startswith(("/", "~")) and not re.match(r"^[A-Za-z]:[\\/]", item):
                raise ValueError(f"{item!r} must be an absolute path (or start with ~)")
        return value

    @model_validator(mode="after")
    def _engine_is_http_server(self) -> "ServerSettings":
        # The old name still works unless the new one is also given; the gateway logs the rename once.
        if self.engine is not None and "http_server" not in self.model_fields_set:
            self.http_server = self.engine
        return self

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> "ServerSettings":
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError("cors_origins cannot contain '*' when cors_allow_credentials is true; list the origins")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # Environment first: it overrides what the manifest file says.
        return env_settings, init_settings


class Live:
    """Marks a ModelSpec field that a reload applies to a loaded model in place, without loading its
    weights again (gateway/manifest/plan.py reads the marks). Unmarked fields need new weights: a
    field added without thinking about it errs on the safe side."""


LIVE = Live()


class SamplingDefaults(BaseModel):
    """A model's sampling where a request leaves it unset (Ollama's Modelfile `PARAMETER` lines). Agents
    send no sampling at all (Claude Code, Codex), so this is how a small model gets the temperature and
    repeat penalty it needs not to loop. Whatever the request sets wins. Ranges are the request's."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None


class ModelSpec(BaseModel):
    """One served model. Load-relevant fields (source, format, device, nctx,
    options) decide whether a change needs new weights."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    aliases: Annotated[list[str], LIVE] = Field(default_factory=list)
    type: ModelType = ModelType.NLP
    format: ModelFormat = ModelFormat.gguf
    # Required, except for `format: remote` models, whose source is their base_url (validated below).
    source: str | None = Field(None, min_length=1, validate_default=True,
                               description="catalog name, local path, hf:owner/repo[/file] or pypi:pkg==ver#member "
                                           "(remote models: their base_url)")
    file: str | None = Field(None, description="file inside a hub repository or a local folder")
    revision: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    device: Device = Device.auto
    nctx: int = Field(2048, gt=0)
    n_threads: int | None = Field(None, gt=0)
    n_gpu_layers: int | None = Field(None, ge=-1)
    chat_format: str | None = None
    system_prompt: Annotated[str | None, LIVE] = None
    preload: Annotated[bool, LIVE] = Field(False, description="load at start; otherwise on the first request")
    max_tokens_limit: Annotated[int, LIVE] = Field(4096, gt=0)
    sampling: Annotated[SamplingDefaults, LIVE] = Field(default_factory=SamplingDefaults,
                                                        description="sampling for requests that leave it unset")
    grammar_max_tokens: Annotated[int, LIVE] = Field(512, gt=0, description="budget of a tool call or JSON answer (grammar-constrained) "
                                                          "when the request sets no max_tokens")
    # Residency and concurrency
    pinned: Annotated[bool, LIVE] = Field(False, description="never evicted to make room for another model")
    ttl_s: Annotated[float | None, LIVE] = Field(None, gt=0, description="unload after this many idle seconds")
    replicas: int = Field(1, ge=1, le=64, description="engine instances; each has its own thread")
    parallel: int = Field(1, ge=1, le=64, description="GGUF text models: requests decoded together in one "
                                                      "context (continuous batching); nctx is per request")
    prompt_cache: ByteSize | None = Field(
        None, description="GGUF text models: host memory for the KV states of prompts set aside (a side call "
                          "replaced the main conversation), restored instead of prefilled again; e.g. 512MiB, "
                          "0 disables; default (unset): nctx x the model's KV bytes per token")
    max_queue: Annotated[int, LIVE] = Field(64, ge=0, description="requests waiting beyond the running ones; more get a 429")
    queue_timeout_s: Annotated[float, LIVE] = Field(120.0, gt=0)
    timeout_s: Annotated[float | None, LIVE] = Field(None, gt=0, description="longest a request may generate")
    # Embedding and rerank models: concurrent requests are merged into one engine call (gateway/models/batcher.py).
    embed_batch_max: Annotated[int, LIVE] = Field(64, ge=1, le=4096, description="embedding and rerank models: most "
                                                                 "inputs (documents) per merged engine call (1: no merging)")
    embed_batch_wait_ms: Annotated[float, LIVE] = Field(2.0, ge=0, le=1000, description="embedding and rerank models: "
                                                                         "longest wait for more "
                                                                         "requests to merge, only under concurrency")
    backend: str | None = Field(None, description="module:Class of a custom engine, instead of the registry's")
    options: dict[str, Any] = Field(default_factory=dict, description="engine options passed to the backend")
    # MULTIMODAL: the vision projector (a path, or any source form) and the llama.cpp chat handler.
    mmproj: str | None = Field(None, min_length=1, validate_default=True,
                               description="projector file (mmproj GGUF) of a MULTIMODAL model")
    handler: str | None = Field(None, min_length=1, description="vision chat handler, e.g. mtmd, llava-1.5")
    # format: remote -- an OpenAI-compatible upstream that this gateway forwards requests to.
    base_url: str | None = Field(None, pattern=r"^https?://", validate_default=True,
                                 description="remote models: the upstream's OpenAI API root, e.g. http://host:8000/v1")
    api_key: str | None = Field(None, description="remote models: bearer key sent upstream; use ${VAR}")
    remote_model: str | None = Field(None, min_length=1, description="remote models: the upstream's model name "
                                                                     "(default: this model's name)")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None, info: Any) -> str | None:
        remote = info.data.get("format") == ModelFormat.remote
        if value is None and not remote:
            raise PydanticCustomError("missing", "Field required")
        if value is not None and not remote and re.match(r"^https?://", value):
            raise ValueError("an http(s) URL is the upstream of a `format: remote` model; model files come from "
                             "a catalog name, a path, hf:owner/repo[/file] or pypi:pkg==ver#member")
        return value

    @field_validator("base_url", "api_key", "remote_model")
    @classmethod
    def _remote_fields(cls, value: str | None, info: Any) -> str | None:
        if "format" not in info.data or "source" not in info.data:
            return value  # format or source already failed
        remote = info.data["format"] == ModelFormat.remote
        if value is not None and not remote:
            raise ValueError("only for `format: remote` models")
        if info.field_name == "base_url" and remote:
            source = info.data["source"]
            if value is None:
                if not source or not re.match(r"^https?://", source):
                    raise ValueError("required for remote models: the upstream's OpenAI API root, "
                                     "e.g. http://host:8000/v1 (or give it as `source`)")
                value = source
            elif source and source != value:
                raise ValueError(f"differs from source {source!r}; a remote model's source is its base_url")
            value = value.rstrip("/")
        return value

    @model_validator(mode="after")
    def _remote_source(self) -> "ModelSpec":
        if self.format == ModelFormat.remote:
            self.source = self.base_url  # one place that names the upstream, shown by plans and logs
        return self

    @field_validator("mmproj", "handler")
    @classmethod
    def _vision_fields(cls, value: str | None, info: Any) -> str | None:
        kind, fmt = info.data.get("type"), info.data.get("format")
        if kind is None or info.data.get("backend"):
            return value  # type already failed, or a custom engine decides for itself
        if value is None and info.field_name == "mmproj" and kind == ModelType.MULTIMODAL and fmt == ModelFormat.gguf:
            raise ValueError("required for MULTIMODAL models")
        if value is not None and kind != ModelType.MULTIMODAL:
            raise ValueError("only for MULTIMODAL models")
        return value

    @field_validator("prompt_cache")
    @classmethod
    def _prompt_cache_text_gguf(cls, value: Any, info: Any) -> Any:
        kind, fmt = info.data.get("type"), info.data.get("format")
        if value and kind is not None and (kind != ModelType.NLP or fmt != ModelFormat.gguf):
            # A vision prompt holds image embeddings, not token ids: a cache keyed by tokens cannot match them.
            raise ValueError("only for GGUF text models (type NLP, format gguf): other engines keep no "
                             "llama.cpp token sequence to restore (a vision prompt's images are not tokens)")
        return value

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
