"""Each engine's `options:` as a typed model, checked before anything loads.

A manifest's `options:` used to reach the engines as a free dict, so a typo
(`n_batchh`) surfaced only as a load failure, or never. These models give every
backend its option names, types, ranges and docs; `gateway.manifest.load` validates a
manifest's options against them (`nexa check`, reload, `nexa schema`), with the
key path and a "did you mean" for unknown names. The backends still receive the
plain dict: this module is the contract, not a second way to read options.

Plain pydantic only: importing it must not import any engine.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Field(default=None, gt=0)


class EngineOptions(BaseModel):
    """Base: unknown names are errors; values keep their YAML types."""

    model_config = ConfigDict(extra="forbid")


class LlamaOptions(EngineOptions):
    """llama.cpp through llama-cpp-python: `Llama(...)` keyword arguments, plus the gateway's own."""

    chat_template: Optional[str] = Field(None, description="a Jinja chat template instead of the GGUF's own")
    verbose: bool = Field(False, description="llama.cpp's own logging on stderr")
    n_gpu_layers: Optional[int] = Field(None, ge=-1, description="layers on the GPU (-1: all); default from device")
    split_mode: Optional[int] = Field(None, ge=0, le=2)
    main_gpu: Optional[int] = Field(None, ge=0)
    tensor_split: Optional[list[float]] = None
    vocab_only: Optional[bool] = None
    use_mmap: Optional[bool] = Field(None, description="map the weights (replicas share pages)")
    use_mlock: Optional[bool] = None
    kv_overrides: Optional[dict[str, Union[bool, int, float, str]]] = None
    seed: Optional[int] = None
    n_ctx: Optional[int] = Field(None, gt=0, description="prefer the model's `nctx` key")
    n_batch: Optional[int] = Field(None, gt=0, description="prompt tokens per llama_decode call")
    n_ubatch: Optional[int] = Field(None, gt=0)
    n_threads: Optional[int] = Field(None, gt=0, description="prefer the model's `n_threads` key")
    n_threads_batch: Optional[int] = Field(None, gt=0, description="threads for prompt processing")
    rope_scaling_type: Optional[int] = None
    pooling_type: Optional[int] = None
    attention_type: Optional[int] = None
    rope_freq_base: Optional[float] = None
    rope_freq_scale: Optional[float] = None
    yarn_ext_factor: Optional[float] = None
    yarn_attn_factor: Optional[float] = None
    yarn_beta_fast: Optional[float] = None
    yarn_beta_slow: Optional[float] = None
    yarn_orig_ctx: Optional[int] = Field(None, ge=0)
    logits_all: Optional[bool] = None
    embedding: Optional[bool] = None
    offload_kqv: Optional[bool] = None
    flash_attn: Optional[bool] = None
    op_offload: Optional[bool] = None
    swa_full: Optional[bool] = None
    no_perf: Optional[bool] = None
    last_n_tokens_size: Optional[int] = Field(None, ge=0)
    lora_base: Optional[str] = None
    lora_scale: Optional[float] = None
    lora_path: Optional[str] = None
    numa: Optional[Union[bool, int]] = None
    chat_format: Optional[str] = None
    type_k: Optional[int] = Field(None, ge=0, description="KV cache key type (ggml type id)")
    type_v: Optional[int] = Field(None, ge=0)
    spm_infill: Optional[bool] = None


class VisionOptions(LlamaOptions):
    """Vision chat: llama.cpp plus its projector checks."""

    mmproj_probe: bool = Field(True, description="trial-load the projector in a child process first")
    mmproj_probe_timeout_s: float = Field(300, gt=0)
    max_image_pixels: Optional[int] = Field(
        None, gt=0, description="largest image (width x height) for this model; default: server.max_image_pixels")


class LlamaEmbedOptions(LlamaOptions):
    """GGUF embedding models through llama.cpp."""

    pooling: Optional[Literal["mean", "cls", "last"]] = Field(None, description="default: the GGUF's own")
    normalize: bool = Field(False, description="the default when a request does not say")


class FastembedOptions(EngineOptions):
    """ONNX embedding models through fastembed."""

    model_file: Optional[str] = Field(None, description="which .onnx file, when the folder holds several")
    pooling: Literal["mean", "cls", "none"] = "mean"
    output_name: Optional[str] = None
    max_length: Optional[int] = PositiveInt
    normalize: bool = Field(False, description="the default when a request does not say")
    max_batch_tokens: Optional[int] = Field(None, gt=0, description="padded tokens per ONNX run (8192)")
    providers: Optional[list[Union[str, list[Any]]]] = Field(None, description="onnxruntime execution providers")
    device_ids: Optional[list[int]] = None


class OnnxTextOptions(EngineOptions):
    """ONNX decoder-only text generation through the gateway's own onnxruntime loop."""

    chat_template: Optional[str] = None
    add_special_tokens: bool = True
    log_severity_level: int = Field(3, ge=0, le=4, description="onnxruntime's log level (0 verbose .. 4 fatal)")


class RemoteOptions(EngineOptions):
    """An upstream OpenAI-compatible API."""

    timeout_s: float = Field(600, gt=0)
    connect_timeout_s: float = Field(10, gt=0)
    headers: dict[str, str] = Field(default_factory=dict, description="sent upstream with every request")
    normalize: bool = Field(False, description="embeddings: normalize the upstream's vectors")


class WhisperOptions(EngineOptions):
    """faster-whisper: load options, the gateway's limits, and `transcribe` defaults."""

    max_audio_seconds: Optional[float] = Field(None, gt=0, description="longer audio is a 400")
    compute_type: Optional[str] = Field(None, description="int8 on CPU, the device's default elsewhere")
    device_index: Optional[Union[int, list[int]]] = None
    num_workers: Optional[int] = Field(None, ge=1)
    best_of: Optional[int] = Field(None, ge=1)
    patience: Optional[float] = Field(None, gt=0)
    length_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = Field(None, gt=0)
    no_repeat_ngram_size: Optional[int] = Field(None, ge=0)
    compression_ratio_threshold: Optional[float] = None
    log_prob_threshold: Optional[float] = None
    no_speech_threshold: Optional[float] = None
    condition_on_previous_text: Optional[bool] = None
    prompt_reset_on_temperature: Optional[float] = None
    prefix: Optional[str] = None
    suppress_blank: Optional[bool] = None
    suppress_tokens: Optional[list[int]] = None
    without_timestamps: Optional[bool] = None
    max_initial_timestamp: Optional[float] = None
    prepend_punctuations: Optional[str] = None
    append_punctuations: Optional[str] = None
    multilingual: Optional[bool] = None
    vad_filter: Optional[bool] = Field(None, description="skip silence with Silero VAD")
    vad_parameters: Optional[dict[str, Any]] = None
    max_new_tokens: Optional[int] = Field(None, gt=0)
    chunk_length: Optional[int] = Field(None, gt=0)
    clip_timestamps: Optional[Union[str, list[float]]] = None
    hallucination_silence_threshold: Optional[float] = None
    hotwords: Optional[str] = None
    language_detection_threshold: Optional[float] = None
    language_detection_segments: Optional[int] = Field(None, ge=1)


class DiffusionOptions(EngineOptions):
    """stable-diffusion.cpp: load options, per-generation options, and request defaults."""

    clip_l_path: Optional[str] = None
    clip_g_path: Optional[str] = None
    t5xxl_path: Optional[str] = None
    vae_path: Optional[str] = None
    taesd_path: Optional[str] = None
    control_net_path: Optional[str] = None
    lora_model_dir: Optional[str] = None
    wtype: Optional[str] = None
    rng_type: Optional[str] = None
    sampler_rng_type: Optional[str] = None
    prediction: Optional[str] = None
    offload_params_to_cpu: Optional[bool] = None
    enable_mmap: Optional[bool] = None
    keep_clip_on_cpu: Optional[bool] = None
    keep_control_net_on_cpu: Optional[bool] = None
    keep_vae_on_cpu: Optional[bool] = None
    flash_attn: Optional[bool] = None
    diffusion_flash_attn: Optional[bool] = None
    diffusion_conv_direct: Optional[bool] = None
    vae_conv_direct: Optional[bool] = None
    vae_decode_only: Optional[bool] = None
    image_resize_method: Optional[str] = None
    tae_preview_only: Optional[bool] = None
    sample_method: Optional[str] = None
    scheduler: Optional[str] = None
    clip_skip: Optional[int] = None
    vae_tiling: Optional[bool] = None
    eta: Optional[float] = None
    guidance: Optional[float] = None
    default_steps: Optional[int] = Field(None, ge=1, le=50, description="steps when a request does not say (20)")
    default_cfg_scale: Optional[float] = Field(None, gt=0, description="cfg scale when a request does not say (7)")

