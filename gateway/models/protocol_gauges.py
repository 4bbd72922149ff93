"""The model-server protocol's gauges, read from the model handles at scrape time.

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

Read at scrape time, they cannot drift from the truth, and a scrape costs a few attribute reads per
model (`bench/fleet.py --scrape`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily

from gateway.observability.model_server import LABEL

if TYPE_CHECKING:
    from gateway.models.pool import ModelPool


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

