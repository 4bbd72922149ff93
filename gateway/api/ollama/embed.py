"""`POST /api/embed` and the older `POST /api/embeddings`, on the gateway's one embeddings path.

Each request becomes the body /v1/embeddings would get and runs as one mergeable job on the
model's thread (gateway/batcher.py: concurrent requests are micro-batched, limits and truncation
are the same). `/api/embed` answers L2-normalized vectors, as Ollama does; `/api/embeddings`
answers the model's raw vector for one prompt, as Ollama's older route did.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.api.common import parse_body, validate
from gateway.api.ollama.translate import model_name
from gateway.api.openai.embeddings import Pending, run_batch
from gateway.http.core import HTTPError, Request, Response, json_response
from schemas.embeddings import EmbeddingRequest
from schemas.ollama import OllamaEmbeddingsRequest, OllamaEmbedRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway


async def embed_once(gw: "Gateway", request: Request, fields: dict[str, Any]) -> dict[str, Any]:
    """The /v1/embeddings answer (as a dict) for these fields, through the model's micro-batcher."""
    body: EmbeddingRequest = validate(EmbeddingRequest, fields)
    handle = gw.select_model(body.model, "embed", request.path)
    item = Pending(body, handle.name, body.inputs())
    return orjson.loads(await handle.call_batched("embed", item, len(item.inputs), run_batch))


async def embed(gw: "Gateway", request: Request) -> Response:
    body: OllamaEmbedRequest = parse_body(OllamaEmbedRequest, request)
    started = time.perf_counter()
    if isinstance(body.input, list) and not body.input:
        raise HTTPError(400, "input is empty; send a string or a list of strings.", param="input",
                        code="invalid_value")
    answer = await embed_once(gw, request, {"model": model_name(gw, body.model), "input": body.input,
                                            "normalize": True, "truncate": body.truncate,
                                            "dimensions": body.dimensions})
    return json_response({"model": body.model, "embeddings": [d["embedding"] for d in answer["data"]],
                          "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
                          "prompt_eval_count": answer["usage"]["prompt_tokens"]})


async def embeddings(gw: "Gateway", request: Request) -> Response:
    body: OllamaEmbeddingsRequest = parse_body(OllamaEmbeddingsRequest, request)
    if not body.prompt:
        return json_response({"embedding": []})  # Ollama answers an empty prompt with an empty vector
    answer = await embed_once(gw, request, {"model": model_name(gw, body.model), "input": body.prompt,
                                            "normalize": False})
    return json_response({"embedding": answer["data"][0]["embedding"]})
