"""Discovery and health: what is served, and whether it is ready."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http import HTTPError, Request, Response, json_response
from schemas.openai import ModelCard, ModelList

if TYPE_CHECKING:
    from gateway.app import Gateway


async def list_models(gw: "Gateway", request: Request) -> Response:
    cards = [
        ModelCard(id=h.name, created=gw.started, type=h.spec.type.value, format=h.spec.format.value,
                  state=h.state.value, aliases=list(h.spec.aliases), capabilities=sorted(h.capabilities), error=h.error)
        for h in gw.pool
    ]
    return json_response(ModelList(data=cards, manifest_hash=gw.manifest_hash).model_dump(mode="json"))


async def get_model(gw: "Gateway", request: Request) -> Response:
    handle = gw.pool.get(request.path_params["model"])
    if handle is None:
        raise HTTPError(404, f"The model {request.path_params['model']!r} does not exist.", param="model",
                        code="model_not_found")
    card = ModelCard(id=handle.name, created=gw.started, type=handle.spec.type.value, format=handle.spec.format.value,
                     state=handle.state.value, aliases=list(handle.spec.aliases),
                     capabilities=sorted(handle.capabilities), error=handle.error)
    return json_response(card.model_dump(mode="json"))


async def health(gw: "Gateway", request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(gw: "Gateway", request: Request) -> Response:
    models = {h.name: h.state.value for h in gw.pool}
    is_ready = gw.pool.is_ready()
    return json_response({"ready": is_ready, "manifest_hash": gw.manifest_hash, "models": models},
                         200 if is_ready else 503)


ROUTES = [
    ("GET", "/v1/models", None, list_models),
    ("GET", "/v1/models/{model}", None, get_model),
    ("GET", "/health", None, health),
    ("GET", "/ready", None, ready),
]
