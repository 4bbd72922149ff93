"""POST /v1/embeddings: the original Nexa body and OpenAI's, one handler.

Each request is one mergeable job on the model's thread (gateway/models/batcher.py):
concurrent requests to one model are merged into one engine call (at most the
model's `embed_batch_max` inputs; `embed_batch_wait_ms` bounds the wait for
companions, which happens only under concurrency), then split back. Each
request is checked, truncated, counted, normalized, shortened and encoded on
its own, so its answer and usage are what it would get alone, whatever it was
merged with. The answer's JSON is built on the model thread too, so the event
loop only moves bytes.

Choices, for clients of both servers:
- `normalize` defaults to false (SERVER-API.md), or to the model's
  `options.normalize`; with `dimensions` it defaults to true, because a
  shortened vector is only useful re-normalized (what OpenAI does).
- `dimensions` keeps the first N components (Matryoshka-style, as OpenAI's
  text-embedding-3 models); more than the model has is a 400.
- `encoding_format: float` writes each component in its shortest float32 form
  (the engine's precision; half the bytes of float64 reprs); `base64` is the
  little-endian float32 bytes of each vector, base64-encoded; the openai SDK
  asks for it by default and decodes it.
- `truncate: true` (the default) cuts over-long inputs to the model's maximum;
  `false` answers 400 naming the input and its length.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from backends.base import Backend
from backends.embeddings import EmbedResult, l2_normalize
from gateway.api.common import parse_body
from gateway.http.core import HTTPError, Request, Response, Route
from gateway.observability import metrics
from schemas.embeddings import EmbeddingRequest, EmbeddingResponse

if TYPE_CHECKING:
    from gateway.api.context import Gateway


@dataclass
class Pending:
    """One request inside a micro-batch."""

    body: EmbeddingRequest
    model_name: str
    inputs: list


def encode_vector(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """base64 of little-endian float32, or the float32 array itself (orjson writes its shortest form)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vector, dtype=np.float32)


def build_answer(backend: Backend, body: EmbeddingRequest, model_name: str, result: EmbedResult) -> bytes:
    """One request's answer from its raw (unnormalized) vectors: shorten, normalize, encode."""
    normalize = body.normalize
    if normalize is None:
        normalize = True if body.dimensions else getattr(backend, "default_normalize", False)
    vectors = result.vectors
    if body.dimensions:
        vectors = vectors[:, :body.dimensions]
    if normalize:
        vectors = l2_normalize(vectors)
    answer: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": encode_vector(vector, body.encoding_format)}
                 for index, vector in enumerate(vectors)],
        "model": model_name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def dimensions_error(item: Pending, width: int) -> HTTPError | None:
    """A 400 when the request asks for more dimensions than the model's `width` (0: not known yet)."""
    if item.body.dimensions and width and item.body.dimensions > width:
        return HTTPError(400, f"dimensions is {item.body.dimensions}, but model {item.model_name!r} makes vectors of "
                              f"{width} dimensions.", param="dimensions", code="invalid_value")
    return None


def run_batch(backend: Backend, items: list[Pending]) -> list[bytes | BaseException]:
    """Runs on the model's thread: every request of the micro-batch in one engine call
    (backends without `embed_many`, such as remote ones, embed each request in turn)."""
    outcomes: list[bytes | BaseException | None] = [dimensions_error(item, getattr(backend, "dim", 0))
                                                         for item in items]
    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    requests = [(items[i].inputs, items[i].body.truncate) for i in todo]
    embed_many = getattr(backend, "embed_many", None)
    if embed_many is not None:
        results = embed_many(requests) if requests else []
    else:
        results = [_alone(backend, inputs, truncate) for inputs, truncate in requests]
    if todo:
        metrics.EMBED_BATCH.labels(items[0].model_name).observe(len(todo))
        metrics.EMBED_BATCH_INPUTS.labels(items[0].model_name).observe(sum(len(r[0]) for r in requests))
    for i, result in zip(todo, results):
        item = items[i]
        if isinstance(result, BaseException):
            outcomes[i] = result
            continue
        outcomes[i] = (dimensions_error(item, result.vectors.shape[1])  # engines whose width shows only now
                       or build_answer(backend, item.body, item.model_name, result))
    return outcomes


def _alone(backend: Backend, inputs: list, truncate: bool) -> EmbedResult | BaseException:
    try:
        return backend.embed(inputs, normalize=False, truncate=truncate)
    except Exception as exc:  # noqa: BLE001 - this request's failure (e.g. an upstream's), not its batch-mates'
        return exc


async def embeddings(gw: "Gateway", request: Request) -> Response:
    body: EmbeddingRequest = parse_body(EmbeddingRequest, request)
    handle = gw.select_model(body.model, "embed", request.path)
    item = Pending(body, handle.name, body.inputs())
    payload = await handle.call_batched("embed", item, len(item.inputs), run_batch)
    return Response(200, {"content-type": "application/json"}, payload)


ROUTES = [
    Route("POST", "/v1/embeddings", "embed", embeddings, request=EmbeddingRequest, response=EmbeddingResponse),
]
