"""Image routes: Nexa's /v1/txt2img and /v1/img2img, OpenAI's /v1/images/generations, and the
GET route that serves the PNGs the gateway wrote.

Generation, PNG encoding and file writes run on the model's own thread (`handle.call`);
input images are read and decoded in a worker thread; the event loop only parses and answers.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import TYPE_CHECKING, Any, Callable

from backends.diffusion import ImageParams
from gateway.api.common import parse_body
from gateway.http.core import HTTPError, Request, Response, Route, json_response
from gateway.media.inputs import load_input
from gateway.media.output import ImageStore, png_bytes
from schemas.images import (
    MAX_SIDE,
    ImageGenerationRequest,
    Img2ImgRequest,
    NexaImage,
    NexaImageResponse,
    OpenAIImage,
    OpenAIImageResponse,
    Txt2ImgRequest,
)

if TYPE_CHECKING:
    from gateway.api.context import Gateway

FILES_PATH = "/v1/images/files"
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def _store(gw: "Gateway") -> ImageStore:
    return ImageStore(gw.manifest.server.image_output_dir, gw.manifest.server.image_output_keep)


def _file_url(gw: "Gateway", request: Request, name: str) -> str:
    """Where this gateway serves `name`: under `server.public_url` when the manifest names it;
    else as the client reached it (its Host header), and through a proxy's X-Forwarded-Proto and
    X-Forwarded-Host only when `server.trust_forwarded_headers` says a proxy sets them (any
    client can send them)."""
    server = gw.manifest.server
    if server.public_url:
        return f"{server.public_url.rstrip('/')}{FILES_PATH}/{name}"
    headers = request.headers
    scheme, host = "http", headers.get("host", "")
    if server.trust_forwarded_headers:
        # A chain of proxies appends: the first value is what the client used.
        host = _first(headers.get("x-forwarded-host")) or host
        forwarded = _first(headers.get("x-forwarded-proto")).lower()
        scheme = forwarded if forwarded in ("http", "https") else scheme
    if not _HOST.match(host):
        host = f"{server.host}:{server.port}"
    return f"{scheme}://{host}{FILES_PATH}/{name}"


def _first(value: str | None) -> str:
    return (value or "").split(",")[0].strip()


def _params(body: Any, request: Request, width: int, height: int, **extra: Any) -> ImageParams:
    return ImageParams(prompt=body.prompt, negative_prompt=body.negative_prompt or "", width=width, height=height,
                       steps=body.sample_steps, cfg_scale=body.cfg_scale, seed=body.seed,
                       request_id=request.state.get("request_id"), **extra)


def _render(params: ImageParams, store: ImageStore | None) -> Callable[[Any], list[dict[str, Any]]]:
    """The work for the model thread: generate, encode PNG and base64, save if asked."""

    def work(backend: Any) -> list[dict[str, Any]]:
        results = []
        for generated in backend.generate(params):
            png = png_bytes(generated.image)
            results.append({
                "b64": base64.b64encode(png).decode("ascii"),
                "name": store.save(png) if store is not None else None,
                "seed": generated.seed,
                "size": generated.image.size,
            })
        return results

    return work


def _headers(results: list[dict[str, Any]]) -> dict[str, str]:
    width, height = results[0]["size"]
    return {"x-image-seed": str(results[0]["seed"]), "x-image-size": f"{width}x{height}"}


async def txt2img(gw: "Gateway", request: Request) -> Response:
    body = parse_body(Txt2ImgRequest, request)
    if body.image_path:
        raise HTTPError(400, "image_path is the input image of /v1/img2img; /v1/txt2img takes none.",
                        param="image_path", code="invalid_value")
    handle = gw.select_model(body.model, "txt2img", request.path)
    store = _store(gw)
    results = await handle.call(_render(_params(body, request, body.width, body.height), store))
    response = NexaImageResponse(created=time.time(), data=[
        NexaImage(base64=r["b64"], url=_file_url(gw, request, r["name"])) for r in results])
    return json_response(response.model_dump(), headers=_headers(results))


def _fit(image_size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """Missing sides follow the input image's aspect ratio, within MAX_SIDE."""
    iw, ih = image_size
    if width is None and height is None:
        scale = min(1.0, MAX_SIDE / max(iw, ih))
        width, height = round(iw * scale), round(ih * scale)
    elif width is None:
        width = round(height * iw / ih)
    elif height is None:
        height = round(width * ih / iw)
    return max(1, min(MAX_SIDE, width)), max(1, min(MAX_SIDE, height))


async def img2img(gw: "Gateway", request: Request) -> Response:
    body = parse_body(Img2ImgRequest, request)
    if bool(body.image) == bool(body.image_path):
        raise HTTPError(400, "Send the input image as exactly one of `image` (base64 or a data URL) and "
                             "`image_path` (a file in the manifest's server.image_input_dirs).",
                        param="image", code="invalid_value")
    handle = gw.select_model(body.model, "img2img", request.path)
    image = await asyncio.to_thread(load_input, body.image, body.image_path, gw.manifest.server)
    width, height = _fit(image.size, body.width, body.height)
    params = _params(body, request, width, height, init_image=image, strength=body.strength)
    store = _store(gw)
    results = await handle.call(_render(params, store))
    response = NexaImageResponse(created=time.time(), data=[
        NexaImage(base64=r["b64"], url=_file_url(gw, request, r["name"])) for r in results])
    return json_response(response.model_dump(), headers=_headers(results))


async def generations(gw: "Gateway", request: Request) -> Response:
    body = parse_body(ImageGenerationRequest, request)
    handle = gw.select_model(body.model, "txt2img", request.path)
    width, height = body.dimensions()
    as_url = body.response_format == "url"
    store = _store(gw) if as_url else None
    results = await handle.call(_render(_params(body, request, width, height, count=body.n), store))
    data = [OpenAIImage(url=_file_url(gw, request, r["name"])) if as_url else OpenAIImage(b64_json=r["b64"])
            for r in results]
    response = OpenAIImageResponse(created=int(time.time()), data=data)
    return json_response(response.model_dump(exclude_none=True), headers=_headers(results))


async def image_file(gw: "Gateway", request: Request) -> Response:
    path = _store(gw).path_of(request.path_params["name"])
    data = await asyncio.to_thread(path.read_bytes)
    return Response(200, {"content-type": "image/png", "cache-control": "private, max-age=86400",
                          "x-content-type-options": "nosniff"}, data)


ROUTES = [
    Route("POST", "/v1/txt2img", "txt2img", txt2img, request=Txt2ImgRequest, response=NexaImageResponse),
    Route("POST", "/v1/img2img", "img2img", img2img, request=Img2ImgRequest, response=NexaImageResponse),
    Route("POST", "/v1/images/generations", "txt2img", generations, request=ImageGenerationRequest,
          response=OpenAIImageResponse),
    Route("GET", FILES_PATH + "/{name}", "txt2img", image_file, response={"image/png": bytes}),
]
