"""The pool's gauges for /metrics, read at scrape time from the handles (so they never drift
from the truth) and registered in the process's metrics registry by the pool's owner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from gateway.models.protocol_gauges import ModelServerCollector
from gateway.observability.metrics import REGISTRY
from gateway.observability.prompt_cache import cache_metrics

if TYPE_CHECKING:
    from gateway.models.pool import ModelPool


class PoolCollector:
    """Gauges read from the pool at scrape time, so they can never drift from the truth."""

    def __init__(self, pool: "ModelPool") -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily("nexa_queue_depth", "Requests waiting for a model", labels=["model"])
        running = GaugeMetricFamily("nexa_requests_running", "Requests being generated", labels=["model"])
        loaded = GaugeMetricFamily("nexa_model_loaded", "1 if the model is loaded", labels=["model", "state"])
        count = GaugeMetricFamily("nexa_loaded_models", "Models loaded or loading")
        for handle in self.pool:
            queue.add_metric([handle.name], handle.queue_depth())
            running.add_metric([handle.name], handle.running)
            loaded.add_metric([handle.name, handle.state.value], 1 if handle.state.value == "ready" else 0)
        count.add_metric([], len(self.pool.loaded()))
        yield from (queue, running, loaded, count)
        yield from batch_metrics(self.pool)
        yield from cache_metrics(self.pool)


def batch_metrics(pool) -> Iterator:
    """Continuous batching (`parallel: N`): sequences running, sequences per decode step, prefix reuse.
    Summed over a model's replicas; only models whose engines keep `batch_stats()`."""
    running = GaugeMetricFamily("nexa_batch_running_sequences", "Sequences in a batched engine's slots",
                                labels=["model"])
    sizes = HistogramMetricFamily("nexa_batch_size", "Sequences decoded together in one llama_decode step",
                                  labels=["model"])
    prompt = CounterMetricFamily("nexa_prefix_cache_prompt_tokens", "Prompt tokens of batched requests",
                                 labels=["model"])
    reused = CounterMetricFamily("nexa_prefix_cache_reused_tokens",
                                 "Prompt tokens whose KV a slot already held (prefix reuse): not evaluated again",
                                 labels=["model"])
    hits = CounterMetricFamily("nexa_prefix_cache_requests", "Batched requests by prefix reuse outcome",
                               labels=["model", "outcome"])
    ratio = GaugeMetricFamily("nexa_prefix_cache_hit_ratio", "Reused prompt tokens / prompt tokens", labels=["model"])
    for handle in pool:
        stats = [b.batch_stats() for b in list(handle.backends) if hasattr(b, "batch_stats")]
        if not stats:
            continue
        name = handle.name
        running.add_metric([name], sum(s.running for s in stats))
        buckets, total = [], 0
        for bound in stats[0].batch_counts:
            total += sum(s.batch_counts[bound] for s in stats)
            buckets.append((str(float(bound)), total))
        buckets.append(("+Inf", total))
        sizes.add_metric([name], buckets, sum(s.batch_sum for s in stats))
        n_prompt, n_reused = sum(s.prompt_tokens for s in stats), sum(s.reused_tokens for s in stats)
        n_requests, n_hits = sum(s.requests for s in stats), sum(s.prefix_hits for s in stats)
        prompt.add_metric([name], n_prompt)
        reused.add_metric([name], n_reused)
        hits.add_metric([name, "hit"], n_hits)
        hits.add_metric([name, "miss"], n_requests - n_hits)
        ratio.add_metric([name], n_reused / n_prompt if n_prompt else 0.0)
    yield from (running, sizes, prompt, reused, hits, ratio)


_pool_collectors: list = []


def observe_pool(pool: "ModelPool") -> None:
    """Register the serving pool's gauges, the nexa_* ones and the model-server protocol's
    (one pool per process; a newer one replaces the last)."""
    for collector in _pool_collectors:
        REGISTRY.unregister(collector)
    _pool_collectors[:] = [PoolCollector(pool), ModelServerCollector(pool)]
    for collector in _pool_collectors:
        REGISTRY.register(collector)
