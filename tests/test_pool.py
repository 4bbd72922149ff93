"""The model pool and the gateway core, without sockets: a fake engine with
controllable latency drives the real pool, router and handlers."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

import backends.base as base
import backends.registry as registry
from gateway.app import Gateway
from gateway.http.core import Request
from gateway.manifest.load import build
from gateway.models.channel import Channel
from gateway.models.pool import ModelPool
from gateway.models.state import ModelState, ModelUnavailable
from schemas.manifest import ModelFormat, ModelType, ServerSettings
from tests import fakes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch):
    monkeypatch.setitem(registry.ENGINES, (ModelType.NLP, ModelFormat.gguf), fakes.engine("tests.fakes:FakeBackend"))
    fakes.EVENTS.clear()


def manifest(*models: dict):
    return build({"models": [{"source": "/dev/null", "preload": True, **m} for m in models]})


def run(coro):
    return asyncio.run(coro)


def test_inference_runs_on_the_model_thread_not_the_loop():
    async def main():
        pool = ModelPool(manifest({"name": "a"}).models, asyncio.get_running_loop())
        handle = pool.get("a")
        thread = await handle.call(lambda backend: threading.current_thread().name)
        pool.close()
        return thread

    assert run(main()) == "model-a"


def test_requests_to_one_model_run_in_arrival_order():
    async def main():
        pool = ModelPool(manifest({"name": "a", "options": {"delay": 0.01}}).models, asyncio.get_running_loop())
        handle = pool.get("a")
        await handle.ready()
        params = base.SamplingParams(max_tokens=3)

        async def one(i):
            return [d async for d in handle.stream(lambda b, c: b.complete(i, params, c))]

        await asyncio.gather(*(one(i) for i in range(5)))
        pool.close()

    run(main())
    starts = [detail for what, detail in fakes.EVENTS if what == "start"]
    ends = [detail for what, detail in fakes.EVENTS if what == "end"]
    assert starts == ends == [0, 1, 2, 3, 4]
    # never interleaved: each request ends before the next starts
    order = [what for what, _ in fakes.EVENTS]
    assert order == ["start", "end"] * 5


def test_a_consumer_that_leaves_stops_generation_within_a_few_tokens():
    async def main():
        pool = ModelPool(manifest({"name": "a", "options": {"delay": 0.005}}).models, asyncio.get_running_loop(),
                         ServerSettings(stream_buffer=2))
        handle = pool.get("a")
        await handle.ready()
        params = base.SamplingParams(max_tokens=10_000)
        stream = handle.stream(lambda b, c: b.complete("long", params, c))
        got = 0
        async for _ in stream:
            got += 1
            if got == 5:
                break
        await stream.aclose()
        await asyncio.sleep(0.2)
        produced = handle.backend.produced
        pool.close()
        return got, produced

    got, produced = run(main())
    assert ("end", "long") not in fakes.EVENTS
    assert produced <= got + 2 + 2  # buffer of 2, plus at most a token or two in flight


def test_the_engine_never_runs_more_than_the_buffer_ahead_of_a_slow_consumer():
    async def main():
        pool = ModelPool(manifest({"name": "a"}).models, asyncio.get_running_loop(), ServerSettings(stream_buffer=3))
        handle = pool.get("a")
        await handle.ready()
        params = base.SamplingParams(max_tokens=1000)
        stream = handle.stream(lambda b, c: b.complete("slow", params, c))
        await stream.__anext__()
        await asyncio.sleep(0.3)  # the consumer stalls; the engine must wait, not run to the end
        ahead = handle.backend.produced
        await stream.aclose()
        pool.close()
        return ahead

    assert run(main()) <= 1 + 3 + 1


def test_load_failure_is_a_model_state_and_a_503_cause():
    async def main():
        pool = ModelPool(manifest({"name": "bad", "options": {"fail_load": True}}).models, asyncio.get_running_loop())
        handle = pool.get("bad")
        with pytest.raises(ModelUnavailable, match="fake load failure"):
            await handle.call(lambda b: None)
        state = handle.state
        pool.close()
        return state

    assert run(main()) == ModelState.failed


def test_lazy_models_load_on_first_use_and_ready_waits_for_preloads():
    async def main():
        spec = manifest({"name": "eager", "options": {"load_delay": 0.2}}, {"name": "lazy", "preload": False})
        pool = ModelPool(spec.models, asyncio.get_running_loop())
        pool.preload()
        assert pool.get("lazy").state == ModelState.unloaded
        assert not pool.is_ready()
        await pool.get("eager").ready()
        assert pool.is_ready()
        await pool.get("lazy").call(lambda b: None)
        assert pool.get("lazy").state == ModelState.ready
        pool.close()

    run(main())


def test_channel_wakes_the_consumer_from_another_thread():
    async def main():
        channel = Channel(asyncio.get_running_loop(), maxsize=1)
        producer = threading.Thread(target=lambda: [channel.put("item", i) for i in range(3)] + [channel.put("end")])
        producer.start()
        items = []
        while True:
            kind, value = await asyncio.wait_for(channel.get(), 5)
            if kind == "end":
                break
            items.append(value)
        producer.join()
        return items

    assert run(main()) == [0, 1, 2]


# -- the gateway core over its own HTTP types --------------------------------------------


async def call(gw: Gateway, method: str, path: str, body=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    response = await gw.respond(Request(method=method, path=path, body=raw))
    if hasattr(response, "chunks"):
        data = b"".join([chunk async for chunk in response.chunks])
        return response.status, response.headers, data
    return response.status, response.headers, json.loads(response.body) if response.body else None


def test_gateway_routes_errors_and_request_ids():
    async def main():
        gw = Gateway(manifest({"name": "a", "aliases": ["alias-a"]}, {"name": "b"}))
        gw.startup(asyncio.get_running_loop())
        await gw.pool.get("a").ready()
        results = {
            "ok": await call(gw, "POST", "/v1/completions", {"model": "alias-a", "prompt": "p", "max_tokens": 3}),
            "unknown": await call(gw, "POST", "/v1/completions", {"model": "zzz", "prompt": "p"}),
            "badjson": await call(gw, "POST", "/v1/chat/completions", b"{"),
            "n2": await call(gw, "POST", "/v1/completions", {"prompt": "p", "n": 2}),
            "toolong": await call(gw, "POST", "/v1/completions", {"prompt": "p", "max_tokens": 10**6}),
            "stream": await call(gw, "POST", "/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}),
            "image": await call(gw, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
        }
        gw.shutdown()
        return results

    r = run(main())
    status, headers, body = r["ok"]
    assert status == 200 and body["model"] == "a" and body["choices"][0]["text"] == " w0 w1 w2"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert len(headers["x-request-id"]) == 32
    assert r["unknown"][0] == 404 and r["unknown"][2]["error"]["code"] == "model_not_found"
    assert r["badjson"][0] == 400 and r["badjson"][2]["error"]["code"] == "invalid_json"
    assert r["n2"][0] == 400 and r["n2"][2]["error"]["param"] == "n"
    assert r["toolong"][0] == 400 and r["toolong"][2]["error"]["param"] == "max_tokens"
    assert r["image"][0] == 400 and r["image"][2]["error"]["code"] == "images_not_supported"
    status, headers, data = r["stream"]
    events = [line[6:] for line in data.decode().split("\n\n") if line]
    assert headers["content-type"] == "text/event-stream" and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert json.loads(events[-2])["choices"][0]["delta"] == {}
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_a_model_that_fails_to_load_answers_503_and_others_keep_serving():
    async def main():
        gw = Gateway(manifest({"name": "bad", "options": {"fail_load": True}}, {"name": "good"}))
        gw.startup(asyncio.get_running_loop())
        bad = await call(gw, "POST", "/v1/completions", {"model": "bad", "prompt": "p"})
        good = await call(gw, "POST", "/v1/completions", {"model": "good", "prompt": "p", "max_tokens": 1})
        models = await call(gw, "GET", "/v1/models")
        gw.shutdown()
        return bad, good, models

    bad, good, models = run(main())
    assert bad[0] == 503 and bad[1]["retry-after"] and "fake load failure" in bad[2]["error"]["message"]
    assert good[0] == 200
    states = {m["id"]: (m["state"], m["error"]) for m in models[2]["data"]}
    assert states["bad"] == ("failed", "fake load failure") and states["good"][0] == "ready"


def test_client_habits_null_fields_top_p_zero_head_and_slashed_names():
    async def main():
        gw = Gateway(manifest({"name": "org/model-a", "aliases": ["a"]}))
        gw.startup(asyncio.get_running_loop())
        await gw.pool.get("a").ready()
        nulls = await call(gw, "POST", "/v1/chat/completions", {
            "model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": None,
            "n": None, "presence_penalty": None, "frequency_penalty": None, "logprobs": None})
        greedy = await call(gw, "POST", "/v1/completions", {"model": "a", "prompt": "p", "max_tokens": 1, "top_p": 0})
        card = await call(gw, "GET", "/v1/models/org/model-a")
        head = await gw.respond(Request(method="HEAD", path="/health"))
        gw.shutdown()
        return nulls, greedy, card, head

    nulls, greedy, card, head = run(main())
    assert nulls[0] == 200 and nulls[2]["object"] == "chat.completion"
    assert greedy[0] == 200
    assert card[0] == 200 and card[2]["id"] == "org/model-a"
    assert head.status == 200 and head.body == b""


def test_a_parallel_model_runs_that_many_jobs_at_once_on_one_instance_and_queues_the_rest():
    """`parallel: 3`: three job threads share one engine instance; the fourth request waits,
    the fifth is over max_queue (1) and gets a 429."""
    async def main():
        pool = ModelPool(manifest({"name": "a", "parallel": 3, "max_queue": 1, "options": {"delay": 0.05}}).models,
                         asyncio.get_running_loop())
        handle = pool.get("a")
        await handle.ready()
        assert len(handle.backends) == 1
        params = base.SamplingParams(max_tokens=8)

        async def one(i):
            return [d async for d in handle.stream(lambda b, c: b.complete(i, params, c))]

        tasks = [asyncio.ensure_future(one(i)) for i in range(4)]
        while handle.running < 3 or handle.queue_depth() < 1:
            await asyncio.sleep(0.005)
        assert handle.running == 3
        with pytest.raises(ModelUnavailable) as over:
            await one(99)
        results = await asyncio.gather(*tasks)
        await handle.unload()
        return over.value, results

    over, results = run(main())
    assert over.status == 429
    assert all(r[-1].usage.completion_tokens == 8 for r in results)
    starts = [i for what, i in fakes.EVENTS if what == "start"]
    ends = [i for what, i in fakes.EVENTS if what == "end"]
    assert set(starts[:3]) == {0, 1, 2} and starts.index(3) == 3
    assert fakes.EVENTS.index(("start", 2)) < fakes.EVENTS.index(("end", 0))  # the first three overlapped
    assert len(ends) == 4
