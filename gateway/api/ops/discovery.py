"""Discovery and health: what is served, and whether it is ready."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.core import HTTPError, Request, Response, Route, json_response
from gateway.http.security import allows, current_key
from gateway.models.handle import ModelHandle
from gateway.observability.prompt_cache import caches_of
from gateway.observability.redact import scrub
from schemas.openai import ModelCard, ModelList
from schemas.ops import Health, Readiness

if TYPE_CHECKING:
    from gateway.api.context import Gateway


def card(gw: "Gateway", handle: ModelHandle) -> ModelCard:
    return ModelCard(id=handle.name, created=gw.started, type=handle.spec.type.value, format=handle.spec.format.value,
                     state=handle.state.value, aliases=list(handle.spec.aliases),
                     capabilities=sorted(handle.capabilities), error=scrub(handle.error) if handle.error else None,
                     replicas=handle.spec.replicas, parallel=handle.spec.parallel, queue_depth=handle.queue_depth(),
                     running=handle.running, load_seconds=handle.load_seconds,
                     sampling=sampling_defaults(handle), **prompt_cache_fields(handle))


def sampling_defaults(handle: ModelHandle) -> dict | None:
    """The manifest's `sampling:`, only the fields it sets (None: the request's own or the engine's)."""
    defaults = getattr(handle.spec, "sampling", None)
    return (defaults.model_dump(exclude_none=True) or None) if defaults is not None else None


def prompt_cache_fields(handle: ModelHandle) -> dict:
    """GGUF text models: the prompt cache's bound (the manifest's, else the loaded engine's default) and use."""
    cache = next(iter(caches_of(handle)), None)
    declared = getattr(handle.spec, "prompt_cache", None)
    bound = declared if declared is not None else (cache.capacity if cache else None)
    if bound is None and cache is None:
        return {}
    return {"prompt_cache_bytes": int(bound) if bound is not None else None,
            "prompt_cache_used_bytes": cache.bytes if cache is not None else None}


async def list_models(gw: "Gateway", request: Request) -> Response:
    key = current_key.get()
    cards = [card(gw, h) for h in gw.pool if allows(key, h.spec.names)]
    return json_response(ModelList(data=cards, manifest_hash=gw.manifest_hash).model_dump(mode="json"))


async def get_model(gw: "Gateway", request: Request) -> Response:
    handle = gw.pool.get(request.path_params["model"])
    if handle is None or not allows(current_key.get(), handle.spec.names):
        raise HTTPError(404, f"The model {request.path_params['model']!r} does not exist.", param="model",
                        code="model_not_found")
    return json_response(card(gw, handle).model_dump(mode="json"))


async def health(gw: "Gateway", request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(gw: "Gateway", request: Request) -> Response:
    models = {h.name: h.state.value for h in gw.pool}
    is_ready = gw.pool.is_ready()
    return json_response({"ready": is_ready, "manifest_hash": gw.manifest_hash, "models": models},
                         200 if is_ready else 503)


ROUTES = [
    Route("GET", "/v1/models", None, list_models, response=ModelList),
    Route("GET", "/v1/models/{model:path}", None, get_model, response=ModelCard),
    Route("GET", "/health", None, health, response=Health),
    Route("GET", "/ready", None, ready, response={200: Readiness, 503: Readiness}),
]
