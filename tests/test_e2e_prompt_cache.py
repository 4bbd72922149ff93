"""End to end: the host-memory prompt cache of a real `nexa server` (SmolLM2), as an agent uses it.

A conversation, a side call on another prefix, then the conversation's next turn: the third request
reports its prompt as cached (OpenAI, Responses and Anthropic usage fields) and /metrics counts only
its new tokens as prefilled; with `prompt_cache: 0` the same turn is prefilled again. A small bound
holds under many distinct prompts, in the cache's own bytes and in the process's RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ROOT, Server, metric, models, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SMALL_BOUND = 32 * 2**20
RSS_SLACK = 64 * 2**20  # allocator and Python heap noise around the cache's own bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("prompt-cache")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "cached", "source": str(smollm2_path), "nctx": 4096, "prompt_cache": "256MiB", "preload": True},
        {"name": "uncached", "source": str(smollm2_path), "nctx": 4096, "prompt_cache": 0, "preload": True},
        {"name": "batched", "source": str(smollm2_path), "nctx": 4096, "parallel": 2, "prompt_cache": "256MiB",
         "preload": True},
        {"name": "replicated", "source": str(smollm2_path), "nctx": 4096, "replicas": 2, "prompt_cache": "256MiB",
         "preload": True},
        {"name": "small", "source": str(smollm2_path), "nctx": 2048, "prompt_cache": SMALL_BOUND},
    ])
    started = Server(["-c", str(manifest)], tmp)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=240)


def main_conversation(turns: int = 4) -> list[dict]:
    messages = [{"role": "system", "content": "You are a coding agent working in a repository. " * 40}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Step {i}: look at module {i} and tell me what it does. " * 5},
                     {"role": "assistant", "content": f"Module {i} parses configuration files number {i}. " * 5}]
    return messages


SIDE = [{"role": "system", "content": "Write a five-word title for the conversation below. " * 8},
        {"role": "user", "content": "Please summarise: the user asked about parsing modules. " * 6}]
SIDE_2 = [{"role": "system", "content": "Answer yes or no: is this a question about code? " * 8},
          {"role": "user", "content": "Is the configuration parser fast enough for large files? " * 6}]


def chat(client: openai.OpenAI, model: str, messages: list[dict]):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)


def prefilled(server: Server, model: str) -> float:
    return metric(server.url, "nexa_prompt_cache_prefilled_tokens_total", model=model)


@pytest.mark.parametrize("model", ["cached", "batched", "replicated"])
def test_the_turn_after_a_side_call_is_served_from_the_cache(client, server, model):
    main = main_conversation()
    chat(client, model, main)
    chat(client, model, SIDE)
    if model != "cached":
        chat(client, model, SIDE_2)  # two slots or replicas: the second side call takes the other one
    turn = main + [{"role": "user", "content": "Now refactor module 2."}]
    before = prefilled(server, model)
    usage = chat(client, model, turn).usage
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached >= 0.9 * usage.prompt_tokens
    assert prefilled(server, model) - before == usage.prompt_tokens - cached  # only the new tokens
    if model != "replicated":  # two replicas: the turn may find its conversation live on one of them
        assert metric(server.url, "nexa_prompt_cache_hits_total", model=model) >= 1
        assert metric(server.url, "nexa_prompt_cache_restored_tokens_total", model=model) >= cached
    assert metric(server.url, "nexa_prompt_cache_entries", model=model) >= 1
    assert 0 < metric(server.url, "nexa_prompt_cache_bytes", model=model) <= 256 * 2**20


def test_without_the_cache_the_turn_is_prefilled_again(client, server):
    main = main_conversation()
    chat(client, "uncached", main)
    chat(client, "uncached", SIDE)
    before = prefilled(server, "uncached")
    usage = chat(client, "uncached", main + [{"role": "user", "content": "Now refactor module 2."}]).usage
    assert usage.prompt_tokens_details.cached_tokens < 0.5 * usage.prompt_tokens
    assert prefilled(server, "uncached") - before >= 0.5 * usage.prompt_tokens
    assert metric(server.url, "nexa_prompt_cache_bytes", model="uncached") == 0


def test_every_protocol_reports_the_cached_tokens(client, server):
    main = main_conversation(3)
    chat(client, "cached", main)
    chat(client, "cached", SIDE)
    # Anthropic: input_tokens are the evaluated ones; with the cache read they make the whole prompt
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=240)
    answer = claude.messages.create(model="cached", max_tokens=4, system=main[0]["content"], messages=main[1:])
    counted = claude.messages.count_tokens(model="cached", system=main[0]["content"], messages=main[1:])
    usage = answer.usage
    assert usage.cache_read_input_tokens >= 0.9 * counted.input_tokens
    assert usage.input_tokens + usage.cache_read_input_tokens == counted.input_tokens
    assert usage.cache_creation_input_tokens == 0
    chat(client, "cached", SIDE)
    response = client.responses.create(model="cached", instructions=main[0]["content"], input=main[1:],
                                       max_output_tokens=4)
    details = response.usage.input_tokens_details
    assert details.cached_tokens >= 0.9 * response.usage.input_tokens
    # a streamed chat carries it in its usage chunk
    chat(client, "cached", SIDE)
    stream = client.chat.completions.create(model="cached", messages=main, max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    last = [chunk for chunk in stream][-1]
    assert last.usage.prompt_tokens_details.cached_tokens >= 0.9 * last.usage.prompt_tokens


def test_the_request_log_line_carries_tokens_and_timings(client, server):
    usage = chat(client, "cached", main_conversation(2)).usage
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    done = [line for line in lines if line.get("event") == "generation" and line.get("model") == "cached"]
    assert done, "no generation log line"
    last = done[-1]
    assert last["prompt_tokens"] == usage.prompt_tokens
    assert last["cached_tokens"] == usage.prompt_tokens_details.cached_tokens
    assert last["completion_tokens"] == usage.completion_tokens
    assert last["ttft_ms"] > 0 and last["prefill_tokens_per_s"] >= 0 and last["decode_tokens_per_s"] >= 0


def test_models_and_check_show_the_bound(server, tmp_path, smollm2_path):
    cards = models(server.url)
    assert cards["small"]["prompt_cache_bytes"] == SMALL_BOUND
    assert cards["uncached"]["prompt_cache_bytes"] == 0
    manifest = write_manifest(tmp_path / "nexa.yaml", [
        {"name": "cached", "source": str(smollm2_path), "nctx": 4096, "prompt_cache": "256MiB"},
        {"name": "default", "source": str(smollm2_path), "nctx": 2048}])
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(manifest)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "prompt_cache 256.0MiB" in shown.stdout and "prompt_cache auto" in shown.stdout


def test_check_refuses_a_prompt_cache_on_a_vision_model(tmp_path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [
        {"name": "vlm", "type": "MULTIMODAL", "source": "/nowhere/m.gguf", "mmproj": "/nowhere/p.gguf",
         "prompt_cache": "64MiB"}])
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(manifest)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 2
    assert "models[0].prompt_cache: only for GGUF text models" in shown.stderr and "Traceback" not in shown.stderr


def rss(server: Server) -> int:
    pids = [server.proc.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(server.proc.pid)],
                                                               capture_output=True, text=True).stdout.split()]
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def test_many_distinct_prompts_stay_within_a_small_bound(client, server):
    def prompt(i: int) -> list[dict]:
        return [{"role": "system", "content": f"Context {i}: " + f"fact {i} is about topic {i * 7}. " * 40},
                {"role": "user", "content": f"What is fact {i}?"}]

    for i in range(3):  # load, and let the engine's buffers reach their size
        chat(client, "small", prompt(100 + i))
    start = rss(server)
    for i in range(20):
        chat(client, "small", prompt(i))
        assert metric(server.url, "nexa_prompt_cache_bytes", model="small") <= SMALL_BOUND
    assert metric(server.url, "nexa_prompt_cache_entries", model="small") >= 2  # it did keep some
    assert rss(server) - start <= SMALL_BOUND + RSS_SLACK


def test_count_tokens_answers_while_a_long_generation_runs(server):
    """Tokenising needs no decode slot: the count does not queue behind a generation on the same model."""
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=240)
    started = threading.Event()
    chunks: list[float] = []

    def generate() -> None:  # greedy counting: a long answer
        prompt = ", ".join(str(i) for i in range(1, 40)) + ","
        with httpx.stream("POST", server.url + "/v1/completions", timeout=240,
                          json={"model": "cached", "prompt": prompt, "max_tokens": 1000, "temperature": 0,
                                "stream": True}) as response:
            for _ in response.iter_lines():
                chunks.append(time.monotonic())
                started.set()

    worker = threading.Thread(target=generate)
    worker.start()
    assert started.wait(120)
    time.sleep(0.5)
    asked = time.monotonic()
    counted = claude.messages.count_tokens(model="cached", messages=[{"role": "user", "content": "Hello there"}])
    answered = time.monotonic()
    worker.join(240)
    assert counted.input_tokens > 0
    assert any(t > answered for t in chunks), "the generation ended before the count: nothing was measured"
    assert answered - asked < 1.0
