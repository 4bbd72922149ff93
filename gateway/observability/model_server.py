"""The model-server protocol: the metrics an inference-aware load balancer reads, under vLLM's names.

The Gateway API Inference Extension's endpoint picker (EPP), KEDA queries and vLLM dashboards read
three per-model gauges, labelled `model_name` as vLLM labels them, to pick the replica with the
shortest queue and the most free KV cache:

- `vllm:num_requests_waiting`: requests admitted but not yet running (in the model's queue, or
  waiting for the model to load) - `ModelHandle.queue_depth()`.
- `vllm:num_requests_running`: requests a replica is generating for - `ModelHandle.running`; at most
  the model's slots (`replicas × parallel`).
- `vllm:kv_cache_usage_perc`: the fraction (0-1) of the model's KV cells that running requests hold:
  cells in use summed over every replica's context, divided by all their cells (`replicas ×
  parallel × nctx`). A sequence's cells count from its prompt's first token to its last generated
  one. Cells that only keep a finished request's prompt for prefix reuse count as free (the next
  request may take them at no cost, as vLLM counts its cached blocks), and so does a host-memory
  prompt cache: it is RAM outside the context, and a restored prompt counts once a running request
  holds it again. Only engines that can say (llama.cpp's, `kv_cells()`) export it.

All three are read from the model handles at scrape time, so they cannot drift from the truth and a
scrape costs a few attribute reads per model. The per-request histograms and counters (time to first
token, time per output token, end-to-end latency, prompt and generation tokens) are observed by the
chat core when a request finishes (`observe_request`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from gateway.models.pool import ModelPool

LABEL = "model_name"
# vLLM's buckets, so dashboards built for vLLM read these unchanged
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


class RequestMetrics:
    """The per-request histograms and token counters, registered once in the process's registry."""

    def __init__(self, registry: CollectorRegistry):
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time from request to the first generated token",
                              [LABEL], registry=registry, buckets=TTFT_BUCKETS)
        self.tpot = Histogram("vllm:time_per_output_token_seconds",
                              "Mean time between output tokens of a request (decode time / (tokens - 1))",
                              [LABEL], registry=registry, buckets=TPOT_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Time from request to its last token",
                             [LABEL], registry=registry, buckets=LATENCY_BUCKETS)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Time a request waited for a free slot",
                               [LABEL], registry=registry, buckets=LATENCY_BUCKETS)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed", [LABEL], registry=registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated", [LABEL], registry=registry)
        self.success = Counter("vllm:request_success", "Requests that finished, by finish reason",
                               [LABEL, "finished_reason"], registry=registry)

    def observe(self, model: str, *, ttft: float | None, e2e: float, prompt_tokens: int, generation_tokens: int,
                finish_reason: str | None = None, queued: float | None = None) -> None:
        """One finished generation (streamed or not). `ttft` None: no token came out."""
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
            if generation_tokens > 1:
                self.tpot.labels(model).observe(max(0.0, e2e - ttft) / (generation_tokens - 1))
        self.e2e.labels(model).observe(e2e)
        if queued is not None:
            self.queue.labels(model).observe(queued)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(generation_tokens)
        if finish_reason:
            self.success.labels(model, finish_reason).inc()


def kv_usage(backends: Iterable) -> float | None:
    """Cells in use / cells over a model's replicas; None when no replica's engine can say."""
    used = total = 0
    known = False
    for backend in list(backends):
        cells = getattr(type(backend), "kv_cells", None)  # on the class: a worker proxy's getattr would ask its child
        if cells is None:
            continue
        u, t = cells(backend)
        used, total, known = used + u, total + t, True
    if not known:
        return None
    return min(1.0, used / total) if total else 0.0


class ModelServerCollector:
    """The three gauges of the model-server protocol, read from the pool at scrape time."""

    def __init__(self, pool: "ModelPool"):
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("vllm:num_requests_waiting",
                                    "Requests waiting for a slot of the model (queued or waiting for its load)",
                                    labels=[LABEL])
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests the model is generating for",
                                    labels=[LABEL])
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc",
                               "Fraction (0-1) of the model's KV cells held by running requests, over its replicas",
                               labels=[LABEL])
        for handle in self.pool:
            waiting.add_metric([handle.name], handle.queue_depth())
            running.add_metric([handle.name], handle.running)
            usage = kv_usage(handle.backends)
            if usage is not None:
                kv.add_metric([handle.name], usage)
        yield from (waiting, running, kv)

