"""What the prompt cache (backends/prompt_cache.py) shows: /metrics families read at scrape time, and
the per-request log line with token counts and timings (llama.cpp's server prints these per request).

A model's replicas share one cache, so each cache is counted once per model.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("nexa.generation")


def caches_of(handle: Any) -> list[Any]:
    """The distinct PromptCaches of a model's loaded engines (replicas share one)."""
    return engine_caches(list(getattr(handle, "backends", []) or []))


def engine_caches(backends: list[Any]) -> list[Any]:
    """The distinct PromptCaches of these engines (those with `prompt_cache()`; replicas share one)."""
    seen: dict[int, Any] = {}
    for backend in backends:
        get = getattr(backend, "prompt_cache", None)
        cache = get() if callable(get) else None
        if cache is not None:
            seen[id(cache)] = cache
    return list(seen.values())


def cache_metrics(handles: Iterable[Any]) -> Iterator[Any]:
    """Gauges of entries and bytes per model, counters of hits, misses, tokens restored and prefilled."""
    entries = GaugeMetricFamily("nexa_prompt_cache_entries", "Prompt states held in the host-memory prompt cache",
                                labels=["model"])
    size = GaugeMetricFamily("nexa_prompt_cache_bytes", "Bytes of prompt states held (at most the capacity)",
                             labels=["model"])
    capacity = GaugeMetricFamily("nexa_prompt_cache_capacity_bytes", "The prompt cache's bound (manifest "
                                 "prompt_cache; 0: disabled)", labels=["model"])
    hits = CounterMetricFamily("nexa_prompt_cache_hits", "Requests whose prompt prefix was restored from the cache",
                               labels=["model"])
    misses = CounterMetricFamily("nexa_prompt_cache_misses", "Requests that prefilled a long prompt part with "
                                 "nothing to restore", labels=["model"])
    restored = CounterMetricFamily("nexa_prompt_cache_restored_tokens", "Prompt tokens taken from restored states",
                                   labels=["model"])
    reused = CounterMetricFamily("nexa_prompt_cache_reused_tokens", "Prompt tokens a live sequence still held",
                                 labels=["model"])
    prefilled = CounterMetricFamily("nexa_prompt_cache_prefilled_tokens", "Prompt tokens evaluated (prefilled)",
                                    labels=["model"])
    for handle in handles:
        caches = caches_of(handle)
        if not caches:
            continue
        name = [handle.name]
        entries.add_metric(name, sum(len(c) for c in caches))
        size.add_metric(name, sum(c.bytes for c in caches))
        capacity.add_metric(name, sum(c.capacity for c in caches))
        hits.add_metric(name, sum(c.stats.hits for c in caches))
        misses.add_metric(name, sum(c.stats.misses for c in caches))
        restored.add_metric(name, sum(c.stats.restored_tokens for c in caches))
        reused.add_metric(name, sum(c.stats.reused_tokens for c in caches))
        prefilled.add_metric(name, sum(c.stats.prefilled_tokens for c in caches))
    yield from (entries, size, capacity, hits, misses, restored, reused, prefilled)


def log_abandoned(model: str, request_id: str | None, route: str | None, deltas: int, ttft_s: float | None,
                  elapsed_s: float) -> None:
    """The line of a generation that ended before its last token (the client left, or the stream broke): its
    usage never came, so it says how far it got; without it a cancelled stream left no trace in the log."""
    log.info("generation %s abandoned after %d deltas (%.1f s)", model, deltas, elapsed_s,
             extra={"event": "generation", "request_id": request_id, "model": model, "route": route,
                    "finish_reason": "abandoned", "streamed_deltas": deltas,
                    "ttft_ms": round((ttft_s or 0.0) * 1000, 1), "elapsed_ms": round(elapsed_s * 1000, 1)})


def log_generation(model: str, request_id: str | None, route: str | None, usage: Any, ttft_s: float | None,
                   finish_reason: str | None = None) -> None:
    """One JSON line per generation when it ends (a stream's request line is written when its headers go out,
    before these numbers exist): tokens, cached tokens, time to first token, prefill and decode speed."""
    prompt, cached = usage.prompt_tokens, getattr(usage, "cached_tokens", 0)
    prefill_s, decode_s = getattr(usage, "prefill_seconds", 0.0), getattr(usage, "decode_seconds", 0.0)
    evaluated = prompt - cached
    log.info("generation %s: %d prompt tokens (%d cached), %d generated", model, prompt, cached,
             usage.completion_tokens,
             extra={"event": "generation", "request_id": request_id, "model": model, "route": route,
                    "finish_reason": finish_reason, "prompt_tokens": prompt, "cached_tokens": cached, "completion_tokens": usage.completion_tokens,
                    "ttft_ms": round((ttft_s or 0.0) * 1000, 1),
                    "prefill_tokens_per_s": round(evaluated / prefill_s, 1) if prefill_s > 0 and evaluated else 0.0,
                    "decode_tokens_per_s": round((usage.completion_tokens - 1) / decode_s, 1)
                    if decode_s > 0 and usage.completion_tokens > 1 else 0.0})
