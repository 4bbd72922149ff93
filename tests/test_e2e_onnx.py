"""End to end: ONNX text generation through a real `nexa server`, spoken to with the openai SDK and httpx.

The model is the tiny synthetic decoder of tests/synth/onnx_lm.py (optimum's KV-cache layout, a byte-level
BPE tokenizer.json, a ChatML template), whose greedy output is planted: it counts " one two three ..." and
answers " red" with " green blue" and then its end-of-turn token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from tests.conftest import Server, write_manifest

pytest.importorskip("onnx")
from tests.synth.onnx_lm import tiny_onnx_lm  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def folder() -> Path:
    return tiny_onnx_lm()


@pytest.fixture(scope="module")
def server(tmp_path_factory, folder) -> Iterator[Server]:
    """One gateway: the tiny model from a manifest, plus two broken folders that load on first use."""
    tmp = tmp_path_factory.mktemp("onnx")
    garbage = Path(shutil.copytree(folder, tmp / "garbage"))
    (garbage / "model.onnx").write_bytes(b"\x08\x07 definitely not protobuf")
    empty = tmp / "empty"
    empty.mkdir()
    (empty / "tokenizer.json").write_text("{}")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "tiny", "type": "NLP", "format": "onnx", "source": str(folder), "nctx": 256, "preload": True},
        {"name": "garbage", "type": "NLP", "format": "onnx", "source": str(garbage)},
        {"name": "empty", "type": "NLP", "format": "onnx", "source": str(empty)},
    ])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_cli_serves_a_local_onnx_folder(start_server, folder):
    server = start_server(["onnx", str(folder), "-lp", "-mt", "NLP"])
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    [card] = client.models.list().data
    assert card.id == folder.name
    answer = client.chat.completions.create(model=card.id, messages=HELLO, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content == " one two three four"
    assert answer.choices[0].finish_reason == "length"
    done = client.completions.create(model=card.id, prompt="colours: red", max_tokens=9, temperature=0)
    assert done.choices[0].text == " green blue" and done.choices[0].finish_reason == "stop"


def test_chat_completion_with_exact_usage(client):
    answer = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=7, temperature=0)
    assert answer.object == "chat.completion" and answer.model == "tiny"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == " one two three four five six seven"
    assert answer.choices[0].finish_reason == "length"
    # "<|im_start|>", "user", "\n", "hello", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (9, 7, 16)


def test_completion_ends_at_the_end_of_sequence_token(client):
    answer = client.completions.create(model="tiny", prompt="colours: red", max_tokens=20, temperature=0)
    assert answer.choices[0].text == " green blue"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 2 and answer.usage.prompt_tokens == 3


def test_max_tokens_gives_length_with_exact_completion_tokens(client):
    for max_tokens in (1, 13):
        answer = client.completions.create(model="tiny", prompt="Count: one", max_tokens=max_tokens, temperature=0)
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage.completion_tokens == max_tokens
        assert len(answer.choices[0].text.split()) == max_tokens


def test_stop_sequences_cut_the_answer(client):
    free = client.completions.create(model="tiny", prompt="Count: one", max_tokens=8, temperature=0).choices[0]
    assert free.text == " two three four five six seven eight nine"
    stopped = client.completions.create(model="tiny", prompt="Count: one", max_tokens=8, temperature=0,
                                        stop=["r fi", "nine"]).choices[0]
    assert stopped.text == " two three fou" and stopped.finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=0, stop=[" three"])
    assert chat.choices[0].message.content == " one two" and chat.choices[0].finish_reason == "stop"


def test_chat_stream_is_sse_with_usage_and_no_leaked_stop(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": HELLO, "max_tokens": 10, "temperature": 0, "stream": True, "stop": ["r fi"],
        "stream_options": {"include_usage": True},
    }) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [e["choices"][0]["delta"]["content"] for e in events
              if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(pieces) >= 3  # streamed token by token, not in one piece
    assert "".join(pieces) == " one two three fou"  # nothing of the stop sequence was sent before the cut
    finals = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finals == ["stop"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5


def test_completion_stream_through_the_sdk(client):
    stream = client.completions.create(model="tiny", prompt="Count: one", max_tokens=5, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == " two three four five six"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 5


def test_same_seed_same_text_and_seeds_matter(client):
    def draw(seed: int) -> str:
        return client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=1.0,
                                              seed=seed).choices[0].message.content

    first = draw(11)
    assert draw(11) == first
    assert any(draw(seed) != first for seed in (12, 13, 14))
    assert first != " one two three four five six seven eight nine ten one two"  # it did sample


def test_unsupported_options_are_clear_400s(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, tools=[
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}])
    assert "tool calling" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3,
                                       response_format={"type": "json_object"})
    assert "response_format" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="one " * 300, max_tokens=3)
    assert "does not fit" in caught.value.message


def test_broken_folders_fail_their_model_only(server, client):
    for name, hint in (("garbage", "onnxruntime could not load model.onnx"), ("empty", "no .onnx file")):
        answer = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                            json={"model": name, "messages": HELLO, "max_tokens": 2})
        assert answer.status_code == 503, answer.text
        assert hint in answer.json()["error"]["message"]
        card = httpx.get(f"{server.url}/v1/models/{name}", timeout=10).json()
        assert card["state"] == "failed" and hint in card["error"]
    assert server.proc.poll() is None
    states = {m["id"]: m["state"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}
    assert states == {"tiny": "ready", "garbage": "failed", "empty": "failed"}
    answer = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2, temperature=0)
    assert answer.choices[0].message.content == " one two"
