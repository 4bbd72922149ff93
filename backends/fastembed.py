"""TEXT_EMBEDDING models in ONNX format, through fastembed, from a local folder.

fastembed only loads a local model that was registered first
(`TextEmbedding.add_custom_model`) and is then opened with
`specific_model_path=`: no model hub is contacted at run time. Each folder is
registered under a private name derived from its path, with
`normalization=False`, so the engine hands back raw pooled vectors and the
request's `normalize` flag decides the L2 normalization.

The folder needs the ONNX file, tokenizer.json and a tokenizer_config.json
whose `model_max_length` is a positive integer (fastembed's truncation limit).
Some exports carry 1e30 or nothing there; then a private shadow folder (links
to the real files plus a fixed tokenizer_config.json) is loaded instead, with
the limit from `options.max_length`, config.json's `max_position_embeddings`,
or 512. The model cache itself is never modified.

Text inputs are tokenized once by fastembed's own tokenizer (its truncation,
no padding); those ids, like token-id inputs (no decode/re-encode round trip,
which is lossy for [UNK] and casing), are fed directly to fastembed's ONNX
session and pooled as fastembed pools (`TextEmbedding.embed` would tokenize a
second time). A request (or a micro-batch of requests) is one ONNX run, unless
padding it would exceed `max_batch_tokens` (default 8192 padded tokens, e.g.
16 inputs of 512 tokens or 512 of 16): then it runs in as few consecutive
chunks as fit.

Manifest options: `model_file`, `pooling` (mean | cls | none, default mean),
`output_name`, `max_length`, `max_batch_tokens`, `normalize` (the default when
a request does not say); other options go to fastembed (e.g. `providers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from backends.embeddings import EmbeddingBackend, read_options, special_frame
from backends.errors import BackendError, LoadError
from schemas.manifest import Device, ModelSpec

log = logging.getLogger("nexa.backends.fastembed")

OPTIONS = {"model_file": str, "pooling": str, "output_name": str, "max_length": int, "normalize": bool,
           "max_batch_tokens": int}
MAX_BATCH_TOKENS = 8192  # padded tokens per ONNX run: bounds attention memory (rows x heads x width^2)
_REGISTER_LOCK = threading.Lock()  # fastembed's custom-model registry is class-level


def _valid_length(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= sys.maxsize


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LoadError(f"cannot read {path.name}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def locate(path: Path, model_file: str | None) -> tuple[Path, str]:
    """(folder, ONNX file relative to it) for a folder or an .onnx path."""
    if path.is_file():
        return path.parent, path.name
    if model_file:
        if not (path / model_file).is_file():
            raise LoadError(f"{path} has no {model_file}")
        return path, model_file
    for candidate in ("model.onnx", "onnx/model.onnx"):
        if (path / candidate).is_file():
            return path, candidate
    found = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.onnx"))
    if len(found) != 1:
        raise LoadError(f"{path} holds {len(found)} .onnx files; name one with options.model_file")
    return path, found[0]


def prepare_folder(folder: Path, max_length: int | None) -> tuple[Path, Path | None]:
    """A folder fastembed accepts: `folder` itself, or a temporary shadow of it with
    a fixed tokenizer_config.json (returned second, to be removed on close)."""
    if not (folder / "tokenizer.json").is_file():
        raise LoadError(f"{folder} has no tokenizer.json (fastembed needs the tokenizer beside the ONNX file)")
    config = _read_json(folder / "tokenizer_config.json")
    if _valid_length(config.get("model_max_length")) or _valid_length(config.get("max_length")):
        return folder, None
    limit = max_length or _read_json(folder / "config.json").get("max_position_embeddings")
    limit = limit if _valid_length(limit) else 512
    shadow = Path(tempfile.mkdtemp(prefix="nexa-fastembed-"))
    for item in folder.iterdir():
        if item.name != "tokenizer_config.json":
            (shadow / item.name).symlink_to(item.resolve())
    (shadow / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": limit}))
    log.warning("%s: tokenizer_config.json has no positive model_max_length (%r); using %d",
                folder, config.get("model_max_length"), limit,
                extra={"event": "tokenizer_config_fixed", "folder": str(folder), "max_length": limit})
    return shadow, shadow


def _register(folder: Path, model_file: str, pooling: str, output_name: str | None, dim: int) -> str:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    kinds = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS, "none": PoolingType.DISABLED}
    key = hashlib.sha256(f"{folder.resolve()}|{model_file}|{pooling}|{output_name}".encode()).hexdigest()[:16]
    name = f"nexa-local/{key}"
    with _REGISTER_LOCK:
        if not any(m["model"].lower() == name for m in TextEmbedding.list_supported_models()):
            TextEmbedding.add_custom_model(
                model=name, pooling=kinds[pooling], normalization=False, sources=ModelSource(url=folder.as_uri()),
                dim=dim, model_file=model_file, output_name=output_name,
                description=f"local model folder {folder}",
            )
    return name


def chunks(lengths: list[int], budget: int) -> list[range]:
    """Consecutive runs of inputs whose padded size (rows x longest) stays within `budget`."""
    out, start, width = [], 0, 0
    for index, length in enumerate(lengths):
        wider = max(width, length)
        if index > start and (index - start + 1) * wider > budget:
            out.append(range(start, index))
            start, wider = index, length
        width = wider
    out.append(range(start, len(lengths)))
    return out


def _fastembed_device(device: Device) -> Any:
    from fastembed.common.types import Device as FastembedDevice

    if device == Device.cpu:
        return False
    if device in (Device.cuda, Device.gpu):
        return True
    if device == Device.auto:
        return FastembedDevice.AUTO
    raise LoadError(f"device {device.value} is not available for ONNX models; use auto, cpu, gpu or cuda")


class FastembedBackend(EmbeddingBackend):
    """all-MiniLM-L6-v2 and other sentence-transformers ONNX exports."""

    def __init__(self, spec: ModelSpec, path: Path, engine: Any, pooling: str, shadow: Path | None):
        super().__init__(spec, path)
        self.engine = engine
        self.pooling = pooling
        self._shadow = shadow
        self.tokenizer = engine.model.tokenizer  # fastembed's own: truncating, batch-longest padding
        self._untruncated = None
        self._unpadded = self._clone(truncating=True)
        self.max_batch_tokens = MAX_BATCH_TOKENS
        self.max_tokens = int(self.tokenizer.truncation["max_length"])
        self.n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.pad_id = int((self.tokenizer.padding or {}).get("pad_id", 0))
        with_special = self.tokenizer.encode("a")
        without = self.tokenizer.encode("a", add_special_tokens=False)
        self.prefix, self.suffix = special_frame(with_special.ids, without.ids)

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "FastembedBackend":
        try:
            from fastembed import TextEmbedding
        except ImportError as exc:
            raise LoadError(f"fastembed is not installed: {exc}") from exc
        options = dict(spec.options)
        own = read_options(options, OPTIONS, positive=("max_length", "max_batch_tokens"))
        pooling = own.get("pooling", "mean")
        if pooling not in ("mean", "cls", "none"):
            raise LoadError(f"option pooling must be mean, cls or none, got {pooling!r}")
        folder, model_file = locate(path, own.get("model_file"))
        model_config = _read_json(folder / "config.json")
        positions = model_config.get("max_position_embeddings")
        if own.get("max_length") and _valid_length(positions) and own["max_length"] > positions:
            raise LoadError(f"option max_length is {own['max_length']}, but the model has {positions} positions")
        folder, shadow = prepare_folder(folder, own.get("max_length"))
        dim = model_config.get("hidden_size")
        name = _register(folder, model_file, pooling, own.get("output_name"), dim if _valid_length(dim) else 0)
        try:
            engine = TextEmbedding(name, cache_dir=str(folder), specific_model_path=str(folder),
                                   cuda=_fastembed_device(spec.device), threads=spec.n_threads,
                                   lazy_load=False, **options)
            backend = cls(spec, path, engine, pooling, shadow)
            if own.get("max_length"):
                backend.set_max_tokens(own["max_length"])
            backend.default_normalize = own.get("normalize", False)
            backend.max_batch_tokens = own.get("max_batch_tokens", MAX_BATCH_TOKENS)
            backend.dim = int(backend.embed(["warm up"]).vectors.shape[1])
        except Exception as exc:  # onnxruntime and tokenizers raise many types for a bad folder
            if shadow is not None:
                shutil.rmtree(shadow, ignore_errors=True)
            if isinstance(exc, LoadError):
                raise
            raise LoadError(f"fastembed could not load {folder}/{model_file}: {exc}") from exc
        log.info("ONNX embedding model ready: %d dims, max %d tokens, %s pooling", backend.dim, backend.max_tokens,
                 pooling, extra={"event": "embed_model", "model": spec.name, "providers": backend.providers()})
        return backend

    def set_max_tokens(self, limit: int) -> None:
        """Change the truncation limit of fastembed's tokenizer (and ours, the same object)."""
        direction = self.tokenizer.truncation.get("direction", "right")
        self.tokenizer.enable_truncation(max_length=limit, direction=direction)
        self.max_tokens = limit
        self._untruncated = None
        self._unpadded = self._clone(truncating=True)

    def providers(self) -> list[str]:
        return list(self.engine.model.model.get_providers())

    def close(self) -> None:
        self.engine = None
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._shadow = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pooling": self.pooling, "providers": self.providers()}

    # -- engine calls ----------------------------------------------------------

    def _clone(self, truncating: bool) -> Any:
        """fastembed's tokenizer without padding (we pad in `_run_ids`), with or without its truncation."""
        from tokenizers import Tokenizer

        clone = Tokenizer.from_str(self.tokenizer.to_str())
        clone.no_padding()
        if not truncating:
            clone.no_truncation()
        return clone

    def _full_length(self, text: str) -> int:
        if self._untruncated is None:
            self._untruncated = self._clone(truncating=False)
        return len(self._untruncated.encode(text).ids)

    def _text_sequences(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """One tokenization (fastembed's tokenizer, unpadded): its ids are both what is
        counted and what runs through the ONNX session (`_run_ids`, pooled as fastembed pools)."""
        sequences = []
        for index, encoding in enumerate(self._unpadded.encode_batch(texts)):
            if encoding.overflowing and not truncate:
                raise BackendError(
                    f"input[{index}] is {self._full_length(texts[index])} tokens long, more than this model's "
                    f"maximum of {self.max_tokens}; shorten it or send \"truncate\": true")
            sequences.append(encoding.ids)
        return sequences

    def _forward(self, sequences: list[list[int]]) -> np.ndarray:
        parts = [self._run_ids(sequences[c.start:c.stop])
                 for c in chunks([len(s) for s in sequences], self.max_batch_tokens)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run_ids(self, sequences: list[list[int]]) -> np.ndarray:
        """Token ids straight into fastembed's ONNX session, pooled as fastembed pools."""
        from fastembed.common.utils import mean_pooling

        session = self.engine.model.model
        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        names = {node.name for node in session.get_inputs()}
        feed = {"input_ids": ids}
        if "attention_mask" in names:
            feed["attention_mask"] = mask
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        output = session.run(self.engine.model.ONNX_OUTPUT_NAMES, feed)[0]
        if self.pooling == "mean":
            return mean_pooling(output, mask).astype(np.float32)
        if self.pooling == "cls":
            return np.asarray(output[:, 0], dtype=np.float32)
        return np.asarray(output, dtype=np.float32)
