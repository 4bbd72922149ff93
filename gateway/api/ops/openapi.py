"""GET /openapi.json: this gateway's published contract (gateway/http/openapi.py).

Open like the probes: it names route families and their bodies, never a model
name or a key, and client generators and the playground must be able to read it
before they have a key. `?all=true` lists every route of the gateway, also those
no declared model serves (they answer 404 `route_not_served` here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from gateway.api.common import parse_query
from gateway.api.ops.playground import playground_paths
from gateway.http import openapi
from gateway.http.core import Request, Response, Route, json_response

if TYPE_CHECKING:
    from gateway.api.context import Gateway


class DocumentQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    all: bool = False


async def openapi_document(gw: "Gateway", request: Request) -> Response:
    """The OpenAPI 3.1 document of this gateway's routes."""
    query = parse_query(DocumentQuery, request)
    hidden = playground_paths(gw.manifest.server.playground)
    served = None if query.all else openapi.offered((h.capabilities for h in gw.pool), hidden)
    return json_response(openapi.document(gw.table, served, auth=gw.auth.enabled))


ROUTES = [
    Route("GET", "/openapi.json", None, openapi_document, response=dict, query=DocumentQuery),
]
