"""POST /tokenize, /detokenize and /apply-template on a real gateway: SmolLM2 (GGUF, llama.cpp's
tokenizer and the model's chat template), the tiny synthetic ONNX decoder (tests/synth, `tokenizers`),
a remote model (no tokenizer) and an embedding model (not a text model)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import Server, fetch_catalog, write_manifest
from tests.synth.onnx_lm import tiny_onnx_lm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SYSTEM = "You are a terse assistant."
TEXTS = ["Hello, world!", "naïve café — 東京 🚀", "  two leading spaces\nand\ttabs  ", "<|im_start|>user\nhi"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path, closed_port: int) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tokens")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "source": "smollm2", "nctx": 2048, "preload": True, "system_prompt": SYSTEM},
        {"name": "tiny", "type": "NLP", "format": "onnx", "source": str(tiny_onnx_lm()), "nctx": 256, "preload": True},
        {"name": "upstream", "format": "remote", "base_url": f"http://127.0.0.1:{closed_port}/v1"},
        {"name": "minilm", "type": "TEXT_EMBEDDING", "format": "onnx", "source": "all-minilm-l6-v2"},
    ])
    fetch_catalog("all-minilm-l6-v2")
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


def post(server: Server, path: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


@pytest.mark.parametrize("model", ["smollm2", "tiny"])
def test_tokenize_then_detokenize_is_the_identity(server, model):
    for text in TEXTS:
        tokens = post(server, "/tokenize", {"model": model, "content": text}).json()["tokens"]
        assert tokens and all(isinstance(t, int) for t in tokens)
        assert post(server, "/detokenize", {"model": model, "tokens": tokens}).json() == {"content": text}


def test_pieces_are_the_tokens_bytes(server):
    for text in TEXTS:
        ids = post(server, "/tokenize", {"model": "smollm2", "content": text}).json()["tokens"]
        pieces = post(server, "/tokenize", {"model": "smollm2", "content": text, "with_pieces": True}).json()["tokens"]
        assert [p["id"] for p in pieces] == ids
        joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
        assert joined == text.encode()
    emoji = post(server, "/tokenize", {"model": "smollm2", "content": "🚀", "with_pieces": True}).json()["tokens"]
    if len(emoji) > 1:  # split inside the character: those pieces are bytes, as llama-server shows them
        assert all(isinstance(p["piece"], list) for p in emoji)


def test_special_tokens(server):
    spelled = "<|im_start|>"
    parsed = post(server, "/tokenize", {"model": "smollm2", "content": spelled}).json()["tokens"]
    literal = post(server, "/tokenize", {"model": "smollm2", "content": spelled, "parse_special": False}).json()
    assert len(parsed) == 1 and len(literal["tokens"]) > 1
    plain = post(server, "/tokenize", {"model": "smollm2", "content": "hi"}).json()["tokens"]
    special = post(server, "/tokenize", {"model": "smollm2", "content": "hi", "add_special": True}).json()["tokens"]
    assert special[-len(plain):] == plain and len(special) >= len(plain)
    assert post(server, "/tokenize", {"model": "smollm2", "content": ""}).json() == {"tokens": []}


@pytest.mark.parametrize("tools", [None, [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]])
def test_apply_template_is_the_prompt_the_chat_path_feeds_the_engine(server, tools):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Weather in Oslo?"}]
    extra = {"tools": tools} if tools else {}
    prompt = post(server, "/apply-template", {"model": "smollm2", "messages": messages, **extra}).json()["prompt"]
    assert SYSTEM in prompt and prompt.rstrip().endswith("assistant")  # the manifest's system prompt, the generation prompt
    if tools:
        assert "get_weather" in prompt
    tokens = post(server, "/tokenize", {"model": "smollm2", "content": prompt}).json()["tokens"]
    chat = post(server, "/v1/chat/completions", {"model": "smollm2", "messages": messages, "max_tokens": 1,
                                                 **extra}).json()
    assert chat["usage"]["prompt_tokens"] == len(tokens)


def test_apply_template_for_onnx(server):
    messages = [{"role": "user", "content": "Hi"}]
    prompt = post(server, "/apply-template", {"model": "tiny", "messages": messages}).json()["prompt"]
    tokens = post(server, "/tokenize", {"model": "tiny", "content": prompt}).json()["tokens"]
    chat = post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == len(tokens)


def test_models_without_a_tokenizer_are_a_400(server):
    for path, body in (("/tokenize", {"content": "hi"}), ("/detokenize", {"tokens": [1]}),
                       ("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})):
        answer = post(server, path, {"model": "upstream", **body})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "model"
    not_text = post(server, "/tokenize", {"model": "minilm", "content": "hi"})
    assert not_text.status_code == 400 and not_text.json()["error"]["code"] == "model_not_capable"
    bad = post(server, "/detokenize", {"model": "smollm2", "tokens": [1, 10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[1]"
    typed = post(server, "/detokenize", {"model": "smollm2", "tokens": ["a"]})
    assert typed.status_code == 400 and typed.json()["error"]["param"] == "tokens[0]"


def test_tokenizing_does_not_wait_behind_a_generation(server):
    """SmolLM2 has one decode slot. While a long generation holds it, tokenize and apply-template
    answer, and the generation goes on producing after they did: they were not queued behind it."""
    started, answered = threading.Event(), threading.Event()
    after: list[str] = []

    def generate() -> None:
        body = {"model": "smollm2", "max_tokens": 1500, "stream": True, "temperature": 0,
                "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"}  # counting on: no early end
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                started.set()
                if line == "data: [DONE]" or len(after) >= 30:
                    break  # leaving stops the generation
                if answered.is_set():
                    after.append(line)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    assert started.wait(120)
    answer = post(server, "/tokenize", {"model": "smollm2", "content": "still answering"})
    template = post(server, "/apply-template", {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})
    answered.set()
    thread.join(120)
    assert answer.status_code == 200 and answer.json()["tokens"] and template.status_code == 200
    assert len(after) >= 30, "the generation had ended when tokenize answered: it waited behind it"
