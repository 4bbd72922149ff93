"""The engine contract's tokenizer methods (backends/base.py: tokenize_text, detokenize_tokens,
token_pieces, render_prompt) on the real engines, in-process: SmolLM2 through llama.cpp and the
tiny synthetic ONNX decoder through `tokenizers`. The routes over them are tests/test_e2e_tokens.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import Backend, BackendError, ChatOptions
from backends.llama import LlamaBackend
from backends.onnx_text import OnnxTextBackend
from schemas.manifest import ModelSpec
from tests.synth.onnx_lm import tiny_onnx_lm

pytestmark = pytest.mark.timeout(120)

TEXTS = ["Hello, world!", "naïve café — 東京 🚀", "  spaces\nand\ttabs ", "<|im_start|>user\nhi<|im_end|>"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def llama(smollm2_path: Path):
    backend = LlamaBackend.load(ModelSpec(name="smollm2", source=str(smollm2_path), nctx=512), smollm2_path)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def onnx():
    folder = tiny_onnx_lm()
    backend = OnnxTextBackend.load(ModelSpec(name="tiny", type="NLP", format="onnx", source=str(folder), nctx=256),
                                   folder)
    yield backend
    backend.close()


@pytest.mark.parametrize("engine", ["llama", "onnx"])
def test_detokenize_inverts_tokenize_and_pieces_are_the_bytes(engine, request):
    backend: Backend = request.getfixturevalue(engine)
    assert backend.tokenizes_beside_generation
    for text in TEXTS:
        ids = backend.tokenize_text(text)
        assert backend.detokenize_tokens(ids) == text
        if engine == "llama":  # llama.cpp's pieces are raw bytes; `tokenizers` decodes per token
            assert b"".join(backend.token_pieces(ids)) == text.encode()


@pytest.mark.parametrize("engine", ["llama", "onnx"])
def test_render_prompt_is_what_chat_tokenizes(engine, request):
    backend: Backend = request.getfixturevalue(engine)
    choices = [ChatOptions()] + ([ChatOptions(tools=TOOLS, tool_choice="auto")] if engine == "llama" else [])
    for options in choices:
        prompt = backend.render_prompt(MESSAGES, options)
        assert backend.count_chat(MESSAGES, options) == len(backend.tokenize_text(prompt))
        assert ("get_weather" in prompt) == bool(options.tools)


def test_special_tokens_and_bounds(llama):
    assert len(llama.tokenize_text("<|im_start|>")) == 1
    assert len(llama.tokenize_text("<|im_start|>", parse_special=False)) > 1
    with pytest.raises(BackendError) as outside:
        llama.detokenize_tokens([1, llama.llm.n_vocab()])
    assert outside.value.param == "tokens[1]"


def test_engines_without_a_tokenizer_refuse_with_a_400():
    backend = Backend(ModelSpec(name="up", format="remote", base_url="http://127.0.0.1:9/v1"), Path("/dev/null"))
    for call in (lambda: backend.tokenize_text("hi"), lambda: backend.detokenize_tokens([1]),
                 lambda: backend.token_pieces([1]), lambda: backend.render_prompt(MESSAGES)):
        with pytest.raises(BackendError) as refused:
            call()
        assert refused.value.param == "model"
    assert not backend.tokenizes_beside_generation
