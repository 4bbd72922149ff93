"""Prometheus metrics. One registry per process (Granian runs one worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from gateway.app import Gateway

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("nexa_requests_total", "HTTP requests by route, model and status",
                   ["route", "model", "status"], registry=REGISTRY)
LATENCY = Histogram("nexa_request_seconds", "Time to the full answer (streams: to the last byte)", ["route"],
                    registry=REGISTRY, buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
TTFT = Histogram("nexa_time_to_first_token_seconds", "Time from request to the first generated token", ["model"],
                 registry=REGISTRY, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
TOKENS = Counter("nexa_generated_tokens_total", "Tokens generated", ["model"], registry=REGISTRY)
PROMPT_TOKENS = Counter("nexa_prompt_tokens_total", "Prompt tokens processed", ["model"], registry=REGISTRY)
LOADS = Counter("nexa_model_loads_total", "Model loads by outcome", ["model", "outcome"], registry=REGISTRY)
UNLOADS = Counter("nexa_model_unloads_total", "Model unloads by reason", ["model", "reason"], registry=REGISTRY)
LOAD_SECONDS = Histogram("nexa_model_load_seconds", "Model load duration", ["model"], registry=REGISTRY,
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
EMBED_BATCH = Histogram("nexa_embedding_batch_requests", "Embedding requests merged into one engine call",
                        ["model"], registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
EMBED_BATCH_INPUTS = Histogram("nexa_embedding_batch_inputs", "Inputs (texts or token lists) per embedding engine call",
                               ["model"], registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048))
RELOADS = Counter("nexa_manifest_reloads_total", "Manifest reloads by outcome", ["outcome"], registry=REGISTRY)


class PoolCollector:
    """Gauges read from the pool at scrape time, so they can never drift from the truth."""

    def __init__(self) -> None:
        self.gateway: "Gateway | None" = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gw = self.gateway
        queue = GaugeMetricFamily("nexa_queue_depth", "Requests waiting for a model", labels=["model"])
        running = GaugeMetricFamily("nexa_requests_running", "Requests being generated", labels=["model"])
        loaded = GaugeMetricFamily("nexa_model_loaded", "1 if the model is loaded", labels=["model", "state"])
        count = GaugeMetricFamily("nexa_loaded_models", "Models loaded or loading")
        if gw is not None and gw.pool is not None:
            for handle in gw.pool:
                queue.add_metric([handle.name], handle.queue_depth())
                running.add_metric([handle.name], handle.running)
                loaded.add_metric([handle.name, handle.state.value], 1 if handle.state.value == "ready" else 0)
            count.add_metric([], len(gw.pool.loaded()))
        yield from (queue, running, loaded, count)


POOL = PoolCollector()
REGISTRY.register(POOL)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
