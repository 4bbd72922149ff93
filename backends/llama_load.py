"""Opening GGUF models with llama-cpp-python: the one place `llama_cpp.Llama(...)` arguments are made.

Every llama.cpp use (text, batched text, vision, embeddings) builds its arguments with
`llama_kwargs`: the manifest's context, offload and threads, the use's own settings, then the
manifest's `options:` (typed in backends/options.py) verbatim, minus the options the gateway
reads itself.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from backends.errors import LoadError
from schemas.manifest import Device, ModelSpec, ModelType

# `options:` the gateway reads itself (backends/options.py), never passed to `llama_cpp.Llama`.
GATEWAY_OPTIONS = frozenset({"chat_template", "mmproj_probe", "mmproj_probe_timeout_s", "max_image_pixels",
                             "pooling", "normalize", "max_documents", "max_document_chars", "max_length"})

LOAD_LOCK = threading.Lock()


def gguf_file(path: Path) -> Path:
    """A folder stands for the one .gguf it holds."""
    if not path.is_dir():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) != 1:
        raise LoadError(f"{path} is a folder with {len(ggufs)} .gguf files; name one with `file:`")
    return ggufs[0]


def open_llama(path: Path, kwargs: dict[str, Any]) -> Any:
    """Create a `llama_cpp.Llama`, turning its failures into one clear LoadError."""
    import llama_cpp

    try:
        with LOAD_LOCK:  # verbose=False redirects the process's stdout/stderr while it loads
            return llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise LoadError(f"llama.cpp could not load {path.name}: {exc}") from exc
    except TypeError as exc:
        raise LoadError(f"bad engine option for llama.cpp: {exc}") from exc


def gpu_layers(spec: ModelSpec) -> int:
    """Layers to offload: the manifest's number, else all on a GPU device, none on the CPU."""
    if spec.n_gpu_layers is not None:
        return spec.n_gpu_layers
    if spec.device == Device.cpu:
        return 0
    if spec.device == Device.auto:
        import llama_cpp

        return -1 if llama_cpp.llama_supports_gpu_offload() else 0
    return -1


def generation_defaults(spec: ModelSpec) -> dict[str, Any]:
    """Prompt processing as llama.cpp's own server runs it, where llama-cpp-python's defaults differ
    (bench/RESULTS.md §16 measures each; `options:` still override them):

    - `swa_full: false` for text models (llama.cpp's context default is a full-size cache for
      sliding-window layers; llama-server's is not): Gemma 3's 512-token window layers keep and attend
      over about n_swa + n_ubatch cells instead of the whole prompt (prefill 1.3× faster at 4k tokens,
      1.8× at 16k). A prefix then stays reusable only while its window's cells are still held; the text
      engines check that (backends/llama_cache.py `window_held`) and prefill instead, as llama-server
      does. Vision handlers reuse prefixes on their own, so MULTIMODAL models keep the full-size cache;
    - `n_batch: 2048` (llama-cpp-python 512): `Llama.eval` makes one `llama_decode` per `n_batch` tokens,
      each split into `n_ubatch` (512) micro-batches by llama.cpp.

    Flash attention stays off (llama-server's `-fa auto` turns it on): on 2 CPU threads it was slower with
    the window-sized cache (§16), and its CPU kernel accumulates in f16, so answers would depend more on
    how a prompt is split into batches."""
    defaults: dict[str, Any] = {"n_batch": 2048}
    if spec.type == ModelType.NLP:
        defaults["swa_full"] = False
    return defaults


def llama_kwargs(spec: ModelSpec, path: Path, defaults: dict[str, Any] | None = None, **fixed: Any) -> dict[str, Any]:
    """`llama_cpp.Llama` arguments from the manifest: context, offload, threads (prompt processing
    too, unless options.n_threads_batch says otherwise), then `defaults` (a use's own settings, which
    `options` may still change), then `options` verbatim, then `fixed` (what the use must have)."""
    options = {k: v for k, v in spec.options.items() if k not in GATEWAY_OPTIONS}
    kwargs: dict[str, Any] = {
        "model_path": str(path),
        "n_ctx": spec.nctx,
        "n_gpu_layers": gpu_layers(spec),
        "verbose": bool(options.pop("verbose", False)),
    }
    if spec.n_threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = spec.n_threads
    kwargs.update(defaults or {})
    kwargs.update(options)
    kwargs.update(fixed)
    return kwargs
