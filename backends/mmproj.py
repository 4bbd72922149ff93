"""Projector (mmproj) files, checked before llama.cpp is trusted with them.

libmtmd does not validate a projector: a file that lacks `mm.2.weight` or
`v.position_embd.weight`, or whose widths, head count or patch grid do not fit
together, kills the whole process with SIGSEGV or SIGABRT (checked with
llama-cpp-python 0.3.36), which for a gateway means every other model too. So a
projector passes two gates before the model thread loads it:

1. `check()` reads the GGUF metadata and tensor table with the `gguf` package
   (no weights are read) and names what is missing or inconsistent;
2. `probe()` loads it in a throwaway child process against a vocab-only copy
   of the language model and encodes one tiny image, so any crash that the
   first gate cannot foresee kills only the child, and its log becomes the
   LoadError message.

The child is backends/mmproj_probe.py (it imports nothing of ours, to start fast).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import LoadError

# Tensors a projector type cannot do without (checked against llama.cpp's clip loader and,
# for "mlp", by removing each tensor in turn: every one listed here crashed the process).
PROJECTOR_TENSORS: dict[str, list[str]] = {
    "mlp": ["mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"],
    "gemma3": ["mm.input_projection.weight"],
    "qwen2vl_merger": ["mm.0.weight", "mm.2.weight"],
    "qwen2.5vl_merger": ["mm.0.weight", "mm.2.weight"],
    "idefics3": ["mm.model.fc.weight"],
}
# Projector types whose vision tower is a ViT with learned absolute positions and a fixed grid.
FIXED_GRID = {"mlp", "gemma3", "idefics3"}
REQUIRED_KEYS = ["clip.vision.embedding_length", "clip.vision.block_count", "clip.vision.attention.head_count",
                 "clip.vision.image_size", "clip.vision.patch_size"]


@dataclass
class ProjectorInfo:
    projector_type: str
    image_size: int
    patch_size: int
    n_embd: int
    n_tensors: int


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 - an unreadable value counts as missing
        return None


def check(path: Path) -> ProjectorInfo:
    """Raise LoadError naming every missing key or tensor that would crash libmtmd."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise LoadError(f"the gguf package is needed to check projector files: {exc}") from exc
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - bad magic, truncated tables, ...
        raise LoadError(f"projector {path.name} is not a readable GGUF file: {exc}") from None
    try:
        return _check(reader, path)
    finally:
        del reader


def _check(reader: Any, path: Path) -> ProjectorInfo:
    tensors = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    name = path.name
    if _field(reader, "clip.has_vision_encoder") is not True:
        raise LoadError(f"projector {name} has no vision encoder (clip.has_vision_encoder is not true)")
    ptype = _field(reader, "clip.vision.projector_type") or _field(reader, "clip.projector_type") or "mlp"
    missing_keys = [k for k in REQUIRED_KEYS if not isinstance(_field(reader, k), int)]
    if missing_keys:
        raise LoadError(f"projector {name} is missing metadata: {', '.join(missing_keys)}")
    n_embd, n_block, n_head, image_size, patch_size = (_field(reader, k) for k in REQUIRED_KEYS)
    problems = []
    if min(n_embd, n_block, n_head, image_size, patch_size) <= 0:
        problems.append("a vision size (embedding_length, block_count, head_count, image_size, patch_size) is 0")
    elif n_embd % n_head:
        problems.append(f"embedding_length {n_embd} is not a multiple of attention.head_count {n_head}")
    missing = [t for t in PROJECTOR_TENSORS.get(ptype, []) if t not in tensors]
    if ptype in PROJECTOR_TENSORS:
        missing += [t for t in ("v.patch_embd.weight",) if t not in tensors]
        for i in range(max(n_block, 0)):
            fused = f"v.blk.{i}.attn_qkv.weight" in tensors
            wanted = ["attn_out", "ffn_down"] + ([] if fused else ["attn_q", "attn_k", "attn_v"])
            missing += [f"v.blk.{i}.{w}.weight" for w in wanted if f"v.blk.{i}.{w}.weight" not in tensors]
    if ptype in FIXED_GRID:
        if "v.position_embd.weight" not in tensors:
            missing.append("v.position_embd.weight")
        elif not problems:
            problems += _grid_problems(tensors, n_embd, image_size, patch_size)
    if missing:
        raise LoadError(f"projector {name} ({ptype}) is missing tensors: {', '.join(missing)}")
    if problems:
        raise LoadError(f"projector {name} ({ptype}) is inconsistent: {'; '.join(problems)}")
    return ProjectorInfo(ptype, image_size, patch_size, n_embd, len(tensors))


def _grid_problems(tensors: dict[str, list[int]], n_embd: int, image_size: int, patch_size: int) -> list[str]:
    """Shapes are ggml order (innermost first): patch_embd [p, p, 3, E], position_embd [E, n_pos]."""
    problems = []
    if image_size % patch_size:
        problems.append(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    patch = tensors.get("v.patch_embd.weight")
    if patch and (patch[0] != patch_size or patch[-1] != n_embd):
        problems.append(f"v.patch_embd.weight {patch} does not match patch_size {patch_size} and embedding_length {n_embd}")
    pos = tensors["v.position_embd.weight"]
    n_pos = (image_size // patch_size) ** 2 + (1 if "v.class_embd" in tensors else 0)
    if pos[0] != n_embd or (len(pos) > 1 and pos[1] != n_pos):
        problems.append(f"v.position_embd.weight {pos} does not match embedding_length {n_embd} and "
                        f"{n_pos} positions ((image_size / patch_size)^2)")
    return problems


# -- the child-process probe ---------------------------------------------------------

_probed: dict[tuple, dict] = {}
_probed_lock = threading.Lock()


def probe(model: Path, mmproj: Path, timeout_s: float = 300.0) -> dict:
    """Load `mmproj` and encode one image in a child process. Returns {"image_tokens": n}."""
    stat = mmproj.stat()
    key = (str(model), str(mmproj), stat.st_size, stat.st_mtime_ns)
    with _probed_lock:
        if key in _probed:
            return _probed[key]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "GGML_NO_BACKTRACE": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run([sys.executable, "-m", "backends.mmproj_probe", str(model), str(mmproj)], cwd=root, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LoadError(f"checking projector {mmproj.name} took longer than {timeout_s:g}s") from None
    out = done.stdout.decode("utf-8", "replace")
    err = done.stderr.decode("utf-8", "replace")
    stages = [line[6:] for line in out.splitlines() if line.startswith("STAGE ")]
    if done.returncode == 0 and out.strip().splitlines()[-1:] and out.strip().splitlines()[-1].startswith("{"):
        result = json.loads(out.strip().splitlines()[-1])
        with _probed_lock:
            _probed[key] = result
        return result
    stage = stages[-1] if stages else "starting"
    reason = explain(err)
    if done.returncode < 0:
        try:
            sig = signal.Signals(-done.returncode).name
        except ValueError:
            sig = f"signal {-done.returncode}"
        raise LoadError(f"projector {mmproj.name} crashed llama.cpp ({sig}) while {stage}"
                        + (f": {reason}" if reason else "") + "; the file is broken or does not fit this engine")
    raise LoadError(f"llama.cpp could not use projector {mmproj.name} ({stage})" + (f": {reason}" if reason else ""))


def explain(log_text: str) -> str:
    """The lines of libmtmd's log that say what went wrong."""
    marks = ("error", "failed", "GGML_ASSERT", "mismatch", "missing", "unknown", "not found")
    lines = [line.strip() for line in log_text.splitlines() if any(m in line for m in marks)]
    lines = [re.sub(r"\S*/([^/\s]+:\d+:)", r"\1", line) for line in lines if not line.startswith("Traceback")]
    return " | ".join(dict.fromkeys(lines[-4:]))[:600]
