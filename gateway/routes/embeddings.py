"""POST /v1/embeddings: the original Nexa body and OpenAI's, one handler.

The whole request is one job on the model's thread: the backend embeds every
input in one engine call, and the answer (including its JSON encoding, which
for 2048 x 1024 floats is not free) is built there too, so the event loop only
moves bytes.

Choices, for clients of both servers:
- `normalize` defaults to false (SERVER-API.md), or to the model's
  `options.normalize`; with `dimensions` it defaults to true, because a
  shortened vector is only useful re-normalized (what OpenAI does).
- `dimensions` keeps the first N components (Matryoshka-style, as OpenAI's
  text-embedding-3 models); more than the model has is a 400.
- `encoding_format: base64` is the little-endian float32 bytes of each vector,
  base64-encoded; the openai SDK asks for it by default and decodes it.
- `truncate: true` (the default) cuts over-long inputs to the model's maximum;
  `false` answers 400 naming the input and its length.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.embeddings import EmbeddingBackend, l2_normalize
from gateway.http import HTTPError, Request, Response
from gateway.routes.common import parse_body
from schemas.embeddings import EmbeddingRequest

if TYPE_CHECKING:
    from gateway.app import Gateway


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def build_answer(backend: EmbeddingBackend, body: EmbeddingRequest, model_name: str) -> bytes:
    """Runs on the model's thread: embed, shorten, normalize, encode."""
    normalize = body.normalize
    if normalize is None:
        normalize = True if body.dimensions else getattr(backend, "default_normalize", False)
    result = backend.embed(body.inputs(), normalize=normalize and not body.dimensions, truncate=body.truncate)
    vectors = result.vectors
    if body.dimensions:
        if body.dimensions > vectors.shape[1]:
            raise HTTPError(400, f"dimensions is {body.dimensions}, but model {model_name!r} makes vectors of "
                                 f"{vectors.shape[1]} dimensions.", param="dimensions", code="invalid_value")
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
    return json.dumps(answer, separators=(",", ":")).encode("utf-8")


async def embeddings(gw: "Gateway", request: Request) -> Response:
    body: EmbeddingRequest = parse_body(EmbeddingRequest, request)
    handle = gw.select_model(body.model, "embed", request.path)
    payload = await handle.call(lambda backend: build_answer(backend, body, handle.name))
    return Response(200, {"content-type": "application/json"}, payload)


ROUTES = [
    ("POST", "/v1/embeddings", "embed", embeddings),
]
