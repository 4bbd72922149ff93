"""The one engine registry: for each (type, format) the manifest can declare, the engine class,
its name, the type of its `options:` and the class that serves `parallel: N` (continuous batching)
where it has one. Capabilities are the engine class's own (`Backend.capabilities`, and
`capabilities_of` before load); routes are wired from them.

A new engine is one module in backends/, one options model in backends/options.py and one line
here. Classes are imported lazily, so a missing optional engine (stable-diffusion.cpp) only fails
the models that need it, with a clear message.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from backends import options as opt
from backends.base import Backend
from backends.errors import LoadError
from schemas.manifest import ModelFormat, ModelSpec, ModelType


@dataclass(frozen=True)
class Engine:
    target: str  # "module:Class"
    name: str  # what error messages and `nexa schema` call it
    options: type[opt.EngineOptions]
    batched: str | None = None  # "module:Class" serving `parallel: N` > 1; None: the engine cannot batch

    def load_class(self, parallel: int = 1) -> type[Backend]:
        target = self.batched if parallel > 1 and self.batched else self.target
        return import_class(target, f"the engine {self.name}")


ENGINES: dict[tuple[ModelType, ModelFormat], Engine] = {
    (ModelType.NLP, ModelFormat.gguf): Engine("backends.llama:LlamaBackend", "llama.cpp", opt.LlamaOptions,
                                              batched="backends.llama_batch:BatchedLlamaBackend"),
    (ModelType.NLP, ModelFormat.onnx): Engine("backends.onnx_text:OnnxTextBackend", "onnxruntime text",
                                              opt.OnnxTextOptions),
    (ModelType.MULTIMODAL, ModelFormat.gguf): Engine("backends.vision:VisionBackend", "llama.cpp vision",
                                                     opt.VisionOptions),
    (ModelType.AUDIO, ModelFormat.bin): Engine("backends.whisper:WhisperBackend", "faster-whisper", opt.WhisperOptions),
    (ModelType.TEXT_EMBEDDING, ModelFormat.onnx): Engine("backends.fastembed:FastembedBackend", "fastembed",
                                                         opt.FastembedOptions),
    (ModelType.TEXT_EMBEDDING, ModelFormat.gguf): Engine("backends.llama_embed:LlamaEmbedBackend",
                                                         "llama.cpp embeddings", opt.LlamaEmbedOptions),
    (ModelType.COMPUTER_VISION, ModelFormat.gguf): Engine("backends.diffusion:DiffusionBackend",
                                                          "stable-diffusion.cpp", opt.DiffusionOptions),
    # .safetensors/.ckpt checkpoints
    (ModelType.COMPUTER_VISION, ModelFormat.bin): Engine("backends.diffusion:DiffusionBackend",
                                                         "stable-diffusion.cpp", opt.DiffusionOptions),
    (ModelType.NLP, ModelFormat.remote): Engine("backends.remote:RemoteTextBackend", "a remote upstream",
                                                opt.RemoteOptions),
    (ModelType.TEXT_EMBEDDING, ModelFormat.remote): Engine("backends.remote:RemoteEmbedBackend", "a remote upstream",
                                                           opt.RemoteOptions),
}


def engine_for(spec: ModelSpec) -> Engine | None:
    """The registry's engine for a model; a custom `backend:` naming a registered class gets its
    entry, any other custom backend None (it owns its options)."""
    if spec.backend:
        return next((e for e in ENGINES.values() if spec.backend in (e.target, e.batched)), None)
    return ENGINES.get((spec.type, spec.format))


def backend_for(spec: ModelSpec) -> type[Backend]:
    """The class that loads `spec`: the manifest's own `backend: module:Class` if given, else the
    registry's engine (its batching class when `parallel` > 1)."""
    if spec.backend:
        return import_class(spec.backend, f"backend {spec.backend}")
    try:
        engine = ENGINES[(spec.type, spec.format)]
    except KeyError:
        raise LoadError(f"no backend serves type {spec.type.value} in format {spec.format.value}") from None
    return engine.load_class(spec.parallel)


def import_class(target: str, what: str) -> type[Backend]:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"{what} is not installed: {exc}") from exc
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise LoadError(f"{what}: {module_name} has no {class_name}") from None
