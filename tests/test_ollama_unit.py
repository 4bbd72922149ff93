"""The Ollama API's translation and wire style without sockets: a fake engine (tests/fakes.py)
behind the real gateway core, router and handlers. The real engines and the real `ollama`
clients are tests/test_e2e_ollama.py."""

from __future__ import annotations

import asyncio
import json

import pytest

import backends.registry as registry
from gateway.api.ollama.translate import keep_alive_seconds, ollama_tool_calls, openai_messages
from gateway.app import Gateway
from gateway.manifest.load import build
from gateway.http.core import HTTPError, Request
from schemas.manifest import ModelFormat, ModelType
from schemas.ollama import OllamaMessage as Message
from tests import fakes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch):
    monkeypatch.setitem(registry.ENGINES, (ModelType.NLP, ModelFormat.gguf), fakes.engine("tests.fakes:FakeBackend"))
    fakes.EVENTS.clear()


def gateway(*models: dict, server: dict | None = None) -> Gateway:
    return Gateway(build({"server": server or {}, "models": [{"source": "/dev/null", "preload": True, **m}
                                                           for m in models]}))


async def call(gw: Gateway, method: str, path: str, body=None, headers: dict | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    response = await gw.respond(Request(method=method, path=path, body=raw, headers=headers or {}))
    if hasattr(response, "chunks"):
        data = b"".join([chunk async for chunk in response.chunks])
        return response.status, response.headers, [json.loads(x) for x in data.splitlines()]
    return response.status, response.headers, json.loads(response.body) if response.body else None


def run(models: list[dict], requests: list[tuple], server: dict | None = None) -> list[tuple]:
    async def main():
        gw = gateway(*models, server=server)
        gw.startup(asyncio.get_running_loop())
        for handle in gw.pool:
            await handle.ready()
        try:
            return [await call(gw, *r) for r in requests]
        finally:
            gw.shutdown()

    return asyncio.run(main())


def test_chat_streams_ndjson_with_a_final_line_of_counts():
    (status, headers, lines), = run([{"name": "a"}], [
        ("POST", "/api/chat", {"model": "a:latest", "messages": [{"role": "user", "content": "hi"}],
                               "options": {"num_predict": 3}})])
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert [x["message"]["content"] for x in lines] == [" w0", " w1", " w2", ""]
    assert all(x["model"] == "a:latest" and x["done"] is False for x in lines[:-1])
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "length"
    assert last["eval_count"] == 3 and last["prompt_eval_count"] == 1
    assert last["total_duration"] >= last["eval_duration"] >= 0


def test_generate_answers_one_object_without_stream():
    (status, _, body), = run([{"name": "a"}], [
        ("POST", "/api/generate", {"model": "a", "prompt": "p", "stream": False, "options": {"num_predict": 2}})])
    assert status == 200 and body["response"] == " w0 w1" and body["done"] is True and body["eval_count"] == 2


def test_an_error_after_the_first_line_is_an_error_line_and_the_stream_ends():
    (status, _, lines), = run([{"name": "a", "options": {"fail_after": 2}}], [
        ("POST", "/api/chat", {"model": "a", "messages": [{"role": "user", "content": "hi"}],
                               "options": {"num_predict": 5}})])
    assert status == 200
    assert [x["message"]["content"] for x in lines[:-1]] == [" w0", " w1"]
    assert lines[-1] == {"error": "fake failure mid-stream"}


def test_errors_use_ollamas_shape_and_name_ollamas_fields():
    results = run([{"name": "a", "max_tokens_limit": 100}], [
        ("POST", "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/api/chat", {"model": "a", "messages": [{"role": "user", "content": "hi"}],
                               "options": {"num_predict": 1000}}),
        ("POST", "/api/chat", {"model": "a", "messages": [{"role": "user", "content": "hi"}],
                               "options": {"temperature": 9}}),
        ("POST", "/api/chat", {"model": "a", "messages": [{"role": "user", "content": "hi"}], "think": True}),
        ("POST", "/api/generate", {"model": "a", "prompt": "p", "template": "{{ .Prompt }}"}),
        ("POST", "/api/generate", {"model": "a", "prompt": "p", "keep_alive": "soon"}),
        ("POST", "/api/create", {"model": "x", "from": "a"}),
        ("DELETE", "/api/delete", {"model": "a"}),
        ("POST", "/api/chat", b"{"),
        ("GET", "/api/chat", None),
    ])
    for status, _, body in results:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert [r[0] for r in results] == [404, 400, 400, 400, 400, 400, 400, 400, 400, 405]
    assert "options.num_predict" in results[1][2]["error"] and "max_tokens" not in results[1][2]["error"]
    assert "options.temperature" in results[2][2]["error"]
    assert "thinking" in results[3][2]["error"]
    assert "manifest" in results[6][2]["error"] and "manifest" in results[7][2]["error"]


def test_api_keys_and_per_key_models_apply():
    server = {"api_keys": [{"key": "key-for-all"}, {"key": "key-for-only-a", "models": ["a"]}]}
    chat = {"model": "b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    results = run([{"name": "a"}, {"name": "b"}], [
        ("GET", "/api/tags", None, {}),
        ("GET", "/api/tags", None, {"authorization": "Bearer key-for-only-a"}),
        ("POST", "/api/chat", chat, {"authorization": "Bearer key-for-only-a"}),
        ("POST", "/api/chat", chat, {"authorization": "Bearer key-for-all"}),
        ("POST", "/api/show", {"model": "b"}, {"authorization": "Bearer key-for-only-a"}),
    ], server=server)
    assert results[0][0] == 401 and set(results[0][2]) == {"error"}
    assert [m["name"] for m in results[1][2]["models"]] == ["a:latest"]
    assert results[2][0] == 403 and set(results[2][2]) == {"error"}
    assert results[3][0] == 200 and results[3][2]["message"]["content"]
    assert results[4][0] == 404


def test_an_empty_prompt_loads_and_keep_alive_zero_unloads():
    results = run([{"name": "a"}], [
        ("POST", "/api/generate", {"model": "a", "keep_alive": 0}),
        ("GET", "/api/ps", None),
        ("POST", "/api/generate", {"model": "a"}),
        ("GET", "/api/ps", None),
    ])
    assert results[0][2]["done_reason"] == "unload" and results[1][2]["models"] == []
    assert results[2][2]["done_reason"] == "load" and [m["name"] for m in results[3][2]["models"]] == ["a:latest"]


def test_keep_alive_durations():
    assert keep_alive_seconds("5m") == 300 and keep_alive_seconds("1h30m") == 5400
    assert keep_alive_seconds(0) == 0 and keep_alive_seconds("-1") == -1 and keep_alive_seconds(None) is None
    assert keep_alive_seconds("250ms") == 0.25
    with pytest.raises(HTTPError):
        keep_alive_seconds("five minutes")


def test_messages_translate_images_and_tool_turns():
    messages = openai_messages([
        Message(role="user", content="what is this?", images=["iVBORw0KGgo="]),
        Message(role="assistant", content="", tool_calls=[{"function": {"name": "f", "arguments": {"x": 1}}}]),
        Message(role="tool", content="42", tool_name="f"),
    ])
    assert messages[0]["content"] == [{"type": "image_url", "image_url": {"url": "iVBORw0KGgo="}},
                                      {"type": "text", "text": "what is this?"}]
    call = messages[1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"x": 1}
    assert messages[2] == {"role": "tool", "content": "42", "tool_call_id": call["id"], "name": "f"}
    assert ollama_tool_calls([{"id": "c", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]) == [
        {"id": "c", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}]
