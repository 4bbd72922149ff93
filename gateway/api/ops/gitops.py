"""GET /admin/manifest: the manifest this gateway serves now, for `nexa plan --against URL`
and for operators checking what a GitOps sync really applied.

It needs an API key whenever keys are configured (it is not an open path), and a
key limited to some models may not read it: the manifest names every model. Secrets
are never shown: API key values, upstream keys and headers are `<redacted>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.core import HTTPError, Request, Response, json_response
from gateway.http.security import current_key
from gateway.manifest.gitops import env_overrides, redact

if TYPE_CHECKING:
    from gateway.api.context import Gateway


async def active_manifest(gw: "Gateway", request: Request) -> Response:
    key = current_key.get()
    if key is not None and key.models is not None:
        raise HTTPError(403, "This API key is limited to some models and may not read the whole manifest.",
                        code="permission_denied")
    headers = {"x-nexa-manifest-hash": gw.manifest_hash, "x-nexa-env-overrides": ",".join(env_overrides()),
               "cache-control": "no-store"}
    return json_response(redact(gw.manifest.model_dump(mode="json")), 200, headers)


ROUTES = [
    ("GET", "/admin/manifest", None, active_manifest),
]
