"""The Ollama API of a real gateway (`nexa server` on loopback, SmolLM2 and all-MiniLM-L6-v2 from
the catalog), through the real `ollama` client libraries: PyPI's and npm's.

Answers are compared with the same gateway's /v1 routes on the same input (greedy decoding): the
Ollama routes are a translation onto the one chat and embeddings path, so the words, the token
counts and the vectors must be the same, whatever this CPU's kernels make of the model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests import tools
from tests.conftest import Server, fetch_catalog, metric, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY = "ollama-test-key"
CHAT_ONLY = "chat-only-key"
GREEDY = {"temperature": 0, "top_k": 1, "seed": 7}
HELLO = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    return fetch_catalog("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path, minilm_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ollama")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "aliases": ["chat-default"], "source": "smollm2", "nctx": 2048, "preload": True},
        {"name": "all-minilm-l6-v2", "type": "TEXT_EMBEDDING", "format": "onnx", "source": "all-minilm-l6-v2",
         "preload": True},
    ], server={"api_keys": [{"key": KEY}, {"key": CHAT_ONLY, "models": ["smollm2"]}]})
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=120)


def fresh(oai: openai.OpenAI) -> None:
    """Give the next request the prefix-cache state every compared request gets: after an unrelated
    prompt, so the whole prompt is evaluated. (A prompt evaluated again over its own cached prefix can
    give logits a rounding apart, and a greedy answer can then differ.)"""
    oai.completions.create(model="smollm2", prompt="zq", max_tokens=1)


def v1_chat(oai: openai.OpenAI, messages: list[dict], max_tokens: int, **extra):
    fresh(oai)
    return oai.chat.completions.create(model="smollm2", messages=messages, max_tokens=max_tokens, temperature=0,
                                       seed=GREEDY["seed"], extra_body={"top_k": 1}, **extra)


def test_list_show_and_ps_describe_the_manifest(client, smollm2_path):
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"smollm2:latest", "all-minilm-l6-v2:latest"}
    smol = listed["smollm2:latest"]
    assert smol.size == smollm2_path.stat().st_size
    assert smol.details.format == "gguf" and smol.details.quantization_level == "Q4_1"
    assert len(smol.digest) == 64

    shown = client.show("smollm2")
    assert {"completion", "tools"} <= set(shown.capabilities)
    arch = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{arch}.context_length"] == 2048
    assert client.show("all-minilm-l6-v2:latest").capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("llama3")
    assert missing.value.status_code == 404

    running = {m.model: m for m in client.ps().models}  # both are preloaded
    assert set(running) == {"smollm2:latest", "all-minilm-l6-v2:latest"}
    assert running["smollm2:latest"].context_length == 2048
    assert running["smollm2:latest"].size >= smol.size  # in memory: the weights plus the prompt cache's bound


def test_chat_is_the_v1_chat(client, oai):
    fresh(oai)
    answer = client.chat(model="smollm2", messages=HELLO, options={**GREEDY, "num_predict": 24})
    v1 = v1_chat(oai, HELLO, 24)
    assert answer.message.role == "assistant" and answer.message.content == v1.choices[0].message.content
    assert answer.prompt_eval_count == v1.usage.prompt_tokens and answer.eval_count == v1.usage.completion_tokens
    assert answer.done is True and answer.done_reason == v1.choices[0].finish_reason
    assert answer.total_duration >= answer.eval_duration > 0


def test_chat_stream_is_ndjson_of_the_same_answer(client, oai):
    fresh(oai)
    whole = client.chat(model="chat-default", messages=HELLO, options={**GREEDY, "num_predict": 24})
    fresh(oai)
    parts = list(client.chat(model="chat-default", messages=HELLO, options={**GREEDY, "num_predict": 24},
                             stream=True))
    assert len(parts) > 3 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count and parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_generate_is_a_one_turn_chat_and_raw_is_a_completion(client, oai):
    prompt = "Write one sentence about the sea."
    options = {**GREEDY, "num_predict": 20}
    fresh(oai)
    generated = client.generate(model="smollm2:latest", prompt=prompt, options=options)
    fresh(oai)
    chatted = client.chat(model="smollm2", messages=[{"role": "user", "content": prompt}], options=options)
    assert generated.response == chatted.message.content and generated.done
    assert generated.prompt_eval_count == chatted.prompt_eval_count

    fresh(oai)
    raw = client.generate(model="smollm2", prompt="The capital of France is", raw=True, options=options)
    fresh(oai)
    v1 = oai.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=20, temperature=0,
                                seed=7, extra_body={"top_k": 1})
    assert raw.response == v1.choices[0].text and raw.eval_count == v1.usage.completion_tokens

    fresh(oai)
    streamed = list(client.generate(model="smollm2", prompt=prompt, options=options, stream=True))
    assert "".join(p.response for p in streamed) == generated.response and streamed[-1].done


# Keys in the order the `ollama` client serializes them (its Tool model): the tool prompt shows the
# schema as sent, so /v1 gets the very same prompt.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALLED = [*ASK, {"role": "assistant", "content": "",
                 "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
          {"role": "tool", "tool_name": "get_weather", "content": "20 degrees, sunny"},
          {"role": "user", "content": "And in Oslo?"}]
CALLED_V1 = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
                 {"id": "call_1_0", "type": "function",
                  "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
             {"role": "tool", "tool_call_id": "call_1_0", "name": "get_weather", "content": "20 degrees, sunny"},
             {"role": "user", "content": "And in Oslo?"}]


def test_tools_and_tool_turns_reach_the_engine_as_on_v1(client, oai):
    """The tools and a history with a call and its result make the prompt /v1 makes of the same
    conversation (the tool prompt included), and the model's answer is /v1's. (The catalog's small
    models answer in words here; the shape of call answers is the next test.)"""
    options = {**GREEDY, "num_predict": 30}
    for messages, v1_messages in ((ASK, ASK), (CALLED, CALLED_V1)):
        fresh(oai)
        answer = client.chat(model="smollm2", messages=messages, tools=[WEATHER], options=options)
        v1 = v1_chat(oai, v1_messages, 30, tools=[WEATHER])
        assert answer.prompt_eval_count == v1.usage.prompt_tokens
        assert answer.message.content == (v1.choices[0].message.content or "")
        assert bool(answer.message.tool_calls) == bool(v1.choices[0].message.tool_calls)
    bare = client.chat(model="smollm2", messages=ASK, options={**GREEDY, "num_predict": 1})
    assert bare.prompt_eval_count < client.chat(model="smollm2", messages=ASK, tools=[WEATHER],
                                                options={**GREEDY, "num_predict": 1}).prompt_eval_count


@pytest.fixture(scope="module")
def calling_server(tmp_path_factory) -> Iterator[Server]:
    """An engine that calls every tool it is offered (tests/fakes.py), behind the real gateway."""
    tmp = tmp_path_factory.mktemp("ollama-calls")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "caller", "source": "/dev/null", "backend": "tests.fakes:FakeBackend", "preload": True,
         "options": {"call_tools": True}}])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


def test_tool_calls_come_back_as_ollama_tool_calls(calling_server):
    client = ollama.Client(host=calling_server.url, timeout=60)
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    answer = client.chat(model="caller", messages=ASK, tools=[WEATHER, other])
    assert [(c.function.name, dict(c.function.arguments)) for c in answer.message.tool_calls] == [
        ("get_weather", {"n": 0}), ("get_time", {"n": 1})]
    assert answer.done_reason == "stop" and answer.message.content == ""
    parts = list(client.chat(model="caller", messages=ASK, tools=[WEATHER], stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", {"n": 0})]
    assert parts[-1].done and not any(p.done for p in parts[:-1])


def test_format_constrains_the_answer(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
              "required": ["name", "age"]}  # a bounded string: the object always fits the budget
    answer = client.chat(model="smollm2", messages=[{"role": "user", "content": "Invent a person."}],
                         format=schema, options={**GREEDY, "num_predict": 160})
    person = json.loads(answer.message.content)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    loose = client.generate(model="smollm2", prompt="Describe a cat as JSON.", format="json",
                            options={**GREEDY, "num_predict": 80})
    assert loose.response.lstrip().startswith("{")  # the grammar allows only a JSON object
    if loose.done_reason == "stop":
        assert isinstance(json.loads(loose.response), dict)
    else:  # the budget ran out inside the object (a small model may list values until it does)
        assert loose.done_reason == "length" and loose.eval_count == 80


def test_embed_is_the_v1_embeddings_normalized(client, server):
    texts = ["a cat sits on the mat", "stock markets fell today"]
    answer = client.embed(model="all-minilm-l6-v2", input=texts)
    vectors = np.array(answer.embeddings)
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    v1 = httpx.post(server.url + "/v1/embeddings", headers={"authorization": f"Bearer {KEY}"}, timeout=60,
                    json={"model": "all-minilm-l6-v2", "input": texts, "normalize": True}).json()
    assert np.allclose(vectors, [d["embedding"] for d in v1["data"]], atol=1e-6)
    assert answer.prompt_eval_count == v1["usage"]["prompt_tokens"]

    single = client.embed(model="all-minilm-l6-v2", input=texts[0])
    assert np.allclose(single.embeddings[0], vectors[0], atol=1e-5)
    legacy = client.embeddings(model="all-minilm-l6-v2", prompt=texts[0]).embedding
    raw = httpx.post(server.url + "/v1/embeddings", headers={"authorization": f"Bearer {KEY}"}, timeout=60,
                     json={"model": "all-minilm-l6-v2", "input": texts[0], "normalize": False}).json()
    assert np.allclose(legacy, raw["data"][0]["embedding"], atol=1e-6)


def test_refusals_and_errors_are_ollama_errors(client, server):
    def status(call) -> tuple[int, str]:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        return caught.value.status_code, caught.value.error

    assert status(lambda: client.chat(model="llama3", messages=HELLO))[0] == 404
    code, text = status(lambda: client.chat(model="smollm2", messages=HELLO, think=True))
    assert code == 400 and "thinking" in text
    for call in (lambda: client.create(model="mine", from_="smollm2"), lambda: client.copy("smollm2", "other"),
                 lambda: client.delete("smollm2"), lambda: client.push("smollm2")):
        code, text = status(call)
        assert code == 400 and "manifest" in text
    assert client.pull("smollm2").status == "success"  # a declared model: its files are fetched (cached here)
    assert [p.status for p in client.pull("smollm2", stream=True)][-1] == "success"
    assert status(lambda: client.pull("llama3"))[0] == 404  # never adds what the manifest does not declare

    plain = httpx.post(server.url + "/api/chat", json={"model": "smollm2", "messages": HELLO}, timeout=30)
    assert plain.status_code == 401 and set(plain.json()) == {"error"}
    assert metric(server.url, "nexa_requests_total", route="/api/chat", status="200") > 0
    version = httpx.get(server.url + "/api/version", headers={"authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert version["version"].count(".") == 2


def test_a_keys_model_list_applies(server):
    limited = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {CHAT_ONLY}"}, timeout=60)
    assert [m.model for m in limited.list().models] == ["smollm2:latest"]
    with pytest.raises(ollama.ResponseError) as refused:
        limited.embed(model="all-minilm-l6-v2", input="hello")
    assert refused.value.status_code == 403


JS_STREAM = """
import { Ollama } from 'ollama';
const [host, key, model, options] = process.argv.slice(2);
const client = new Ollama({ host, headers: { Authorization: `Bearer ${key}` } });
const parts = [];
for await (const part of await client.chat({ model, stream: true, options: JSON.parse(options),
                                             messages: [{ role: 'user', content: 'Name three colours.' }] })) {
  parts.push(part);
}
console.log(JSON.stringify(parts));
"""


def test_the_js_client_streams_chat(client, oai, server):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the npm `ollama` client (scripts/test.sh installs them)")
    folder = tools.ollama_js()
    script = folder / "chat-stream.mjs"
    script.write_text(JS_STREAM)
    options = {**GREEDY, "num_predict": 24}
    fresh(oai)
    done = subprocess.run(["node", str(script), server.url, KEY, "smollm2", json.dumps(options)], capture_output=True,
                          text=True, timeout=120, cwd=folder, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads(done.stdout)
    fresh(oai)
    whole = client.chat(model="smollm2", messages=HELLO, options=options)
    assert len(parts) > 3 and parts[-1]["done"] is True and not any(p["done"] for p in parts[:-1])
    assert "".join(p["message"]["content"] for p in parts) == whole.message.content


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    """The synthetic LLaVA-style pair of tests/synth/vlm.py (real llama.cpp vision engine) and SmolLM2."""
    from tests.synth.vlm import vlm_pair

    tmp = tmp_path_factory.mktemp("ollama-vision")
    model, mmproj = vlm_pair()
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "vlm", "source": str(model), "type": "MULTIMODAL", "mmproj": str(mmproj), "nctx": 512,
         "preload": True},
        {"name": "smollm2", "source": "smollm2", "nctx": 512, "preload": True}])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


def test_images_go_to_vision_models_as_on_v1(vision_server):
    import base64

    from tests.synth.vlm import TOKENS_PER_IMAGE, png

    client = ollama.Client(host=vision_server.url, timeout=120)
    v1 = openai.OpenAI(base_url=vision_server.url + "/v1", api_key="unused", timeout=120)
    text = "What is in this picture?"
    options = {"temperature": 0, "num_predict": 6}

    def ask(image: bytes | None):
        return client.chat(model="vlm", options=options, messages=[
            {"role": "user", "content": text, **({"images": [image]} if image else {})}])

    black, white, alone = ask(png("black")), ask(png("white")), ask(None)
    assert black.prompt_eval_count - alone.prompt_eval_count == TOKENS_PER_IMAGE
    assert black.message.content != white.message.content
    same = v1.chat.completions.create(model="vlm", max_tokens=6, temperature=0, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": base64.b64encode(png("black")).decode()}},
        {"type": "text", "text": text}]}])
    assert black.message.content == same.choices[0].message.content
    assert black.prompt_eval_count == same.usage.prompt_tokens
    with pytest.raises(ollama.ResponseError) as text_only:
        client.generate(model="smollm2", prompt=text, images=[png("black")])
    assert text_only.value.status_code == 400 and "image" in text_only.value.error
