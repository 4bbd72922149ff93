"""backends/remote.py without a second gateway: how upstream answers map to Deltas and errors.

The end-to-end behaviour (a real upstream gateway) is in tests/test_e2e_remote.py; these cover
the answers a healthy nexa upstream never gives (429, 503, a stream cut short, odd shapes), served
by httpx's MockTransport."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from backends.base import ChatOptions, SamplingParams
from backends.errors import BackendError, LoadError, UpstreamError
from backends.remote import RemoteEmbedBackend, RemoteTextBackend, _sampling
from schemas.manifest import ModelSpec

SPEC = ModelSpec(name="r", format="remote", base_url="http://upstream.test/v1", api_key="sk-test",
                 remote_model="up")
NEVER = lambda: False  # noqa: E731


def backend(handler, cls=RemoteTextBackend, spec=SPEC):
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    loaded = cls.load(spec, None)
    loaded.client = httpx.Client(base_url=loaded.client.base_url, headers=loaded.client.headers,
                                 transport=httpx.MockTransport(record))
    return loaded, seen


def sse(*events) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def test_chat_chunks_become_deltas_with_usage_and_tool_calls():
    events = sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]},
                 {"choices": [{"delta": {"content": "Hel"}}]}, {"choices": [{"delta": {"content": "lo"}}]},
                 {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                          "function": {"name": "f", "arguments": ""}}]}}]},
                 {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]},
                 {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
                 {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
                 {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}},
                 b"[DONE]")
    remote, seen = backend(lambda r: httpx.Response(200, content=events, headers={"content-type": "text/event-stream"}))
    deltas = list(remote.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=9, top_k=5), NEVER,
                              ChatOptions(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="auto")))
    assert [d.text for d in deltas[:-1]] == ["Hel", "lo"]
    last = deltas[-1]
    assert last.finish_reason == "tool_calls" and (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 5)
    assert last.tool_calls == [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/v1/chat/completions" and seen[0].headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "up" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 9 and body["top_k"] == 5 and "min_p" not in body and body["tool_choice"] == "auto"


def test_sampling_sends_extensions_only_when_set():
    assert _sampling(SamplingParams()) == {"max_tokens": 128, "temperature": 1.0, "top_p": 1.0}
    full = _sampling(SamplingParams(stop=["x"], seed=3, min_p=0.1, repeat_penalty=1.2, presence_penalty=0.5))
    assert full["stop"] == ["x"] and full["seed"] == 3 and full["min_p"] == 0.1 and full["repeat_penalty"] == 1.2
    assert full["presence_penalty"] == 0.5 and "frequency_penalty" not in full


def test_cancellation_stops_reading_and_says_so():
    events = sse(*({"choices": [{"text": f"t{i}"}]} for i in range(50)))
    remote, _ = backend(lambda r: httpx.Response(200, content=events))
    read = []

    def cancelled() -> bool:
        return len(read) >= 3

    for delta in remote.complete("p", SamplingParams(), cancelled):
        read.append(delta)
    assert [d.text for d in read[:3]] == ["t0", "t1", "t2"] and read[-1].finish_reason == "cancelled"
    assert len(read) == 4


@pytest.mark.parametrize("status, headers, kind, expect", [
    (400, {}, BackendError, "the upstream model rejected the request: bad max_tokens"),
    (422, {}, BackendError, "rejected the request"),
    (401, {}, UpstreamError, "refused this gateway's API key (401)"),
    (404, {}, UpstreamError, "has no model 'up' or route (404)"),
    (429, {"retry-after": "7"}, UpstreamError, "is rate limiting"),
    (503, {"retry-after": "3"}, UpstreamError, "is unavailable (503)"),
    (500, {}, UpstreamError, "failed (500)"),
])
def test_upstream_errors_map_to_the_callers_or_the_upstreams_fault(status, headers, kind, expect):
    envelope = {"error": {"message": "bad max_tokens", "type": "x"}}
    remote, _ = backend(lambda r: httpx.Response(status, json=envelope, headers=headers))
    with pytest.raises(kind, match=expect.replace("(", r"\(").replace(")", r"\)")) as info:
        list(remote.complete("p", SamplingParams(), NEVER))
    if kind is UpstreamError:
        assert info.value.status == {429: 429, 503: 503}.get(status, 502)
        assert info.value.retry_after == {429: 7.0, 503: 3.0}.get(status)
        assert info.value.code == ("upstream_rate_limited" if status == 429 else "upstream_unavailable")


def test_streams_cut_short_or_failing_midway_are_upstream_errors():
    cut = sse({"choices": [{"text": "a"}]})
    remote, _ = backend(lambda r: httpx.Response(200, content=cut))
    with pytest.raises(UpstreamError, match="closed the stream before it finished"):
        list(remote.complete("p", SamplingParams(), NEVER))
    failed = sse({"choices": [{"text": "a"}]}, {"error": {"message": "engine crashed"}})
    remote, _ = backend(lambda r: httpx.Response(200, content=failed))
    with pytest.raises(UpstreamError, match="failed: engine crashed"):
        list(remote.complete("p", SamplingParams(), NEVER))


def test_timeouts_are_504_and_refused_connections_502():
    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    remote, _ = backend(slow)
    with pytest.raises(UpstreamError) as info:
        list(remote.complete("p", SamplingParams(), NEVER))
    assert info.value.status == 504 and info.value.code == "upstream_timeout"

    def refused(request):
        raise httpx.ConnectError("connection refused", request=request)

    remote, _ = backend(refused, RemoteEmbedBackend)
    with pytest.raises(UpstreamError, match="cannot reach upstream http://upstream.test/v1") as info:
        remote.embed(["x"])
    assert info.value.status == 502


def test_embeddings_keep_order_and_normalize_when_asked():
    answer = {"data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3.0, 4.0]}],
              "usage": {"prompt_tokens": 6}}
    remote, seen = backend(lambda r: httpx.Response(200, json=answer), RemoteEmbedBackend)
    result = remote.embed(["a", "b"], normalize=True, truncate=False)
    assert np.allclose(result.vectors, [[0.6, 0.8], [0.0, 1.0]]) and result.prompt_tokens == 6
    assert json.loads(seen[0].content) == {"model": "up", "input": ["a", "b"], "encoding_format": "float",
                                           "truncate": False}
    remote, _ = backend(lambda r: httpx.Response(200, json={"data": []}), RemoteEmbedBackend)
    with pytest.raises(UpstreamError, match="returned 0 vectors for 1 inputs"):
        remote.embed(["a"])


def test_unknown_options_fail_the_load():
    spec = SPEC.model_copy(update={"options": {"timeout": 5}})
    with pytest.raises(LoadError, match="unknown option"):
        RemoteTextBackend.load(spec, None)


def test_a_model_cards_error_hides_url_credentials():
    from types import SimpleNamespace

    from gateway.api.ops.discovery import card

    handle = SimpleNamespace(name="r", spec=SimpleNamespace(type=SimpleNamespace(value="NLP"),
                                                            format=SimpleNamespace(value="remote"), aliases=[],
                                                            replicas=1, parallel=1),
                             state=SimpleNamespace(value="failed"), capabilities={"chat"}, running=0,
                             load_seconds=None, queue_depth=lambda: 0,
                             error="cannot reach upstream http://tok-secret@h/v1?key=k-secret")
    shown = card(SimpleNamespace(started=0), handle).model_dump_json()
    assert "tok-secret" not in shown and "k-secret" not in shown and "http://<redacted>@h/v1?key=<redacted>" in shown
