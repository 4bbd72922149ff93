"""A tiny random-weight vision-language pair that llama.cpp's multimodal path really runs.

No LLaVA/mmproj weights can be fetched on these machines, so the vision tests write their own:

- a LLaMA language model (2 blocks, n_embd 64) with a small byte-level BPE tokenizer of our own
  (the 256 byte tokens, a few merges, ChatML control tokens) and a ChatML chat template, about
  100 KB;
- a LLaVA-1.5-style "mlp" projector (`clip.projector_type = "mlp"`): a 2-block ViT on 32x32 images
  with 16x16 patches, so every image becomes (32/16)^2 = 4 embeddings, projected to T = 64 = the
  language model's n_embd.

The weights are noise scaled by 1/sqrt(fan-in) (norms 1, biases 0), so activations stay finite and
different images give different embeddings and so different output. The keys, tensors and
constraints are those of /work/shared/MODELS.md ("Synthetic vision-language pair").

`vlm_pair()` writes the pair once per machine under ~/.cache/nexa/test-models (`NEXA_TEST_MODELS`
overrides); `write_projector(path, drop=[...])` writes broken variants for the failure tests.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from gateway.manifest.hub import file_lock as _locked

VERSION = 1  # bump when the output changes, so cached files are rewritten
N_EMBD = 64  # the language model's width = the projector's output width T
IMAGE_SIZE = 32
PATCH_SIZE = 16
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ i", "a t", "e n"]


def test_models_dir() -> Path:
    root = os.environ.get("NEXA_TEST_MODELS")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nexa" / "test-models"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies store)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def _vocab() -> tuple[list[str], list[int], list[str]]:
    tokens = [_bytes_to_unicode()[b] for b in range(256)]
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [1] * len(tokens)  # normal
    tokens += SPECIAL
    types += [3] * len(SPECIAL)  # control
    return tokens, types, MERGES


def _noise(rng: np.random.Generator, *shape: int, fan_in: int | None = None) -> np.ndarray:
    scale = 1.0 / np.sqrt(fan_in if fan_in else shape[-1])
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def write_language_model(path: Path, *, n_embd: int = N_EMBD, n_layer: int = 2, seed: int = 0) -> Path:
    """A LLaMA with a byte-level BPE vocabulary and a ChatML template (about 100 KB)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types, merges = _vocab()
    n_vocab, n_ff, n_head = len(tokens), n_embd * 2, 4
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("nexa-test-tiny-llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    writer.add_tensor("token_embd.weight", _noise(rng, n_vocab, n_embd, fan_in=1))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("output.weight", _noise(rng, n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", _noise(rng, n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", _noise(rng, n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", _noise(rng, n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", _noise(rng, n_embd, n_ff))
    _finish(writer)
    return path


def projector_tensors(*, n_embd_text: int = N_EMBD, seed: int = 1) -> dict[str, np.ndarray]:
    """Every tensor of the "mlp" projector, numpy (PyTorch) shape order."""
    rng = np.random.default_rng(seed)
    e, ff, h, p = 32, 48, 64, PATCH_SIZE
    n_patches = TOKENS_PER_IMAGE
    out: dict[str, np.ndarray] = {
        "v.patch_embd.weight": _noise(rng, e, 3, p, p, fan_in=3 * p * p),
        "v.position_embd.weight": _noise(rng, n_patches, e, fan_in=1) * 0.1,
    }
    for i in range(2):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            out[f"v.blk.{i}.{name}.weight"] = _noise(rng, e, e)
            out[f"v.blk.{i}.{name}.bias"] = np.zeros(e, np.float32)
        for name in ("ln1", "ln2"):
            out[f"v.blk.{i}.{name}.weight"] = np.ones(e, np.float32)
            out[f"v.blk.{i}.{name}.bias"] = np.zeros(e, np.float32)
        out[f"v.blk.{i}.ffn_up.weight"] = _noise(rng, ff, e)
        out[f"v.blk.{i}.ffn_up.bias"] = np.zeros(ff, np.float32)
        out[f"v.blk.{i}.ffn_down.weight"] = _noise(rng, e, ff)
        out[f"v.blk.{i}.ffn_down.bias"] = np.zeros(e, np.float32)
    out["mm.0.weight"] = _noise(rng, h, e)
    out["mm.0.bias"] = np.zeros(h, np.float32)
    # Large enough that the image embeddings move the language model's logits visibly.
    out["mm.2.weight"] = _noise(rng, n_embd_text, h) * 4
    out["mm.2.bias"] = np.zeros(n_embd_text, np.float32)
    return out


def write_projector(path: Path, *, n_embd_text: int = N_EMBD, drop: Iterable[str] = (), seed: int = 1,
                    keys: dict | None = None) -> Path:
    """The projector; `drop` leaves tensors out and `keys` overrides metadata (for the failure tests)."""
    import gguf

    dropped = set(drop)
    writer = gguf.GGUFWriter(str(path), "clip")
    meta: dict = {
        "clip.has_vision_encoder": True,
        "clip.projector_type": "mlp",
        "clip.vision.embedding_length": 32,
        "clip.vision.feed_forward_length": 48,
        "clip.vision.block_count": 2,
        "clip.vision.projection_dim": n_embd_text,
        "clip.vision.image_size": IMAGE_SIZE,
        "clip.vision.patch_size": PATCH_SIZE,
        "clip.vision.attention.head_count": 4,
        "clip.vision.attention.layer_norm_epsilon": 1e-6,
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
    }
    meta.update(keys or {})
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_array(key, [float(v) for v in value])
    for name, array in projector_tensors(n_embd_text=n_embd_text, seed=seed).items():
        if name not in dropped:
            writer.add_tensor(name, array)
    _finish(writer)
    return path


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()



def _cached(name: str, write) -> Path:
    out = test_models_dir() / name
    with _locked(out):
        if not out.exists():
            partial = out.with_name(out.name + ".partial")
            write(partial)
            os.replace(partial, out)
    return out


def vlm_pair() -> tuple[Path, Path]:
    """(language model, projector), written once per machine."""
    model = _cached(f"tiny-llama-bpe-v{VERSION}.gguf", write_language_model)
    mmproj = _cached(f"tiny-mmproj-mlp-v{VERSION}.gguf", write_projector)
    return model, mmproj


def png(color: tuple[int, int, int] | str, size: int = IMAGE_SIZE) -> bytes:
    """A solid-colour PNG (or "noise": random pixels from a fixed seed)."""
    from PIL import Image

    if color == "noise":
        pixels = np.random.default_rng(7).integers(0, 256, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
    else:
        image = Image.new("RGB", (size, size), color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    for written in vlm_pair():
        print(written, written.stat().st_size)
