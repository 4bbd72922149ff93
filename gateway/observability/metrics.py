"""Prometheus metrics. One registry per process (Granian runs one worker)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.observability.model_server import RequestMetrics

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
RERANK_BATCH = Histogram("nexa_rerank_batch_requests", "Rerank requests merged into one engine call",
                         ["model"], registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SPEECH_SECONDS = Counter("nexa_speech_audio_seconds_total", "Seconds of speech synthesized", ["model"],
                         registry=REGISTRY)
# The model-server protocol's per-request metrics (vLLM's names, label model_name); its gauges are
# read from the pool at scrape time (gateway/models/protocol_gauges.py).
MODEL_SERVER = RequestMetrics(REGISTRY)
BACKGROUND_RUNNING = Gauge("nexa_background_responses_running", "Background responses (queued or in progress) "
                           "this process runs", ["model"], registry=REGISTRY)
BACKGROUND_FINISHED = Counter("nexa_background_responses_total", "Background responses this process ran, by "
                              "outcome (completed, incomplete, failed, cancelled)", ["model", "outcome"],
                              registry=REGISTRY)
RELOADS = Counter("nexa_manifest_reloads_total", "Manifest reloads by outcome", ["outcome"], registry=REGISTRY)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
