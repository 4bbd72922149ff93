"""Remote (upstream) models end to end: a front gateway whose models are `format: remote`,
forwarding to a second real gateway on loopback (SmolLM2, all-MiniLM and the fake engine).

The front runs with `--offline` and an empty model cache: remote models fetch nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import Server, fetch_catalog, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UPSTREAM_KEY = "upstream-key-123456"
FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    fetch_catalog("all-minilm-l6-v2")
    tmp = tmp_path_factory.mktemp("upstream")
    manifest = write_manifest(tmp / "upstream.yaml", [
        {"name": "smollm2", "source": "smollm2", "nctx": 1024, "preload": True},
        {"name": "echo", **FAKE, "preload": True, "max_tokens_limit": 50},
        {"name": "slow", **FAKE, "preload": True, "options": {"delay": 0.05}},
        {"name": "all-minilm-l6-v2", "source": "all-minilm-l6-v2"},
    ], server={"api_keys": [UPSTREAM_KEY]})
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(tmp_path_factory, upstream: Server, closed_port: int) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("front")
    base = upstream.url + "/v1"
    remote = {"format": "remote", "api_key": "${UPSTREAM_KEY}"}
    manifest = write_manifest(tmp / "front.yaml", [
        {"name": "chat", **remote, "base_url": base, "remote_model": "smollm2", "preload": True},
        {"name": "echo", **remote, "source": base, "replicas": 2},  # source as the URL; upstream name = ours
        {"name": "slow", **remote, "base_url": base},
        {"name": "embed", **remote, "type": "TEXT_EMBEDDING", "base_url": base, "remote_model": "all-minilm-l6-v2"},
        {"name": "wrong-key", "format": "remote", "base_url": base, "api_key": "not-the-key-0000",
         "remote_model": "echo"},
        {"name": "nowhere", "format": "remote", "base_url": f"http://127.0.0.1:{closed_port}/v1"},
        *({"name": name, "format": "remote", "base_url": url.format(port=closed_port)} for name, url in LEAKY.items()),
    ])
    empty_cache = tmp / "empty-cache"
    server = Server(["-c", str(manifest), "--offline"], tmp,
                    env={"UPSTREAM_KEY": UPSTREAM_KEY, "NEXA_CACHE_ROOT": str(empty_cache)})
    yield server
    server.stop()
    assert not empty_cache.exists() or not any(empty_cache.rglob("*.gguf"))


# Upstreams whose URL carries credentials, on the closed port: every surface must hide them.
LEAKY = {
    "leaky-userinfo": "http://leak-user:leak-pass-1@127.0.0.1:{port}/v1",
    "leaky-token": "http://LEAKTOKEN2@127.0.0.1:{port}/v1",
    "leaky-query": "http://127.0.0.1:{port}/v1?api_key=leak-query-3&sig=leak-sig-4",
}
SECRETS = ("leak-user", "leak-pass-1", "LEAKTOKEN2", "leak-query-3", "leak-sig-4")


def client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_remote_models_are_listed_and_ready(front: Server):
    cards = {m["id"]: m for m in httpx.get(front.url + "/v1/models", timeout=10).json()["data"]}
    assert cards["chat"]["format"] == "remote" and cards["chat"]["state"] == "ready"
    assert cards["chat"]["capabilities"] == ["chat", "complete"]
    assert cards["embed"]["capabilities"] == ["embed"]


def test_chat_through_the_front_matches_the_upstream_model(front: Server, upstream: Server):
    messages = [{"role": "user", "content": "Name a colour."}]

    def direct():
        return client(upstream, UPSTREAM_KEY).chat.completions.create(model="smollm2", messages=messages,
                                                                       max_tokens=8, temperature=0, seed=7)

    # llama.cpp's first run of a prompt differs slightly from later runs that reuse its cached
    # prefix, so the upstream runs this prompt once before the two that are compared.
    direct()
    via_front = client(front).chat.completions.create(model="chat", messages=messages, max_tokens=8, temperature=0,
                                                      seed=7)
    direct = direct()
    assert via_front.model == "chat"
    assert via_front.choices[0].message.content == direct.choices[0].message.content
    assert via_front.choices[0].message.content.strip()
    assert via_front.choices[0].finish_reason == direct.choices[0].finish_reason
    assert (via_front.usage.prompt_tokens, via_front.usage.completion_tokens) == (
        direct.usage.prompt_tokens, direct.usage.completion_tokens)


def test_streamed_chat_and_completion_go_through(front: Server):
    stream = client(front).chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=3, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == " w0 w1 w2" and finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == 1

    answer = client(front).completions.create(model="echo", prompt="p", max_tokens=4)
    assert answer.choices[0].text == " w0 w1 w2 w3" and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 4

    lines = []
    with httpx.stream("POST", front.url + "/v1/completions", timeout=60,
                      json={"model": "echo", "prompt": "p", "max_tokens": 2, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert "".join(json.loads(l[6:])["choices"][0]["text"] for l in lines[:-1]) == " w0 w1"


def test_tool_calls_are_assembled_from_upstream_fragments(front: Server):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string", "maxLength": 24}},
                                                   "required": ["city"]}}}]
    answer = client(front).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0)
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments), dict)


def test_embeddings_go_through(front: Server, upstream: Server):
    texts = ["a cat sat on the mat", "stock markets fell"]
    via_front = client(front).embeddings.create(model="embed", input=texts)
    direct = client(upstream, UPSTREAM_KEY).embeddings.create(model="all-minilm-l6-v2", input=texts)
    a = np.array([d.embedding for d in via_front.data])
    b = np.array([d.embedding for d in direct.data])
    assert a.shape == (2, 384) and np.allclose(a, b, atol=1e-6)
    assert via_front.usage.prompt_tokens == direct.usage.prompt_tokens > 0
    normalized = httpx.post(front.url + "/v1/embeddings", timeout=60,
                            json={"model": "embed", "input": texts[0], "normalize": True}).json()
    assert abs(np.linalg.norm(normalized["data"][0]["embedding"]) - 1.0) < 1e-4


def test_a_client_that_leaves_stops_the_upstream(front: Server, upstream: Server):
    with httpx.stream("POST", front.url + "/v1/completions", timeout=60,
                      json={"model": "slow", "prompt": "p", "max_tokens": 2000, "stream": True}) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break
    assert metric(upstream.url, "nexa_requests_running", model="slow") >= 0
    # 2000 tokens at 50 ms each would run for 100 s; the upstream request ends soon after we leave.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (metric(upstream.url, "nexa_requests_running", model="slow")
                                           or metric(front.url, "nexa_requests_running", model="slow")):
        time.sleep(0.1)
    assert metric(upstream.url, "nexa_requests_running", model="slow") == 0
    assert metric(front.url, "nexa_requests_running", model="slow") == 0


def test_an_upstream_400_is_the_callers_400(front: Server):
    # The upstream allows 50 tokens for `echo`; the front's own limit is the default 4096.
    answer = httpx.post(front.url + "/v1/completions", timeout=60, json={"model": "echo", "prompt": "p",
                                                                         "max_tokens": 100})
    assert answer.status_code == 400
    assert "the upstream model rejected the request" in answer.json()["error"]["message"]
    assert "max_tokens" in answer.json()["error"]["message"]


def test_an_unreachable_upstream_is_a_502_in_the_openai_envelope(front: Server, closed_port: int):
    for stream in (False, True):
        answer = httpx.post(front.url + "/v1/chat/completions", timeout=60, json={
            "model": "nowhere", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["code"] == "upstream_unavailable" and error["type"] == "server_error"
        assert f"cannot reach upstream http://127.0.0.1:{closed_port}/v1" in error["message"]
    with pytest.raises(openai.APIStatusError) as info:
        client(front).completions.create(model="nowhere", prompt="p", max_tokens=2)
    assert info.value.status_code == 502
    assert client(front).completions.create(model="echo", prompt="p", max_tokens=1).choices[0].text == " w0"


def test_credentials_in_an_upstream_url_never_surface(front: Server, closed_port: int):
    for name in LEAKY:
        for stream in (False, True):
            answer = httpx.post(front.url + "/v1/chat/completions", timeout=60, json={
                "model": name, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            assert answer.status_code == 502, answer.text
            message = answer.json()["error"]["message"]
            assert f"127.0.0.1:{closed_port}/v1" in message, message
            assert not [s for s in SECRETS if s in answer.text], answer.text
            if name != "leaky-query":
                assert f"http://<redacted>@127.0.0.1:{closed_port}/v1" in message
            else:
                assert "api_key=<redacted>&sig=<redacted>" in message
    log = front.log()
    assert "upstream_error" in log and f"127.0.0.1:{closed_port}" in log
    assert not [s for s in SECRETS if s in log]
    models = httpx.get(front.url + "/v1/models", timeout=10)
    assert {"leaky-userinfo", "leaky-token", "leaky-query"} <= {m["id"] for m in models.json()["data"]}
    manifest = httpx.get(front.url + "/admin/manifest", timeout=10)
    assert manifest.status_code == 200
    assert not [s for s in (*SECRETS, UPSTREAM_KEY) if s in models.text + manifest.text]
    shown = {m["name"]: m["base_url"] for m in manifest.json()["models"]}
    assert shown["leaky-token"] == f"http://<redacted>@127.0.0.1:{closed_port}/v1" == shown["leaky-userinfo"]
    assert shown["leaky-query"] == f"http://127.0.0.1:{closed_port}/v1?api_key=<redacted>&sig=<redacted>"


def test_an_upstream_that_refuses_our_key_is_a_502_that_says_so(front: Server):
    answer = httpx.post(front.url + "/v1/completions", timeout=60, json={"model": "wrong-key", "prompt": "p",
                                                                         "max_tokens": 2})
    assert answer.status_code == 502
    assert "refused this gateway's API key (401)" in answer.json()["error"]["message"]
    assert "not-the-key" not in answer.text
