"""The Ollama API's routes (gateway/api/ollama/__init__.py says what the package does)."""

from __future__ import annotations

from gateway.api.ollama import embed, generate, models
from gateway.http.core import Route
from schemas.ollama import (
    OllamaChatRequest,
    OllamaChatResponse,
    OllamaEmbeddingsRequest,
    OllamaEmbeddingsResponse,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaError,
    OllamaGenerateRequest,
    OllamaGenerateResponse,
    OllamaModelRequest,
    OllamaRunning,
    OllamaShowResponse,
    OllamaStatus,
    OllamaTags,
    OllamaVersion,
)

ERROR_STYLE = "ollama"  # gateway/http/errors.py: {"error": message}, and one such NDJSON line mid-stream

NDJSON = "application/x-ndjson"


def _streamed(answer: type) -> dict[str, type | None]:
    """One JSON object (`stream: false`), or newline-delimited objects of the same shape (the default)."""
    return {"application/json": answer, NDJSON: answer}


ROUTES = [
    Route("POST", "/api/chat", "chat", generate.chat, request=OllamaChatRequest,
          response=_streamed(OllamaChatResponse), error=OllamaError),
    Route("POST", "/api/generate", "chat", generate.generate, request=OllamaGenerateRequest,
          response=_streamed(OllamaGenerateResponse), error=OllamaError),
    Route("POST", "/api/embed", "embed", embed.embed, request=OllamaEmbedRequest, response=OllamaEmbedResponse,
          error=OllamaError),
    Route("POST", "/api/embeddings", "embed", embed.embeddings, request=OllamaEmbeddingsRequest,
          response=OllamaEmbeddingsResponse, error=OllamaError),
    Route("GET", "/api/tags", None, models.tags, response=OllamaTags, error=OllamaError),
    Route("GET", "/api/ps", None, models.ps, response=OllamaRunning, error=OllamaError),
    Route("POST", "/api/show", None, models.show, request=OllamaModelRequest, response=OllamaShowResponse,
          error=OllamaError),
    Route("GET", "/api/version", None, models.version, response=OllamaVersion, error=OllamaError),
    Route("POST", "/api/pull", None, models.pull, request=OllamaModelRequest, response=_streamed(OllamaStatus),
          error=OllamaError),
    Route("POST", "/api/create", None, models.create, error=OllamaError),
    Route("POST", "/api/copy", None, models.copy, error=OllamaError),
    Route("DELETE", "/api/delete", None, models.delete, error=OllamaError),
    Route("POST", "/api/push", None, models.push, error=OllamaError),
]
