"""Ollama's model routes over the manifest: `/api/tags`, `/api/show`, `/api/ps`, `/api/version`,
`/api/pull`, and the clear refusals of `/api/create`, `/api/copy`, `/api/delete`, `/api/push`.

The manifest is the one list of models here. `/api/tags` lists its models (with Ollama's `:latest`
tag; those an API key may not use are left out), `/api/ps` the loaded ones, `/api/show` one of them.
`/api/pull` fetches the files of a model the manifest declares (what `nexa pull` does) and never
adds one it does not; creating, copying, deleting and pushing models are the manifest's business.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from gateway.api.common import parse_body
from gateway.api.ollama.generate import NDJSON_HEADERS, line
from gateway.api.ollama.translate import listed_name, model_name
from gateway.http.core import HTTPError, Request, Response, StreamResponse, json_response
from gateway.http.errors import error_event
from gateway.http.security import allows, check_model, current_key
from gateway.manifest import hub
from gateway.models.handle import ModelHandle
from gateway.models.state import ModelState
from schemas.ollama import OllamaModelRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

# The Ollama API level these routes follow; clients check it before using newer fields (tools, format schemas).
OLLAMA_VERSION = "0.12.0"

# Gateway capability -> Ollama's capability names (`/api/show`).
CAPABILITIES = {"complete": "completion", "chat": "completion", "vision": "vision", "embed": "embedding"}

FOREVER = "9999-12-31T23:59:59Z"  # `expires_at` of a model the manifest keeps loaded (no ttl_s)

_QUANT = re.compile(r"(?i)(?:^|[._-])((?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|F32|BF16)(?=[._-]|$)")


def local_file(handle: ModelHandle) -> Path | None:
    """The model's file in the cache, without downloading (None while it is not fetched)."""
    try:
        return Path(hub.fetch(handle.spec, offline=True))
    except (hub.FetchError, OSError, ValueError):
        return None


def entry(handle: ModelHandle, path: Path | None) -> dict[str, Any]:
    """One model as /api/tags lists it."""
    spec = handle.spec
    stat = path.stat() if path is not None and path.exists() and path.is_file() else None
    size = stat.st_size if stat else handle.size_bytes  # the file on disk, as Ollama's list shows it
    modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc) if stat else datetime.now(timezone.utc)
    name = listed_name(spec.name)
    return {"name": name, "model": name, "modified_at": modified.isoformat().replace("+00:00", "Z"),
            "size": size, "digest": digest(handle), "details": details(handle, path)}


def digest(handle: ModelHandle) -> str:
    """The file's sha256 when the manifest pins it; else a hash of the declared source (Ollama clients
    only compare digests, and this one changes exactly when the manifest points at other weights)."""
    spec = handle.spec
    if spec.sha256:
        return spec.sha256.lower()
    return hashlib.sha256(f"{spec.source}|{spec.file}|{spec.revision}".encode()).hexdigest()


def details(handle: ModelHandle, path: Path | None) -> dict[str, Any]:
    info = engine_info(handle)
    family = str(info.get("architecture") or "")
    named = " ".join(filter(None, [path.name if path else "", handle.spec.source or "", handle.spec.file or ""]))
    quant = _QUANT.search(named)
    return {"parent_model": "", "format": handle.spec.format.value, "family": family,
            "families": [family] if family else None, "parameter_size": "",
            "quantization_level": quant.group(1).upper() if quant else ""}


def engine_info(handle: ModelHandle) -> dict[str, Any]:
    backend = handle.backend if handle.state == ModelState.ready else None
    try:
        return backend.info() if backend is not None else {}
    except Exception:  # noqa: BLE001 - a remote engine's info may fail; the listing does not
        return {}


def visible(gw: "Gateway") -> list[ModelHandle]:
    key = current_key.get()
    return [h for h in gw.pool if allows(key, h.spec.names)]


def declared(gw: "Gateway", name: str) -> ModelHandle:
    """The manifest's model of this Ollama name, or Ollama's 404 (a key's forbidden models are hidden)."""
    handle = gw.pool.get(model_name(gw, name)) if name else None
    if handle is None or not allows(current_key.get(), handle.spec.names):
        raise HTTPError(404, f"model {name!r} not found: this gateway serves the models its manifest declares "
                             f"({', '.join(listed_name(h.name) for h in visible(gw))}).", param="model",
                        code="model_not_found")
    return handle


async def tags(gw: "Gateway", request: Request) -> Response:
    handles = visible(gw)
    paths = await asyncio.to_thread(lambda: [local_file(h) for h in handles])
    return json_response({"models": [entry(h, p) for h, p in zip(handles, paths)]})


async def ps(gw: "Gateway", request: Request) -> Response:
    models = []
    for handle in visible(gw):
        if handle.state != ModelState.ready:
            continue
        path = await asyncio.to_thread(local_file, handle)
        ttl = handle.spec.ttl_s
        if ttl:
            left = max(0.0, ttl - (time.monotonic() - handle.last_used))
            expires = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + left, timezone.utc)
            expires_at = expires.isoformat().replace("+00:00", "Z")
        else:
            expires_at = FOREVER
        gpu = handle.spec.device.value not in ("cpu", "auto")
        # `size` here is what the model holds in memory, as Ollama's ps shows it: the weights plus the
        # bound of its prompt cache (what residency counts)
        models.append({**entry(handle, path), "size": handle.size_bytes or entry(handle, path)["size"],
                       "expires_at": expires_at, "size_vram": handle.size_bytes if gpu else 0,
                       "context_length": handle.spec.nctx})
    return json_response({"models": models})


async def show(gw: "Gateway", request: Request) -> Response:
    body: OllamaModelRequest = parse_body(OllamaModelRequest, request)
    handle = declared(gw, body.target)
    spec = handle.spec
    path = await asyncio.to_thread(local_file, handle)
    info = engine_info(handle)
    arch = str(info.get("architecture") or spec.type.value.lower())
    parameters = [f"num_ctx {spec.nctx}"]
    modelfile = [f"# Declared in the nexa gateway's manifest as {spec.name!r}", f"FROM {spec.source}",
                 *(f"PARAMETER {p}" for p in parameters)]
    if spec.system_prompt:
        modelfile.append(f'SYSTEM """{spec.system_prompt}"""')
    capabilities = sorted({CAPABILITIES[c] for c in handle.capabilities if c in CAPABILITIES})
    if "chat" in handle.capabilities and spec.format.value == "gguf":
        capabilities.append("tools")  # tool calls are grammar-constrained on GGUF engines
    return json_response({
        "modelfile": "\n".join(modelfile) + "\n", "parameters": "\n".join(parameters),
        "template": str(spec.options.get("chat_template") or ""),
        "details": details(handle, path),
        "model_info": {"general.architecture": arch, f"{arch}.context_length": int(info.get("n_ctx") or spec.nctx),
                       "nexa.type": spec.type.value, "nexa.aliases": list(spec.aliases), "nexa.state": handle.state.value},
        "capabilities": capabilities,
        "modified_at": entry(handle, path)["modified_at"],
    })


async def version(gw: "Gateway", request: Request) -> Response:
    return json_response({"version": OLLAMA_VERSION})


async def pull(gw: "Gateway", request: Request) -> Response | StreamResponse:
    """Fetch a declared model's files into the cache (nothing happens to the manifest)."""
    body: OllamaModelRequest = parse_body(OllamaModelRequest, request)
    handle = declared(gw, body.target)
    check_model(handle.spec.names)
    settings = gw.manifest.server

    def fetch() -> None:
        try:
            hub.fetch_model(handle.spec, offline=settings.offline, verify="always")
        except hub.FetchError as exc:
            raise HTTPError(502, str(exc), code="fetch_failed") from None

    if not body.stream:
        await asyncio.to_thread(fetch)
        return json_response({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        yield line({"status": f"pulling and verifying {handle.spec.source}"})
        try:
            await asyncio.to_thread(fetch)
        except Exception as exc:  # noqa: BLE001 - in-band, as Ollama reports a failed pull
            yield error_event(exc, "ollama")
            return
        yield line({"status": "success"})

    return StreamResponse(lines(), headers=dict(NDJSON_HEADERS))


def refusal(action: str, advice: str):
    async def refuse(gw: "Gateway", request: Request) -> Response:
        raise HTTPError(400, f"{action} is not supported: this gateway serves the models its manifest declares. "
                             f"{advice}", code="unsupported_operation")

    refuse.__name__ = refuse.__qualname__ = f"refuse_{action.strip('/').replace('/', '_')}"
    return refuse


create = refusal("/api/create", "Declare the model in the manifest (nexa.yaml, `models:`) and reload.")
copy = refusal("/api/copy", "Give the model another name with `aliases:` in the manifest.")
delete = refusal("/api/delete", "Remove the model from the manifest and reload.")
push = refusal("/api/push", "Models come from the manifest's sources; there is no registry to push to.")
