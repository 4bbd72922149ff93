"""Continuous batching (`parallel: N`): the real SmolLM2 in one llama.cpp context of N sequences.

In-process: the batched engine against `LlamaBackend` alone. End to end: one gateway serving
the same model as `parallel: 1` (solo), `parallel: 4` (batched) and `parallel: 2, max_queue: 1`
(pair), spoken to with the openai SDK from client threads."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import metric, models, wait_for, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PROMPTS = ["1, 2, 3, 4, 5,", "The capital of France is", "Here is a list of fruits: apple, banana,",
           "def fibonacci(n):"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
MODEL = {"source": "smollm2", "nctx": 512, "n_threads": 1, "preload": True}


def run_together(calls: list) -> list:
    """Run the callables at once, each on its own thread; their results in order (errors re-raised)."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, on the test's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


# -- in process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(smollm2_path: Path):
    from backends.registry import backend_for
    from schemas.manifest import ModelSpec

    solo_spec, batched_spec = ModelSpec(name="solo", **MODEL), ModelSpec(name="batched", parallel=4, **MODEL)
    solo = backend_for(solo_spec).load(solo_spec, smollm2_path)  # the engines the registry picks
    batched = backend_for(batched_spec).load(batched_spec, smollm2_path)
    yield solo, batched
    batched.close()
    solo.close()


def _text(backend, prompt: str, **params) -> tuple[str, object]:
    from backends.base import SamplingParams

    deltas = list(backend.complete(prompt, SamplingParams(**{"temperature": 0, "max_tokens": 16, **params}),
                                   lambda: False))
    return "".join(d.text for d in deltas), deltas[-1]


def test_the_batched_engine_matches_the_single_one_at_temperature_0(engines):
    from backends.llama_batch import BatchedLlamaBackend

    solo, batched = engines
    assert isinstance(batched, BatchedLlamaBackend) and batched.info()["parallel"] == 4
    alone = [_text(solo, p) for p in PROMPTS]
    together = run_together([lambda p=p: _text(batched, p) for p in PROMPTS])
    assert [t for t, _ in together] == [t for t, _ in alone]
    for (_, last_b), (_, last_s) in zip(together, alone):
        assert last_b.usage == last_s.usage and last_b.finish_reason == last_s.finish_reason
    stats = batched.batch_stats()
    wait_for(lambda: stats.running == 0, timeout=5)  # every slot freed
    assert stats.batch_sum > stats.steps  # some steps decoded several sequences in one llama_decode


def test_chats_arriving_together_compute_their_shared_system_prompt_once(engines):
    from backends.base import SamplingParams

    solo, batched = engines
    system = {"role": "system", "content": "You are a patient teacher. Answer in two short sentences. " * 5}
    chats = [[system, {"role": "user", "content": q}] for q in ("Why is the sky blue?", "What is rain?",
                                                                 "Why do cats purr?", "What is a star?")]
    prefix = len(batched._chat_tokens([system]))  # the system turn alone, as the template renders it

    def answer(backend, messages):
        return "".join(d.text for d in backend.chat(messages, SamplingParams(temperature=0, max_tokens=12),
                                                    lambda: False))

    before = batched.batch_stats().reused_tokens
    together = run_together([lambda m=m: answer(batched, m) for m in chats])
    assert batched.batch_stats().reused_tokens - before >= 3 * (prefix - 8)  # three of four copied it
    assert together == [answer(solo, m) for m in chats]  # copied KV answers like computed KV


def test_a_request_that_leaves_frees_its_slot_at_once(engines):
    from backends.base import SamplingParams

    _, batched = engines
    left = threading.Event()
    stream = batched.complete(PROMPTS[0], SamplingParams(temperature=0, max_tokens=400), left.is_set)
    next(stream)
    assert batched.batch_stats().running == 1
    left.set()
    wait_for(lambda: batched.batch_stats().running == 0, timeout=5)
    stream.close()


def test_a_prompt_longer_than_nctx_per_sequence_is_refused(engines):
    from backends.base import SamplingParams
    from backends.errors import BackendError

    _, batched = engines
    assert batched.context_size() == 512  # nctx is per sequence: the context holds parallel × nctx
    with pytest.raises(BackendError, match="does not fit"):
        list(batched.complete(list(range(1, 600)), SamplingParams(), lambda: False))


def test_parallel_is_refused_for_vision_models(tmp_path: Path):
    from gateway.manifest.load import ManifestError, load_file

    path = write_manifest(tmp_path / "nexa.yaml", [{"name": "v", "type": "MULTIMODAL", "source": str(tmp_path),
                                                     "mmproj": str(tmp_path / "p.gguf"), "parallel": 4}])
    with pytest.raises(ManifestError, match=r"models\[0\]\.parallel: continuous batching serves NLP gguf"):
        load_file(path)


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path):
    from tests.conftest import Server

    tmp = tmp_path_factory.mktemp("batching")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "solo", **MODEL},
        {"name": "batched", "parallel": 4, **MODEL},
        {"name": "pair", "parallel": 2, "max_queue": 1, **MODEL},
        {"name": "twins", "parallel": 2, "replicas": 2, **MODEL},
    ])
    srv = Server(["-c", str(manifest)], tmp)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _stream(client: openai.OpenAI, model: str, prompt: str, **kwargs) -> dict:
    """Stream a completion; the text, the time of the first and last chunks, the usage."""
    text, first, usage, finish = "", None, None, None
    for chunk in client.completions.create(model=model, prompt=prompt, stream=True,
                                           stream_options={"include_usage": True}, **kwargs):
        if chunk.choices and chunk.choices[0].text:
            first = first or time.monotonic()
            text += chunk.choices[0].text
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage:
            usage = chunk.usage
    return {"text": text, "first": first, "last": time.monotonic(), "usage": usage, "finish": finish}


def test_n_streams_run_together_and_match_the_solo_model(client, server):
    solo = [_stream(client, "solo", p, max_tokens=24, temperature=0) for p in PROMPTS]
    together = run_together([lambda p=p: _stream(client, "batched", p, max_tokens=24, temperature=0)
                             for p in PROMPTS])
    assert max(r["first"] for r in together) < min(r["last"] for r in together)  # all started before any ended
    assert [r["text"] for r in together] == [r["text"] for r in solo]
    assert [r["usage"].completion_tokens for r in together] == [r["usage"].completion_tokens for r in solo]
    assert [r["usage"].prompt_tokens for r in together] == [r["usage"].prompt_tokens for r in solo]
    steps = metric(server.url, "nexa_batch_size_count", model="batched")
    single = metric(server.url, "nexa_batch_size_bucket", model="batched", le="1.0")
    assert steps > single  # some llama_decode steps carried several sequences


def test_each_replica_is_a_batched_instance(client, server):
    card = models(server.url)["twins"]
    assert (card["replicas"], card["parallel"]) == (2, 2)
    together = run_together([lambda p=p: _stream(client, "twins", p, max_tokens=16, temperature=0) for p in PROMPTS])
    assert max(r["first"] for r in together) < min(r["last"] for r in together)
    assert [r["text"] for r in together] == [_stream(client, "solo", p, max_tokens=16, temperature=0)["text"]
                                             for p in PROMPTS]
    assert metric(server.url, "nexa_batch_size_count", model="twins") > metric(
        server.url, "nexa_batch_size_bucket", model="twins", le="1.0")


def test_stops_seeds_and_logprobs_stay_per_slot(client):
    def stopped():
        return client.completions.create(model="batched", prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0,
                                         stop=[" 9"])

    def seeded():
        return client.completions.create(model="batched", prompt="Once upon a time", max_tokens=12,
                                         temperature=0.9, seed=1234)

    def with_logprobs():
        return client.completions.create(model="batched", prompt="The capital of France is", max_tokens=6,
                                         temperature=0, logprobs=3)

    first = run_together([stopped, seeded, with_logprobs, seeded])
    stop, seed_a, logprobs, seed_b = first
    solo_stop = client.completions.create(model="solo", prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0,
                                          stop=[" 9"]).choices[0]
    assert " 9" not in stop.choices[0].text
    assert (stop.choices[0].text, stop.choices[0].finish_reason) == (solo_stop.text, solo_stop.finish_reason)
    alone = seeded()
    assert seed_a.choices[0].text == seed_b.choices[0].text == alone.choices[0].text
    lp = logprobs.choices[0].logprobs
    assert len(lp.tokens) == logprobs.usage.completion_tokens == 6
    assert all(len(top) == 3 for top in lp.top_logprobs)
    solo = client.completions.create(model="solo", prompt="The capital of France is", max_tokens=6, temperature=0,
                                     logprobs=3)
    assert lp.tokens == solo.choices[0].logprobs.tokens


def test_a_tool_call_and_a_plain_chat_in_one_batch(client):
    ask = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    plain = [{"role": "user", "content": "Name three colours."}]

    def tool():
        return client.chat.completions.create(model="batched", messages=ask, tools=[WEATHER], tool_choice="required",
                                              max_tokens=120, temperature=0)

    def chat(model="batched"):
        return client.chat.completions.create(model=model, messages=plain, max_tokens=20, temperature=0)

    called, answered = run_together([tool, chat])
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert answered.choices[0].message.content == chat("solo").choices[0].message.content
    assert answered.usage.completion_tokens == chat("solo").usage.completion_tokens


def test_a_cancelled_stream_frees_its_slot_for_a_queued_request_and_the_queue_still_429s(client, server):
    long = dict(model="pair", prompt="1, 2, 3, 4, 5,", max_tokens=400, temperature=0)
    with httpx.Client(base_url=server.url, timeout=120) as http, contextlib.ExitStack() as streams:
        keep = streams.enter_context(http.stream("POST", "/v1/completions", json={**long, "stream": True}))
        leave = streams.enter_context(http.stream("POST", "/v1/completions", json={**long, "stream": True}))
        keep_lines, leave_lines = keep.iter_lines(), leave.iter_lines()  # (a dropped iterator closes its stream)
        next(keep_lines)
        next(leave_lines)
        queued: dict = {}
        waiter = threading.Thread(target=lambda: queued.update(
            answer=client.completions.create(model="pair", prompt="Hello", max_tokens=4, temperature=0)))
        waiter.start()
        wait_for(lambda: metric(server.url, "nexa_queue_depth", model="pair") == 1)
        full = httpx.post(server.url + "/v1/completions", json={**long, "max_tokens": 2}, timeout=30)
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        leave.close()  # the client leaves: its slot goes to the queued request
        waiter.join(120)
        assert queued["answer"].usage.completion_tokens == 4
        assert metric(server.url, "nexa_batch_running_sequences", model="pair") == 1  # `keep` still runs
        keep.close()
    wait_for(lambda: metric(server.url, "nexa_batch_running_sequences", model="pair") == 0, timeout=10)


def test_a_shared_prefix_is_not_evaluated_again(client, server):
    system = {"role": "system", "content": "You are a terse assistant who answers in one short sentence. " * 4}
    before = metric(server.url, "nexa_prefix_cache_reused_tokens_total", model="batched")
    for question in ("What is 2 + 2?", "What colour is the sky?"):
        client.chat.completions.create(model="batched", messages=[system, {"role": "user", "content": question}],
                                       max_tokens=4, temperature=0)
    reused = metric(server.url, "nexa_prefix_cache_reused_tokens_total", model="batched") - before
    assert reused >= 40  # the second request reused the system prompt's KV
    assert 0 < metric(server.url, "nexa_prefix_cache_hit_ratio", model="batched") <= 1
