"""The model-server protocol's per-request metrics, under vLLM's names (label `model_name`).

Time to first token, time per output token (a request's mean gap between tokens), end-to-end
latency, time in the queue, prompt and generation tokens and finished requests, observed by the chat
core when a generation ends and by the model's replica thread when it takes a job. vLLM's buckets,
so dashboards and autoscaler queries built for vLLM read them unchanged. The gauges of the protocol
(requests waiting and running, KV-cache use) are read from the models at scrape time:
gateway/models/protocol_gauges.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
