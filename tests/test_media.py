"""One set of rules for input images: /v1/img2img and vision chat accept and refuse exactly the
same encodings, and enforce the same pixel limit (server.max_image_pixels).

Three levels: the functions each route calls (gateway.media.inputs), the vision backend's own decoder
(backends.vision.read_image), and both routes through the real gateway core, with fake engines
that hand back what they were given (the real engines are in tests/test_e2e_vision.py and
tests/test_e2e_images.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from typing import Any, Iterator

import pytest
from PIL import Image

import backends.registry as registry
from backends import base
from backends.base import Delta, SamplingParams, Usage
from backends.diffusion import GeneratedImage
from backends.errors import BackendError
from backends.media import IMAGE_PARTS, MediaError, b64decode, content_parts
from gateway.app import Gateway
from gateway.http.core import HTTPError, Request
from gateway.manifest.load import build
from gateway.media.inputs import decode_inline, load_input, pixel_limit, resolve_image_parts
from schemas.manifest import ModelFormat, ModelType, ServerSettings
from tests import fakes

pytestmark = pytest.mark.timeout(60)


def noise_png(size: int = 15, seed: int = 3) -> bytes:
    """Random pixels (a fixed seed): the 15x15 one's base64 holds '+' and '/' (so the URL-safe form
    differs) and ends in padding."""
    image = Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


PNG = noise_png()
STANDARD = base64.b64encode(PNG).decode()
URLSAFE = base64.urlsafe_b64encode(PNG).decode()
GIF = io.BytesIO()
Image.open(io.BytesIO(PNG)).save(GIF, format="GIF")

ACCEPTED = {
    "standard": STANDARD,
    "standard, unpadded": STANDARD.rstrip("="),
    "url-safe": URLSAFE,
    "url-safe, unpadded": URLSAFE.rstrip("="),
    "line-wrapped": base64.encodebytes(PNG).decode(),
    "data URL": "data:image/png;base64," + STANDARD,
    "data URL, url-safe, unpadded": "data:image/png;base64," + URLSAFE.rstrip("="),
    "data URL, upper-case scheme, params": "DATA:image/png;name=x.png;base64," + STANDARD,
    "data URL, wrong mime": "data:image/jpeg;base64," + STANDARD,  # the bytes decide, not the label
    "GIF": base64.b64encode(GIF.getvalue()).decode(),
}
REFUSED = {
    "garbage": "not base64 !!",
    "at signs": "data:image/png;base64,@@@",
    "mixed alphabets": STANDARD[:20] + "-_" + STANDARD[22:],
    "one character too many": STANDARD.rstrip("=") + "A" * (5 - len(STANDARD.rstrip("=")) % 4),
    "not base64 data URL": "data:image/png,rawbytes",
    "base64 of text": base64.b64encode(b"not an image").decode(),
    "truncated PNG": base64.b64encode(PNG[:40]).decode(),
    "other scheme": "ftp://127.0.0.1/x.png",
    "file URL": "file:///etc/passwd",
    "whitespace only": "   ",
}


def test_the_encodings_differ_as_the_table_says():
    assert "+" in STANDARD and "/" in STANDARD and STANDARD.endswith("=")
    assert URLSAFE != STANDARD


def test_b64decode_takes_both_alphabets_padded_or_not_and_skips_nothing():
    for text in (STANDARD, STANDARD.rstrip("="), URLSAFE, URLSAFE.rstrip("=")):
        assert b64decode(text) == PNG
    for bad in ("@@@", "abc-@@@", STANDARD[:20] + "-_" + STANDARD[22:], "A"):
        with pytest.raises(MediaError):
            b64decode(bad)


def img2img_input(value: str, settings: ServerSettings) -> tuple[str, Any]:
    """What /v1/img2img makes of `image`: ("ok", RGB pixels) or ("refused", error code)."""
    try:
        return "ok", load_input(value, None, settings).tobytes()
    except HTTPError as exc:
        assert exc.status == 400 and exc.param == "image"
        return "refused", exc.code


def chat_input(value: str, settings: ServerSettings) -> tuple[str, Any]:
    """What vision chat's route step makes of the same string as an image part."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "?"},
                                             {"type": "image_url", "image_url": {"url": value}}]}]
    try:
        out = asyncio.run(resolve_image_parts(messages, settings))
    except HTTPError as exc:
        assert exc.status == 400 and exc.param == "messages[0].content[1].image_url"
        return "refused", exc.code
    url = out[0]["content"][1]["image_url"]["url"]
    with Image.open(io.BytesIO(decode_inline(url))) as image:
        return "ok", image.convert("RGB").tobytes()


def backend_input(value: str) -> tuple[str, Any]:
    """What the vision backend itself reads (it decodes the data URL the route step hands it)."""
    from backends.vision import read_image

    try:
        data = read_image(value)
    except BackendError:
        return "refused", None
    with Image.open(io.BytesIO(data)) as image:
        return "ok", image.convert("RGB").tobytes()


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_both_routes_accept_the_same_encodings_as_the_same_pixels(name):
    settings = ServerSettings()
    pixels = Image.open(io.BytesIO(PNG if name != "GIF" else GIF.getvalue())).convert("RGB").tobytes()
    assert img2img_input(ACCEPTED[name], settings) == ("ok", pixels)
    assert chat_input(ACCEPTED[name], settings) == ("ok", pixels)
    assert backend_input(ACCEPTED[name]) == ("ok", pixels)


@pytest.mark.parametrize("name", list(REFUSED))
def test_both_routes_refuse_the_same_encodings_with_the_same_code(name):
    settings = ServerSettings()
    assert img2img_input(REFUSED[name], settings) == ("refused", "invalid_image")
    assert chat_input(REFUSED[name], settings) == ("refused", "invalid_image")
    assert backend_input(REFUSED[name]) == ("refused", None)


def test_one_pixel_limit_for_both_routes_and_the_model_override():
    settings = ServerSettings(max_image_pixels=16 * 16)
    assert settings.max_image_pixels == 256 and ServerSettings().max_image_pixels == 40_000_000
    small, big = STANDARD, base64.b64encode(noise_png(17)).decode()
    assert img2img_input(small, settings)[0] == chat_input(small, settings)[0] == "ok"
    assert img2img_input(big, settings) == chat_input(big, settings) == ("refused", "image_too_large")
    # A vision model's options.max_image_pixels overrides the server's for that model only.
    assert pixel_limit(settings) == 256 and pixel_limit(settings, {"max_image_pixels": 1000}) == 1000
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": big}}]}]
    assert asyncio.run(resolve_image_parts(messages, settings, pixel_limit(settings, {"max_image_pixels": 1000})))
    with pytest.raises(HTTPError) as caught:
        asyncio.run(resolve_image_parts(messages, ServerSettings(), 100))
    assert caught.value.code == "image_too_large" and "17x17" in caught.value.message


def test_content_parts_is_the_one_walk_and_names_the_types_once():
    content = [{"type": "text", "text": "a"}, *({"type": kind, "image_url": "AAAA"} for kind in IMAGE_PARTS),
               {"type": "text"}]
    parts = list(content_parts(content))
    assert [p.is_image for p in parts] == [False, True, True, True, False]
    assert [p.index for p in parts] == [0, 1, 2, 3, 4] and parts[4].text == "" and parts[1].url == "AAAA"
    with pytest.raises(MediaError) as caught:
        list(content_parts([{"type": "text", "text": "a"}, {"type": "audio"}]))
    assert (caught.value.index, caught.value.code) == (1, "invalid_value")
    with pytest.raises(MediaError):
        _ = next(content_parts([{"type": "image_url"}])).url


# -- both routes through the gateway core, with engines that hand back what they were given --


class EchoImages(base.Backend):
    """img2img that returns its input image as the generated one."""

    capabilities = frozenset({"txt2img", "img2img"})

    @classmethod
    def load(cls, spec, path):
        return cls(spec, path)

    def generate(self, params) -> Iterator[GeneratedImage]:
        yield GeneratedImage(image=params.init_image, seed=1)


class EchoVision(fakes.FakeBackend):
    """Vision chat that answers with the pixels of the images it was given (as base64 of RGB bytes)."""

    capabilities = frozenset({"chat", "complete", "vision"})

    def chat(self, messages, params: SamplingParams, cancelled, options=None) -> Iterator[Delta]:
        from backends.vision import prepare_messages, read_image

        seen = []
        for message in prepare_messages(messages):
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part["type"] == "image_url":
                    with Image.open(io.BytesIO(read_image(part["image_url"]["url"]))) as image:
                        seen.append(base64.b64encode(image.convert("RGB").tobytes()).decode())
        yield Delta(text=" ".join(seen), finish_reason="stop", usage=Usage(1, 1))


@pytest.fixture
def gateway(monkeypatch, tmp_path) -> Iterator[Gateway]:
    monkeypatch.setitem(registry.ENGINES, (ModelType.COMPUTER_VISION, ModelFormat.gguf), fakes.engine("tests.test_media:EchoImages"))
    monkeypatch.setitem(registry.ENGINES, (ModelType.MULTIMODAL, ModelFormat.gguf), fakes.engine("tests.test_media:EchoVision"))
    manifest = build({"server": {"max_image_pixels": 16 * 16, "image_output_dir": str(tmp_path)}, "models": [
        {"name": "sd", "type": "COMPUTER_VISION", "source": "/dev/null"},
        {"name": "vlm", "type": "MULTIMODAL", "source": "/dev/null", "mmproj": "/dev/null"},
    ]})
    yield Gateway(manifest)


async def call(gw: Gateway, path: str, body: dict) -> tuple[int, dict]:
    response = await gw.respond(Request(method="POST", path=path, body=json.dumps(body).encode()))
    return response.status, json.loads(response.body)


def outcome(status: int, body: dict, pixels_of) -> tuple[int, Any]:
    return (status, pixels_of(body)) if status == 200 else (status, body["error"]["code"])


def test_img2img_and_vision_chat_answer_alike_over_http(gateway):
    cases = {**ACCEPTED, **REFUSED, "too large": base64.b64encode(noise_png(17)).decode()}

    def png_pixels(body):
        with Image.open(io.BytesIO(base64.b64decode(body["data"][0]["base64"]))) as image:
            return base64.b64encode(image.convert("RGB").tobytes()).decode()

    async def main() -> dict[str, tuple]:
        gateway.startup(asyncio.get_running_loop())
        results = {}
        try:
            for name, value in cases.items():
                img2img = await call(gateway, "/v1/img2img", {"model": "sd", "prompt": "x", "image": value,
                                                              "width": 15, "height": 15})
                chat = await call(gateway, "/v1/chat/completions", {"model": "vlm", "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": value}}]}]})
                results[name] = (outcome(*img2img, png_pixels),
                                 outcome(*chat, lambda body: body["choices"][0]["message"]["content"]))
        finally:
            gateway.shutdown()
        return results

    results = asyncio.run(main())
    for name, (img2img, chat) in results.items():
        assert img2img == chat, name
        expected = 200 if name in ACCEPTED else 400
        assert img2img[0] == expected, (name, img2img)
    assert results["too large"][0] == (400, "image_too_large")
    assert results["garbage"][0] == (400, "invalid_image")
