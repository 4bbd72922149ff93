"""The diffusion backend's guards against the two crashes of stable-diffusion-cpp-python 0.4.7.

Everything that touches the native library runs in a child Python process: if a guard
regressed, the child would die of SIGSEGV and the test would fail, instead of taking pytest
down with it. The children print one JSON line of facts for the assertions here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.synth.sd_checkpoint import all_specs, sdxs_checkpoint

pytest.importorskip("stable_diffusion_cpp")
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import gc, json, sys
from pathlib import Path
from backends.errors import BackendError, LoadError
from backends.diffusion import DiffusionBackend, ImageParams, active_native_calls
from schemas.manifest import ModelSpec

def load(path, **options):
    spec = ModelSpec(name="m", source=str(path), type="COMPUTER_VISION", n_threads=2, options=options)
    return DiffusionBackend.load(spec, Path(path))
"""


def run_child(code: str) -> dict:
    """Run `code` in a fresh interpreter; it must exit 0 and print a JSON line last."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    assert proc.returncode == 0, f"child exited with {proc.returncode} (negative: killed by that signal)\n" \
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    files = {"garbage": folder / "x.gguf", "truncated": folder / "truncated.gguf", "not_sd": folder / "llm.gguf"}
    files["garbage"].write_bytes(os.urandom(1024 * 1024))
    with open(sdxs_checkpoint(), "rb") as full:
        files["truncated"].write_bytes(full.read(8_000_000))
    # A well-formed GGUF that is not a diffusion model at all.
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(files["not_sd"]), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    writer.add_tensor("padding", np.zeros((1024,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return files


def test_the_synthetic_checkpoint_has_the_sdxs_layout():
    specs = all_specs()
    names = [name for name, _, _ in specs]
    assert len(names) == len(set(names)) == 610
    assert not any(".middle_block." in n for n in names)  # what makes sd.cpp pick SDXS-512-DS
    assert not any(n.startswith("model.diffusion_model.output_blocks.7.1.") for n in names)
    assert sum(1 for n in names if n.startswith("tae.")) == 134
    shapes = dict((n, s) for n, s, _ in specs)
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert sdxs_checkpoint().stat().st_size > 400 * 2**20


def test_corrupt_truncated_and_foreign_files_are_load_errors_not_crashes(broken_files):
    facts = run_child(f"""
        errors = {{}}
        for name, path in {json.dumps({k: str(v) for k, v in broken_files.items()})}.items():
            try:
                load(path)
                errors[name] = None
            except LoadError as exc:
                errors[name] = str(exc)
        gc.collect()  # the half-built wrapper objects are collected here: no free_sd_ctx(NULL)
        print(json.dumps(errors))
    """)
    assert facts["garbage"] and "could not load x.gguf" in facts["garbage"] and "unknown format" in facts["garbage"]
    assert facts["truncated"] and "read tensor data failed" in facts["truncated"]
    assert facts["not_sd"] and "could not load llm.gguf" in facts["not_sd"]


def test_missing_files_folders_and_unknown_options_are_load_errors(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"x" * 2048)
    (tmp_path / "b.safetensors").write_bytes(b"x" * 2048)
    facts = run_child(f"""
        out = []
        for path, options in [({str(tmp_path / 'none.gguf')!r}, {{}}), ({str(tmp_path)!r}, {{}}),
                              ({str(sdxs_checkpoint())!r}, {{"sampler": "euler"}}),
                              ({str(sdxs_checkpoint())!r}, {{"sample_method": "warp_drive"}}),
                              ({str(sdxs_checkpoint())!r}, {{"default_steps": "many"}})]:
            try:
                load(path, **options)
                out.append(None)
            except LoadError as exc:
                out.append(str(exc))
        print(json.dumps(out))
    """)
    assert "does not exist" in facts[0]
    assert "2 model files" in facts[1]
    assert "unknown option(s) for stable-diffusion.cpp: sampler" in facts[2]
    assert "sample_method 'warp_drive' is not one of" in facts[3] and "euler_a" in facts[3]
    assert "must be numbers" in facts[4]


def test_progress_is_reported_and_the_native_callback_is_reset_after_every_call():
    facts = run_child(f"""
        import stable_diffusion_cpp as sd_cpp
        installed = []
        real = sd_cpp.sd_set_progress_callback
        def spy(callback, data):
            installed.append(callback is not None)
            return real(callback, data)
        sd_cpp.sd_set_progress_callback = spy
        backend = load({str(sdxs_checkpoint())!r})
        after_load = list(installed)
        steps, sizes, pixels = [], [], []
        for seed in (1, 1, 2):
            images = backend.generate(ImageParams(prompt="a cat", width=64, height=64, steps=2, cfg_scale=1, seed=seed),
                                      on_step=lambda step, total: steps.append([step, total]))
            sizes.append(images[0].image.size)
            pixels.append(images[0].image.tobytes().hex())
            gc.collect()  # a callback the engine still pointed at would be freed here
        # a call without a reporter after calls with one: the crash of the unguarded wrapper
        backend.generate(ImageParams(prompt="a cat", width=64, height=64, steps=1, cfg_scale=1, seed=3))
        pair = backend.generate(ImageParams(prompt="a cat", width=64, height=64, steps=1, cfg_scale=1, seed=3, count=2))
        backend.close()
        print(json.dumps({{"after_load": after_load, "installed": installed, "steps": steps, "sizes": sizes,
                          "same_seed": pixels[0] == pixels[1], "other_seed": pixels[0] != pixels[2],
                          "active": active_native_calls(), "pair_seeds": [g.seed for g in pair],
                          "pair_differ": pair[0].image.tobytes() != pair[1].image.tobytes()}}))
    """)
    assert facts["after_load"] == [True, False]  # installed around the load, NULL afterwards
    assert facts["installed"] == [True, False] * 6  # and around every generation
    assert [2, 2] in facts["steps"] and facts["steps"].count([2, 2]) == 3
    assert facts["sizes"] == [[64, 64]] * 3
    assert facts["same_seed"] and facts["other_seed"]
    assert facts["active"] == 0
    assert facts["pair_seeds"] == [3, 4] and facts["pair_differ"]


def test_vae_decode_only_models_offer_txt2img_only():
    facts = run_child(f"""
        from PIL import Image
        backend = load({str(sdxs_checkpoint())!r}, vae_decode_only=True, default_steps=1, default_cfg_scale=1.0)
        try:
            backend.generate(ImageParams(prompt="x", width=64, height=64, init_image=Image.new("RGB", (64, 64))))
            refused = None
        except BackendError as exc:
            refused = str(exc)
        image = backend.generate(ImageParams(prompt="x", width=64, height=64))[0].image
        print(json.dumps({{"capabilities": sorted(backend.capabilities), "refused": refused, "size": image.size}}))
    """)
    assert facts["capabilities"] == ["txt2img"]
    assert facts["refused"] and "img2img" in facts["refused"]
    assert facts["size"] == [64, 64]
