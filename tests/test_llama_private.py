"""llama-cpp-python's private names the gateway relies on (backends/llama_private.py) still exist,
the `options:` of every llama.cpp use are constructor arguments or the gateway's own, and
`llama_kwargs` layers manifest, use and options in the documented order. After an upgrade of
llama-cpp-python, a failure here names what to re-check before anything loads a model."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from backends import llama_private as private  # noqa: E402
from backends.llama_load import GATEWAY_OPTIONS, generation_defaults, llama_kwargs  # noqa: E402
from backends.options import LlamaEmbedOptions, LlamaOptions, LlamaRerankOptions, VisionOptions  # noqa: E402
from schemas.manifest import Device, ModelSpec  # noqa: E402


def has(cls: type, name: str) -> bool:
    """A method or property of `cls`, or an attribute its code assigns."""
    return hasattr(cls, name) or f"self.{name} =" in inspect.getsource(cls)


def test_the_private_names_still_exist():
    from llama_cpp import _internals, llama_chat_format, mtmd_cpp

    assert llama_cpp.__version__ == private.CHECKED_VERSION, "re-read backends/llama_private.py against this version"
    for cls, names in ((llama_cpp.Llama, ("_init_sampler", "_ctx", "_model", "_batch", "_stack", "_requires_eval")),
                       (_internals.LlamaModel, ("token_get_text", "n_ctx_train", "vocab")),
                       (_internals.LlamaContext, ("get_logits", "kv_cache_clear", "decode", "ctx")),
                       (_internals.LlamaBatch, ("reset", "add_sequence")),
                       (_internals.LlamaSampler, ("add_grammar", "sampler", "sample", "close")),
                       (llama_cpp.LlamaGrammar, ("_grammar", "_root")),
                       (llama_chat_format.MTMDChatHandler, ("_mtmd_cpp", "mtmd_ctx"))):
        assert [n for n in names if not has(cls, n)] == [], cls
    assert "model" in inspect.signature(_internals.LlamaContext).parameters
    # private.sample_with: generate builds its sampler once through _init_sampler, sample uses it each step
    assert "self._sampler = self._init_sampler(" in inspect.getsource(llama_cpp.Llama.generate)
    assert "self._sampler.sample(self._ctx, " in inspect.getsource(llama_cpp.Llama.sample)
    assert hasattr(mtmd_cpp, "_libmtmd")
    for hook in ("_init_mtmd_context", "_create_bitmap_from_bytes", "load_image", "_get_chat_template",
                 "_get_template_messages"):  # overridden by backends/vision.py's _GatewayHandler
        assert hasattr(llama_chat_format.MTMDChatHandler, hook)


@pytest.mark.parametrize("options", [LlamaOptions, VisionOptions, LlamaEmbedOptions, LlamaRerankOptions])
def test_every_llama_option_is_a_constructor_argument_or_the_gateways_own(options):
    accepted = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
    assert set(options.model_fields) - accepted <= GATEWAY_OPTIONS


def test_llama_kwargs_layers_manifest_defaults_options_and_fixed():
    spec = ModelSpec(name="m", source="x.gguf", nctx=512, n_threads=3, device=Device.cpu,
                     options={"n_batch": 64, "verbose": True, "chat_template": "{{x}}", "pooling": "mean"})
    kwargs = llama_kwargs(spec, Path("/m/x.gguf"), {"n_batch": 512, "embedding": True}, n_ctx=32)
    assert kwargs == {"model_path": "/m/x.gguf", "n_ctx": 32, "n_gpu_layers": 0, "verbose": True, "n_threads": 3,
                      "n_threads_batch": 3, "n_batch": 64, "embedding": True}
    assert llama_kwargs(spec.model_copy(update={"options": {}, "n_threads": None}), Path("x")) == {
        "model_path": "x", "n_ctx": 512, "n_gpu_layers": 0, "verbose": False}


def test_text_models_load_with_llama_servers_prompt_processing_defaults():
    """The generation engines open their context as llama-server does where llama-cpp-python differs
    (bench/RESULTS.md §16): n_batch 2048 and a sliding-window cache of the window's size for text models;
    `options:` still win."""
    text = ModelSpec(name="m", source="x.gguf", nctx=4096, n_threads=2, device=Device.cpu)
    kwargs = llama_kwargs(text, Path("x"), generation_defaults(text))
    assert (kwargs["n_batch"], kwargs["swa_full"]) == (2048, False)
    assert "n_ubatch" not in kwargs and "flash_attn" not in kwargs  # llama-cpp-python's 512 and off
    chosen = text.model_copy(update={"options": {"flash_attn": True, "swa_full": True, "n_batch": 512}})
    kwargs = llama_kwargs(chosen, Path("x"), generation_defaults(chosen))
    assert (kwargs["n_batch"], kwargs["flash_attn"], kwargs["swa_full"]) == (512, True, True)
    vision = ModelSpec(name="v", source="x.gguf", type="MULTIMODAL", mmproj="p.gguf", device=Device.cpu)
    assert "swa_full" not in generation_defaults(vision)  # its chat handler reuses prefixes on its own
