"""POST /v1/rerank and its alias /v1/reranking: a query against documents, best first.

The body and answer are the shape Jina, Cohere, llama-server and LocalAI share
(schemas/rerank.py). Each request is one mergeable job on the model's thread
(gateway/models/batcher.py), as for embeddings: concurrent requests to one
model run as one engine call of all their (query, document) pairs (at most the
model's `embed_batch_max` documents; `embed_batch_wait_ms` bounds the wait,
which happens only under concurrency), then each gets its own scores, order
and usage, what it would get alone. The answer's JSON is built on the model
thread, so the event loop only moves bytes.

Limits: at most `options.max_documents` documents (1000) of at most
`options.max_document_chars` characters (100,000) each, checked before any
tokenizing; beyond them a 400 names the field (`documents`, `documents[3]`,
`query`). Pairs longer than the model's token maximum are cut, not refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from backends.base import Backend
from backends.rerank import RerankBackend, RerankScores
from gateway.api.common import parse_body
from gateway.http.core import Request, Response, Route
from gateway.observability import metrics
from schemas.rerank import RerankRequest, RerankResponse

if TYPE_CHECKING:
    from gateway.api.context import Gateway


@dataclass
class Pending:
    """One request inside a micro-batch."""

    body: RerankRequest
    model_name: str
    documents: list[str]


def build_answer(item: Pending, result: RerankScores) -> bytes:
    """Results best first (ties keep document order), cut to top_n, documents when asked."""
    order = np.argsort(-result.scores, kind="stable")
    if item.body.top_n is not None:
        order = order[:item.body.top_n]
    results: list[dict[str, Any]] = []
    for index in order.tolist():
        entry: dict[str, Any] = {"index": index, "relevance_score": float(result.scores[index])}
        if item.body.return_documents:
            entry["document"] = {"text": item.documents[index]}
        results.append(entry)
    return orjson.dumps({
        "id": f"rerank-{uuid.uuid4().hex}",
        "object": "list",
        "model": item.model_name,
        "results": results,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    })


def run_batch(backend: Backend, items: list[Pending]) -> list[bytes | BaseException]:
    """Runs on the model's thread: every request of the micro-batch in one engine call."""
    results = backend.rerank_many([(item.body.query, item.documents) for item in items])
    metrics.RERANK_BATCH.labels(items[0].model_name).observe(len(items))
    return [result if isinstance(result, BaseException) else build_answer(item, result)
            for item, result in zip(items, results)]


async def rerank(gw: "Gateway", request: Request) -> Response:
    body: RerankRequest = parse_body(RerankRequest, request)
    handle = gw.select_model(body.model, "rerank", request.path)
    item = Pending(body, handle.name, body.texts())
    loaded = handle.current().backend
    if isinstance(loaded, RerankBackend):  # a local engine's limits answer at once, not after the queue
        loaded.check(body.query, item.documents)
    payload = await handle.call_batched("rerank", item, len(item.documents), run_batch)
    return Response(200, {"content-type": "application/json"}, payload)


ROUTES = [
    Route("POST", "/v1/rerank", "rerank", rerank, request=RerankRequest, response=RerankResponse),
    Route("POST", "/v1/reranking", "rerank", rerank, request=RerankRequest, response=RerankResponse),
]
