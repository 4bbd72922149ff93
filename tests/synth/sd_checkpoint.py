"""A random-weight Stable Diffusion checkpoint that stable-diffusion.cpp really loads and runs.

No real SD weights can be fetched on these machines, so the image tests use noise weights in
the smallest layout sd.cpp accepts: SDXS-512-DS. sd.cpp picks the layout from the tensors
present (`ModelLoader::get_sd_version`): a 768-wide token embedding means SD1; no
`middle_block.1` and no `output_blocks.7.1` means SDXS-512-DS, which is a CLIP-L text encoder
(12 layers x 768, vocabulary 49408), a 3-level UNet (channel_mult 1,2,4, one ResBlock per level,
attention at the two lower resolutions, no middle block) and the tiny autoencoder (`tae.*`) in the
same file instead of a KL VAE. Every tensor must be present with its exact shape.

The file is GGUF with linear weights in q4_0 written straight from random bits (random nibbles,
one scale per block with a random sign), so 441 M parameters are written in one to two seconds.
Convolution weights stay f16 (ggml quantises along the kernel width of 3 or 1, which is not a
multiple of 32), norms are 1, biases 0, weights scaled to ~1/sqrt(fan-in) so activations stay
finite and images differ with seed, prompt and input image.

`python -m tests.synth.sd_checkpoint [PATH]` writes one; `sdxs_checkpoint()` caches one per machine.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("nexa.tests.synth")

LAYOUT_VERSION = 1  # bump when the layout changes, so cached files are rewritten
UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer.text_model."
CONTEXT_DIM = 768
TIME_EMBED = 1280
MODEL_CHANNELS = 320

# (name, shape in PyTorch order, kind) with kind in: linear (q4_0 noise), conv (f16 noise),
# norm (ones), bias (zeros), embed (f16 noise).
Spec = tuple[str, tuple[int, ...], str]


def _linear(prefix: str, n_out: int, n_in: int, bias: bool = True) -> Iterator[Spec]:
    yield f"{prefix}.weight", (n_out, n_in), "linear"
    if bias:
        yield f"{prefix}.bias", (n_out,), "bias"


def _conv(prefix: str, n_out: int, n_in: int, k: int, bias: bool = True) -> Iterator[Spec]:
    yield f"{prefix}.weight", (n_out, n_in, k, k), "conv"
    if bias:
        yield f"{prefix}.bias", (n_out,), "bias"


def _norm(prefix: str, n: int) -> Iterator[Spec]:
    yield f"{prefix}.weight", (n,), "norm"
    yield f"{prefix}.bias", (n,), "bias"


def _resblock(prefix: str, c_in: int, c_out: int) -> Iterator[Spec]:
    yield from _norm(f"{prefix}.in_layers.0", c_in)
    yield from _conv(f"{prefix}.in_layers.2", c_out, c_in, 3)
    yield from _linear(f"{prefix}.emb_layers.1", c_out, TIME_EMBED)
    yield from _norm(f"{prefix}.out_layers.0", c_out)
    yield from _conv(f"{prefix}.out_layers.3", c_out, c_out, 3)
    if c_in != c_out:
        yield from _conv(f"{prefix}.skip_connection", c_out, c_in, 1)


def _transformer(prefix: str, ch: int) -> Iterator[Spec]:
    yield from _norm(f"{prefix}.norm", ch)
    yield from _conv(f"{prefix}.proj_in", ch, ch, 1)
    block = f"{prefix}.transformer_blocks.0"
    for attn, ctx in (("attn1", ch), ("attn2", CONTEXT_DIM)):
        yield from _linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
        yield from _linear(f"{block}.{attn}.to_k", ch, ctx, bias=False)
        yield from _linear(f"{block}.{attn}.to_v", ch, ctx, bias=False)
        yield from _linear(f"{block}.{attn}.to_out.0", ch, ch)
    yield from _linear(f"{block}.ff.net.0.proj", ch * 8, ch)  # GEGLU: 2 x 4*ch
    yield from _linear(f"{block}.ff.net.2", ch, ch * 4)
    for i in (1, 2, 3):
        yield from _norm(f"{block}.norm{i}", ch)
    yield from _conv(f"{prefix}.proj_out", ch, ch, 1)


def unet_specs() -> Iterator[Spec]:
    """sd.cpp's UnetModelBlock for VERSION_SDXS_512_DS (tiny_unet, attention at ds 2 and 4)."""
    u = UNET
    yield from _linear(f"{u}time_embed.0", TIME_EMBED, MODEL_CHANNELS)
    yield from _linear(f"{u}time_embed.2", TIME_EMBED, TIME_EMBED)
    yield from _conv(f"{u}input_blocks.0.0", MODEL_CHANNELS, 4, 3)
    # input: ResBlock per level; tiny UNets skip an index after each; downsample between levels
    yield from _resblock(f"{u}input_blocks.1.0", 320, 320)
    yield from _conv(f"{u}input_blocks.3.0.op", 320, 320, 3)
    yield from _resblock(f"{u}input_blocks.4.0", 320, 640)
    yield from _transformer(f"{u}input_blocks.4.1", 640)
    yield from _conv(f"{u}input_blocks.6.0.op", 640, 640, 3)
    yield from _resblock(f"{u}input_blocks.7.0", 640, 1280)
    yield from _transformer(f"{u}input_blocks.7.1", 1280)
    # output: two ResBlocks per level fed with the skip connections (320,320,320,640,640,1280)
    yield from _resblock(f"{u}output_blocks.0.0", 1280 + 1280, 1280)
    yield from _transformer(f"{u}output_blocks.0.1", 1280)
    yield from _resblock(f"{u}output_blocks.1.0", 1280 + 640, 1280)
    yield from _transformer(f"{u}output_blocks.1.1", 1280)
    yield from _conv(f"{u}output_blocks.2.1.conv", 1280, 1280, 3)
    yield from _resblock(f"{u}output_blocks.3.0", 1280 + 640, 640)
    yield from _transformer(f"{u}output_blocks.3.1", 640)
    yield from _resblock(f"{u}output_blocks.4.0", 640 + 320, 640)
    yield from _transformer(f"{u}output_blocks.4.1", 640)
    yield from _conv(f"{u}output_blocks.5.2.conv", 640, 640, 3)
    yield from _resblock(f"{u}output_blocks.6.0", 640 + 320, 320)
    yield from _resblock(f"{u}output_blocks.7.0", 320 + 320, 320)
    yield from _norm(f"{u}out.0", MODEL_CHANNELS)
    yield from _conv(f"{u}out.2", 4, MODEL_CHANNELS, 3)


def clip_specs() -> Iterator[Spec]:
    """CLIP ViT-L/14 text encoder, transformers naming, as SD1 checkpoints carry it."""
    c, d = CLIP, CONTEXT_DIM
    yield f"{c}embeddings.token_embedding.weight", (49408, d), "linear"  # q4_0: 21 MB, not 76
    yield f"{c}embeddings.position_embedding.weight", (77, d), "embed"
    for i in range(12):
        layer = f"{c}encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield from _linear(f"{layer}.self_attn.{proj}", d, d)
        yield from _norm(f"{layer}.layer_norm1", d)
        yield from _norm(f"{layer}.layer_norm2", d)
        yield from _linear(f"{layer}.mlp.fc1", d * 4, d)
        yield from _linear(f"{layer}.mlp.fc2", d, d * 4)
    yield from _norm(f"{c}final_layer_norm", d)


def _tae_block(prefix: str) -> Iterator[Spec]:
    for i in (0, 2, 4):
        yield from _conv(f"{prefix}.conv.{i}", 64, 64, 3)


def tae_specs() -> Iterator[Spec]:
    """TAESD (madebyollin/taesd) as sd.cpp's TinyEncoder/TinyDecoder number their layers."""
    enc = "tae.encoder.layers"
    yield from _conv(f"{enc}.0", 64, 3, 3)
    yield from _tae_block(f"{enc}.1")
    index = 2
    for _ in range(3):
        yield from _conv(f"{enc}.{index}", 64, 64, 3, bias=False)  # stride-2 downsample
        index += 1
        for _ in range(3):
            yield from _tae_block(f"{enc}.{index}")
            index += 1
    yield from _conv(f"{enc}.{index}", 4, 64, 3)

    dec = "tae.decoder.layers"
    yield from _conv(f"{dec}.0", 64, 4, 3)
    index = 2  # 1 is a ReLU
    for stage in range(3):
        for _ in range(3):
            yield from _tae_block(f"{dec}.{index}")
            index += 1
        index += 1  # nn.Upsample
        yield from _conv(f"{dec}.{index}", 64, 64, 3, bias=False)
        index += 1
    yield from _tae_block(f"{dec}.{index}")
    yield from _conv(f"{dec}.{index + 1}", 3, 64, 3)


def all_specs() -> list[Spec]:
    return [*clip_specs(), *unet_specs(), *tae_specs()]


# -- writing -------------------------------------------------------------------------------

def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]


def _f16_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    # Uniform noise from random bytes through a 256-entry table: ~10x faster than normal().
    table = ((np.arange(256, dtype=np.float32) - 127.5) / 127.5 * std * math.sqrt(3)).astype(np.float16)
    return table[np.frombuffer(rng.bytes(int(np.prod(shape))), dtype=np.uint8)].reshape(shape)


def _q4_0_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """q4_0 blocks (f16 scale + 16 bytes of nibbles) from random bits: value = (nibble - 8) * d.

    Uniform nibbles have a standard deviation of ~4.61, so d = std / 4.61; its sign is random
    per block, which cancels the -0.5*d mean of (nibble - 8)."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    assert cols % 32 == 0, f"q4_0 needs rows that are a multiple of 32, got {shape}"
    n_blocks = rows * cols // 32
    blocks = np.frombuffer(rng.bytes(n_blocks * 18), dtype=np.uint8).reshape(n_blocks, 18).copy()
    scale = np.float16(std / 4.61)
    signs = np.where(blocks[:, 0] & 1, scale, -scale).astype(np.float16)
    blocks[:, :2] = signs.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(*shape[:-1], cols // 32 * 18)


def write_sdxs_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint to `path` (atomically: a temporary file, then a rename)."""
    import gguf

    started = time.monotonic()
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="sd", use_temp_file=False)
    writer.add_name("nexa synthetic SDXS-512-DS (random weights)")
    n_params = 0
    for name, shape, kind in all_specs():
        n_params += int(np.prod(shape))
        std = 1.0 / math.sqrt(_fan_in(shape))
        if name.endswith("token_embedding.weight"):
            std = 0.02
        if kind == "linear":
            writer.add_tensor(name, _q4_0_noise(rng, shape, std), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        elif kind == "conv":
            writer.add_tensor(name, _f16_noise(rng, shape, std))
        elif kind == "embed":
            writer.add_tensor(name, _f16_noise(rng, shape, 0.02))
        elif kind == "norm":
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        else:
            writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    log.info("wrote synthetic SDXS checkpoint %s: %d parameters, %.0f MiB in %.1fs", path, n_params,
             path.stat().st_size / 2**20, time.monotonic() - started, extra={"event": "synth_written"})
    return path


def models_dir() -> Path:
    root = os.environ.get("NEXA_TEST_MODELS")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nexa" / "test-models"


def sdxs_checkpoint() -> Path:
    """The machine's cached synthetic checkpoint, written on first use (under a lock, so
    parallel test processes write it once)."""
    path = models_dir() / f"synth-sdxs-512-ds-v{LAYOUT_VERSION}-q4_0.gguf"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                write_sdxs_checkpoint(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else sdxs_checkpoint()
    if len(sys.argv) > 1:
        write_sdxs_checkpoint(target)
    print(target)
