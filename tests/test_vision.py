"""Vision chat below the HTTP layer: the projector gates, the backend on a real (synthetic)
LLaVA-style pair through llama.cpp's multimodal path, and the manifest fields."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from backends import mmproj as projector
from backends.base import ChatOptions, SamplingParams
from backends.errors import BackendError, LoadError
from gateway.manifest.load import ManifestError, build
from schemas.manifest import ModelSpec
from tests.synth.vlm import TOKENS_PER_IMAGE, png, vlm_pair, write_projector

pytestmark = pytest.mark.timeout(300)

llama_cpp = pytest.importorskip("llama_cpp")


def data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def user(text: str, *images: str) -> list[dict]:
    parts = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return [{"role": "user", "content": parts}]


def spec_for(model: Path, mmproj: Path, **extra) -> ModelSpec:
    return ModelSpec(name="vlm", source=str(model), type="MULTIMODAL", mmproj=str(mmproj), nctx=512, **extra)


@pytest.fixture(scope="module")
def pair() -> tuple[Path, Path]:
    return vlm_pair()


@pytest.fixture(scope="module")
def backend(pair) -> Iterator:
    from backends.vision import VisionBackend

    model, mmproj = pair
    loaded = VisionBackend.load(spec_for(model, mmproj), model)
    yield loaded
    loaded.close()


def run(backend, messages, max_tokens=8, **params):
    deltas = list(backend.chat(messages, SamplingParams(max_tokens=max_tokens, temperature=0, **params), lambda: False))
    return "".join(d.text for d in deltas), deltas[-1]


# -- projector gates ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["mm.2.weight", "v.position_embd.weight", "v.patch_embd.weight",
                                     "mm.0.bias", "v.blk.1.attn_q.weight"])
def test_check_names_a_missing_tensor_that_would_crash_llama_cpp(tmp_path, missing):
    broken = write_projector(tmp_path / "broken.gguf", drop=[missing])
    with pytest.raises(LoadError, match=missing.replace(".", r"\.")):
        projector.check(broken)


@pytest.mark.parametrize("keys, words", [
    ({"clip.vision.attention.head_count": 5}, "multiple of attention.head_count"),
    ({"clip.vision.image_size": 64}, "positions"),
    ({"clip.vision.block_count": None}, "clip.vision.block_count"),
    ({"clip.has_vision_encoder": False}, "no vision encoder"),
])
def test_check_catches_inconsistent_metadata(tmp_path, keys, words):
    broken = write_projector(tmp_path / "broken.gguf", keys=keys)
    with pytest.raises(LoadError, match=words):
        projector.check(broken)


def test_check_accepts_the_good_projector_and_rejects_non_gguf(pair, tmp_path):
    info = projector.check(pair[1])
    assert (info.projector_type, info.image_size, info.patch_size) == ("mlp", 32, 16)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(LoadError, match="not a readable GGUF"):
        projector.check(junk)


def test_probe_turns_a_crash_the_check_cannot_foresee_into_a_load_error(pair, tmp_path):
    # "mlp" tensors declared as a qwen2-vl merger pass the table check but SIGSEGV libmtmd.
    broken = write_projector(tmp_path / "qwen.gguf", keys={"clip.projector_type": "qwen2vl_merger"})
    projector.check(broken)
    with pytest.raises(LoadError, match="crashed llama.cpp \\(SIGSEGV\\)"):
        projector.probe(pair[0], broken)
    assert projector.probe(*pair) == {"image_tokens": TOKENS_PER_IMAGE}


def test_the_crash_is_real_without_the_gates(pair, tmp_path):
    """The reason the gates exist: handing the file to libmtmd directly kills the process."""
    broken = write_projector(tmp_path / "broken.gguf", drop=["mm.2.weight"])
    code = ("import sys, llama_cpp; from llama_cpp.llama_chat_format import MTMDChatHandler; "
            "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False); "
            "MTMDChatHandler(clip_model_path=sys.argv[2], verbose=False)._init_mtmd_context(llm)")
    done = subprocess.run([sys.executable, "-c", code, str(pair[0]), str(broken)], capture_output=True, timeout=120)
    assert done.returncode < 0  # killed by a signal


# -- loading ----------------------------------------------------------------------------------


def test_load_fails_cleanly_for_a_broken_projector(pair, tmp_path):
    from backends.vision import VisionBackend

    broken = write_projector(tmp_path / "broken.gguf", drop=["mm.2.weight"])
    with pytest.raises(LoadError, match=r"missing tensors: mm\.2\.weight"):
        VisionBackend.load(spec_for(pair[0], broken), pair[0])


def test_load_reports_the_reason_libmtmd_gives(pair, tmp_path):
    """A projector for another language model width fails in libmtmd itself (not a crash); the
    reason, which llama-cpp-python hides unless verbose, is in the error."""
    from backends.vision import VisionBackend

    other = write_projector(tmp_path / "t32.gguf", n_embd_text=32)
    with pytest.raises(LoadError, match="mismatch"):
        VisionBackend.load(spec_for(pair[0], other), pair[0])


def test_load_rejects_unknown_handler_small_context_and_missing_file(pair, tmp_path):
    from backends.vision import VisionBackend

    model, mmproj = pair
    with pytest.raises(LoadError, match="unknown vision handler 'llava-9'"):
        VisionBackend.load(spec_for(model, mmproj, handler="llava-9"), model)
    with pytest.raises(LoadError, match="at least 256"):
        VisionBackend.load(spec_for(model, mmproj).model_copy(update={"nctx": 128}), model)
    with pytest.raises(LoadError, match="projector file not found"):
        VisionBackend.load(spec_for(model, tmp_path / "nope.gguf"), model)


def test_relative_mmproj_is_found_beside_the_model(pair, tmp_path):
    from backends.vision import locate

    model = tmp_path / "m.gguf"
    model.write_bytes(pair[0].read_bytes())
    (tmp_path / "mmproj-m.gguf").write_bytes(pair[1].read_bytes())
    spec = ModelSpec(name="v", source=str(tmp_path), type="MULTIMODAL", mmproj="mmproj-m.gguf")
    assert locate(spec, tmp_path) == (model, tmp_path / "mmproj-m.gguf")  # a folder: the non-projector file


def test_backend_reports_capabilities_and_projector(backend):
    assert {"chat", "complete", "vision"} <= backend.capabilities
    info = backend.info()
    assert info["projector_type"] == "mlp" and info["handler"] == "mtmd"
    assert info["image_tokens"] == TOKENS_PER_IMAGE


# -- chat with images ----------------------------------------------------------------------


def test_each_image_adds_its_tokens_to_the_prompt(backend):
    black = data_url(png("black"))
    _, none = run(backend, user("What is this?"))
    _, one = run(backend, user("What is this?", black))
    _, two = run(backend, user("What is this?", black, black))
    assert one.usage.prompt_tokens == none.usage.prompt_tokens + TOKENS_PER_IMAGE
    assert two.usage.prompt_tokens == one.usage.prompt_tokens + TOKENS_PER_IMAGE


def test_the_image_content_reaches_the_model(backend):
    black, _ = run(backend, user("Describe.", data_url(png("black"))))
    white, _ = run(backend, user("Describe.", data_url(png("white"))))
    again, _ = run(backend, user("Describe.", data_url(png("black"))))
    assert black == again  # greedy: the same image gives the same answer
    assert black != white  # a different image changes what the model says


def test_exact_usage_and_max_tokens(backend):
    text, last = run(backend, user("Go on.", data_url(png("noise"))), max_tokens=5)
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 5  # the handler's own loop may overshoot; ours does not


def test_raw_base64_and_other_formats_work(backend):
    from PIL import Image

    image = png("white")
    by_url, a = run(backend, user("Describe.", data_url(image)))
    by_b64, b = run(backend, user("Describe.", base64.b64encode(image).decode()))
    assert (by_b64, b.usage.prompt_tokens) == (by_url, a.usage.prompt_tokens)
    webp = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(webp, format="WEBP", lossless=True)
    by_webp, _ = run(backend, user("Describe.", data_url(webp.getvalue(), "image/webp")))
    assert by_webp == by_url  # converted through Pillow to the same pixels


@pytest.mark.parametrize("messages, words", [
    (user("x", "https://example.com/cat.png"), "remote image URLs"),
    (user("x", "file:///etc/passwd"), "unsupported image URL scheme"),
    (user("x", "data:image/png;base64,@@@"), "not valid base64"),
    (user("x", data_url(b"GIF89a this is not really a gif")), "cannot be decoded"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "AAAA"}}]}], "only in user messages"),
])
def test_bad_images_are_backend_errors(backend, messages, words):
    with pytest.raises(BackendError, match=words):
        run(backend, messages)


def test_the_model_still_works_after_a_bad_request_and_for_completions(backend):
    with pytest.raises(BackendError):
        run(backend, user("x", data_url(b"\x89PNG\r\n\x1a\n truncated")))
    text, last = run(backend, user("Describe.", data_url(png("black"))))
    assert last.usage.completion_tokens == 8 and text
    deltas = list(backend.complete("hello the", SamplingParams(max_tokens=3, temperature=0), lambda: False))
    assert deltas[-1].usage.prompt_tokens == len(backend.tokenize("hello the"))


def test_huge_images_are_refused_before_decoding(pair):
    from backends.vision import read_image

    with pytest.raises(BackendError, match="at most 100"):
        read_image(data_url(png("black", size=32)), max_pixels=100)


def test_context_overflow_is_a_clear_error(pair):
    from backends.vision import VisionBackend

    model, mmproj = pair
    small = VisionBackend.load(spec_for(model, mmproj).model_copy(update={"nctx": 256}), model)
    try:
        with pytest.raises(BackendError, match="context"):
            run(small, user("word " * 250, data_url(png("black"))))
    finally:
        small.close()


def test_cancel_stops_between_tokens(backend):
    seen = []
    deltas = backend.chat(user("Go.", data_url(png("black"))), SamplingParams(max_tokens=50, temperature=0),
                          lambda: len(seen) >= 2)
    for delta in deltas:
        seen.append(delta)
    assert seen[-1].finish_reason == "cancelled"
    assert seen[-1].usage.completion_tokens <= 3


@pytest.mark.parametrize("handler", ["llava-1.5", "llava-1.6", "moondream", "nanollava", "minicpm-v-2.6",
                                     "qwen2.5-vl", "gemma3", "obsidian", "llama3-vision-alpha"])
def test_every_registered_handler_runs(pair, handler):
    from backends.vision import VisionBackend

    model, mmproj = pair
    loaded = VisionBackend.load(spec_for(model, mmproj, handler=handler), model)
    try:
        _, none = run(loaded, user("What?"), max_tokens=2)
        _, one = run(loaded, user("What?", data_url(png("white"))), max_tokens=2)
        assert one.usage.prompt_tokens - none.usage.prompt_tokens >= TOKENS_PER_IMAGE
        assert one.usage.completion_tokens <= 2
    finally:
        loaded.close()


# -- manifest --------------------------------------------------------------------------------


def test_manifest_requires_mmproj_for_multimodal_models():
    with pytest.raises(ManifestError) as caught:
        build({"models": [{"name": "a", "source": "/m.gguf"}, {"name": "v", "source": "/v.gguf", "type": "MULTIMODAL"}]})
    assert "models[1].mmproj: required for MULTIMODAL models" in caught.value.problems
    with pytest.raises(ManifestError) as caught:
        build({"models": [{"name": "t", "source": "/m.gguf", "mmproj": "/p.gguf", "handler": "mtmd"}]})
    assert set(caught.value.problems) == {"models[0].mmproj: only for MULTIMODAL models",
                                          "models[0].handler: only for MULTIMODAL models"}
    manifest = build({"server": {"image_url_hosts": ["127.0.0.1"]},
                      "models": [{"name": "v", "source": "/v.gguf", "type": "MULTIMODAL", "mmproj": "/p.gguf",
                                  "handler": "llava-1.5"}]})
    assert manifest.models[0].mmproj == "/p.gguf" and manifest.server.image_url_hosts == ["127.0.0.1"]


def test_tool_calls_work_with_images(backend):
    """LlamaBackend's tools and grammar path runs on top of the vision prefill."""
    import json

    tools = [{"type": "function", "function": {"name": "colour", "parameters": {
        "type": "object", "properties": {"c": {"type": "string", "enum": ["black", "white"]}}, "required": ["c"]}}}]
    deltas = list(backend.chat(user("Which colour?", data_url(png("black"))),
                               SamplingParams(max_tokens=100, temperature=0), lambda: False,
                               ChatOptions(tools=tools, tool_choice="required")))
    last = deltas[-1]
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls[0]["function"]["name"] == "colour"
    assert json.loads(last.tool_calls[0]["function"]["arguments"])["c"] in ("black", "white")
    _, plain = run(backend, user("Which colour?", data_url(png("black"))), max_tokens=1)
    assert last.usage.prompt_tokens > plain.usage.prompt_tokens  # the tool description is in the prompt too
