"""Counters of a batched engine (backends/llama_batch.py), read by /metrics at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class BatchStats:
    """Counters read by /metrics at scrape time (gateway/observability/metrics.py)."""

    running: int = 0
    steps: int = 0
    batch_counts: dict[int, int] = field(default_factory=lambda: {b: 0 for b in BATCH_BUCKETS})
    batch_sum: int = 0  # sequences decoded, summed over steps
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV was already there (prefix reuse)
    requests: int = 0
    prefix_hits: int = 0  # requests that reused at least one token

    def observe_batch(self, size: int) -> None:
        self.steps += 1
        self.batch_sum += size
        for bucket in BATCH_BUCKETS:
            if size <= bucket:
                self.batch_counts[bucket] += 1
                break
