"""The model-server protocol's metrics (gateway/observability/model_server.py) on a real gateway.

The real SmolLM2, as `parallel: 1` (solo, the one-request engine) and `parallel: 2` (pair, the
batched engine), under more concurrent streams than slots: the gauges an endpoint picker reads
must have the protocol's types, move with the load (requests waiting while the slots are full,
running equal to the busy slots, KV cells in use while decoding) and come back to idle after.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MODEL = {"source": "smollm2", "nctx": 512, "n_threads": 1, "preload": True}
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # SmolLM2 keeps counting: long streams without asserting words
GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
              "vllm:e2e_request_latency_seconds")
COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens")


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path):
    from tests.conftest import Server

    tmp = tmp_path_factory.mktemp("model-server")
    manifest = write_manifest(tmp / "nexa.yaml", [{"name": "solo", **MODEL},
                                                  {"name": "pair", "parallel": 2, "max_queue": 16, **MODEL}])
    srv = Server(["-c", str(manifest)], tmp)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def scrape(url: str) -> dict[str, tuple[str, dict[tuple, float]]]:
    """name -> (type, {labels as a sorted tuple: value}) of every family /metrics exports."""
    families = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        families[family.name] = (family.type, {(s.name, tuple(sorted(s.labels.items()))): s.value
                                               for s in family.samples})
    return families


def value(families: dict, name: str, model: str, sample: str | None = None) -> float:
    _, samples = families[name]
    return sum(v for (sample_name, labels), v in samples.items()
               if sample_name == (sample or name) and ("model_name", model) in labels)


def stream(client: openai.OpenAI, model: str, max_tokens: int, started: threading.Event | None = None) -> dict:
    usage = None
    for chunk in client.completions.create(model=model, prompt=COUNTING, stream=True, max_tokens=max_tokens,
                                           temperature=0, stream_options={"include_usage": True}):
        if started is not None and chunk.choices and chunk.choices[0].text:
            started.set()
        if chunk.usage:
            usage = chunk.usage
    return {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens}


def in_threads(calls: list) -> tuple[list, list[threading.Thread]]:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    return results, threads


def test_the_protocol_gauges_exist_with_their_types_at_idle(server):
    families = scrape(server.url)
    for name in GAUGES:
        assert families[name][0] == "gauge", name
        for model in ("solo", "pair"):
            assert value(families, name, model) == 0.0, (name, model)  # idle: nothing waits, runs or holds cells
    for name in HISTOGRAMS:
        assert families[name][0] == "histogram", name
    for name in COUNTERS:
        assert families[name][0] == "counter", name
    assert "nexa_queue_depth" in families and "nexa_requests_running" in families  # the nexa_* metrics stay


def test_gauges_follow_the_load_and_return_to_idle(server, client):
    """Six streams on a model of two slots: four wait, two run, their cells are in use; then idle."""
    before = scrape(server.url)
    results, threads = in_threads([lambda: stream(client, "pair", 160) for _ in range(6)])
    seen: dict[str, float] = {"waiting": 0, "running": 0, "kv": 0}
    deadline = time.monotonic() + 240
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        families = scrape(server.url)
        waiting = value(families, "vllm:num_requests_waiting", "pair")
        running = value(families, "vllm:num_requests_running", "pair")
        kv = value(families, "vllm:kv_cache_usage_perc", "pair")
        assert 0 <= running <= 2 and 0.0 <= kv <= 1.0 and waiting >= 0
        if waiting > 0 and running == 2:  # the slots full while others wait: running equals the busy slots
            seen["full"] = seen.get("full", 0) + 1
        seen["running"] = max(seen["running"], running)
        seen["waiting"] = max(seen["waiting"], waiting)
        seen["kv"] = max(seen["kv"], kv)
        time.sleep(0.02)
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    assert seen["waiting"] >= 1 and seen["running"] == 2 and seen.get("full") and seen["kv"] > 0, seen
    after = wait_for(lambda: (f := scrape(server.url)) and value(f, "vllm:num_requests_running", "pair") == 0 and f)
    assert value(after, "vllm:num_requests_waiting", "pair") == 0
    assert value(after, "vllm:kv_cache_usage_perc", "pair") == 0.0  # back to idle (kept prefixes count as free)
    # per-request histograms and token counters counted exactly these six
    count = lambda f, name: value(f, name, "pair", name + "_count")  # noqa: E731
    assert count(after, "vllm:e2e_request_latency_seconds") - count(before, "vllm:e2e_request_latency_seconds") == 6
    assert count(after, "vllm:time_to_first_token_seconds") - count(before, "vllm:time_to_first_token_seconds") == 6
    assert (value(after, "vllm:prompt_tokens", "pair", "vllm:prompt_tokens_total")
            - value(before, "vllm:prompt_tokens", "pair", "vllm:prompt_tokens_total")) == sum(r["prompt"] for r in results)
    generated = sum(r["completion"] for r in results)
    assert (value(after, "vllm:generation_tokens", "pair", "vllm:generation_tokens_total")
            - value(before, "vllm:generation_tokens", "pair", "vllm:generation_tokens_total")) == generated
    tpot = (value(after, "vllm:time_per_output_token_seconds", "pair", "vllm:time_per_output_token_seconds_count")
            - value(before, "vllm:time_per_output_token_seconds", "pair", "vllm:time_per_output_token_seconds_count"))
    assert tpot == sum(1 for r in results if r["completion"] > 1)


def test_one_request_engine_reports_its_cells_while_decoding(server, client):
    """`parallel: 1`: the context's cells in use while a stream decodes, none once it ended."""
    started = threading.Event()
    results, threads = in_threads([lambda: stream(client, "solo", 200, started)])
    assert started.wait(120)
    kv = []
    while threads[0].is_alive():
        families = scrape(server.url)
        kv.append(value(families, "vllm:kv_cache_usage_perc", "solo"))
        if kv[-1] > 0:
            assert value(families, "vllm:num_requests_running", "solo") == 1
        time.sleep(0.02)
    threads[0].join(60)
    if isinstance(results[0], BaseException):
        raise results[0]
    assert max(kv) > 0  # prompt + generated tokens out of nctx=512 cells
    assert max(kv) <= (results[0]["prompt"] + results[0]["completion"]) / 512 + 1e-9
    assert value(scrape(server.url), "vllm:kv_cache_usage_perc", "solo") == 0.0


def test_kv_usage_sums_cells_over_replicas_and_skips_engines_that_cannot_say():
    """Replicas' contexts add up; an engine without `kv_cells` (ONNX, remote, a worker-process proxy
    whose attribute lookups would go to its child) is not asked."""
    from gateway.models.protocol_gauges import kv_usage

    class Cells:
        def __init__(self, used: int, total: int):
            self.cells = (used, total)

        def kv_cells(self) -> tuple[int, int]:
            return self.cells

    class Proxy:
        def __getattr__(self, name):
            raise AssertionError(f"asked the child for {name}")

    assert kv_usage([Cells(100, 1024), Cells(412, 1024)]) == 0.25  # two replicas: 512 of 2048 cells
    assert kv_usage([Cells(0, 512), Proxy()]) == 0.0
    assert kv_usage([Proxy(), object()]) is None  # nothing to export for this model
    assert kv_usage([]) is None
