"""End to end: a real `nexa server` running stable-diffusion.cpp on a synthetic random-weight
SDXS checkpoint (tests/synth/sd_checkpoint.py), spoken to with the official openai SDK and httpx.

The weights are noise, so the images are too, but everything else is real: the engine, the
sizes, seeds, img2img, files on disk. Two broken model files (random bytes, a truncated copy of
the checkpoint) are loaded by the same server process: a crash there would kill the server and
fail these tests instead of killing pytest.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import Server, write_manifest
from tests.synth.sd_checkpoint import sdxs_checkpoint

pytest.importorskip("stable_diffusion_cpp")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FILE_ROUTE = "/v1/images/files/"
MAX_PIXELS = 100 * 100  # server.max_image_pixels: the 64x64 inputs pass, a 128x128 one does not


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    dirs = {name: root / name for name in ("inputs", "outputs", "outside", "models")}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture(scope="module")
def image_server(image_dirs) -> Server:
    models = image_dirs["models"]
    (models / "x.gguf").write_bytes(os.urandom(1024 * 1024))
    with open(sdxs_checkpoint(), "rb") as full:
        (models / "truncated.gguf").write_bytes(full.read(8_000_000))
    manifest = write_manifest(image_dirs["models"] / "nexa.yaml", [
        {"name": "sdxs", "aliases": ["sd"], "type": "COMPUTER_VISION", "format": "gguf",
         "source": str(sdxs_checkpoint()), "preload": True, "n_threads": 2,
         "options": {"default_steps": 1, "default_cfg_scale": 1.0}},
        {"name": "garbage", "type": "COMPUTER_VISION", "source": str(models / "x.gguf")},
        {"name": "truncated", "type": "COMPUTER_VISION", "source": str(models / "truncated.gguf")},
    ], server={"image_input_dirs": [str(image_dirs["inputs"])], "image_output_dir": str(image_dirs["outputs"]),
               "max_image_pixels": MAX_PIXELS})
    server = Server(["-c", str(manifest)], image_dirs["models"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(image_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=image_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(server: Server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    image.load()
    return image


def txt2img(server: Server, **fields) -> Image.Image:
    answer = post(server, "/v1/txt2img", {"prompt": "a lighthouse", "width": 64, "height": 64, "sample_steps": 1,
                                          "cfg_scale": 1, **fields})
    assert answer.status_code == 200, answer.text
    return decode(answer.json()["data"][0]["base64"])


def solid(colour: tuple[int, int, int], size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_txt2img_returns_a_png_of_the_requested_size_and_a_url_serving_it(image_server, image_dirs):
    answer = post(image_server, "/v1/txt2img", {"prompt": "a red fox", "width": 64, "height": 64,
                                                "sample_steps": 1, "cfg_scale": 1, "seed": 7})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"created", "data"} and isinstance(body["created"], float)
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"base64", "url"}
    image = decode(body["data"][0]["base64"])
    assert image.size == (64, 64)
    assert len(image.getcolors(64 * 64)) > 10  # noise weights still give a varied picture, not a constant
    url = body["data"][0]["url"]
    assert url.startswith(image_server.url + FILE_ROUTE)
    name = url.rsplit("/", 1)[1]
    assert name.startswith("img-") and name.endswith(".png") and len(name) == len("img-.png") + 32
    assert (image_dirs["outputs"] / name).is_file()
    served = httpx.get(url, timeout=30)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == base64.b64decode(body["data"][0]["base64"])


def test_image_urls_ignore_forwarded_headers_by_default(image_server):
    forged = {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}
    answer = httpx.post(image_server.url + "/v1/txt2img", json={"prompt": "p", "width": 64, "height": 64},
                        headers=forged, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["url"].startswith(image_server.url + FILE_ROUTE)
    generated = httpx.post(image_server.url + "/v1/images/generations", headers=forged, timeout=120,
                           json={"prompt": "p", "size": "64x64", "response_format": "url"})
    assert generated.json()["data"][0]["url"].startswith(image_server.url + FILE_ROUTE)


def test_every_request_gets_its_own_file(image_server):
    urls = {post(image_server, "/v1/txt2img", {"prompt": "same", "width": 64, "height": 64, "seed": 1})
            .json()["data"][0]["url"] for _ in range(3)}
    assert len(urls) == 3  # never txt2img_<epoch>.png overwriting each other


def test_same_seed_same_image_other_seed_other_image(image_server):
    a = txt2img(image_server, seed=1234)
    b = txt2img(image_server, seed=1234)
    c = txt2img(image_server, seed=1235)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert txt2img(image_server, seed=1234, prompt="a different prompt").tobytes() != a.tobytes()


def test_sizes_are_rounded_up_to_multiples_of_64_and_reported(image_server):
    answer = post(image_server, "/v1/txt2img", {"prompt": "x", "width": 100, "height": 70, "sample_steps": 1})
    assert answer.status_code == 200, answer.text
    assert decode(answer.json()["data"][0]["base64"]).size == (128, 128)
    assert answer.headers["x-image-size"] == "128x128"


def test_img2img_follows_the_input_image(image_server):
    def run(image: str) -> Image.Image:
        answer = post(image_server, "/v1/img2img", {"prompt": "a house", "image": image, "strength": 0.5,
                                                    "seed": 3, "sample_steps": 2, "cfg_scale": 1})
        assert answer.status_code == 200, answer.text
        return decode(answer.json()["data"][0]["base64"])

    red = run(base64.b64encode(solid((255, 0, 0))).decode())
    # The one decoder of every route: a data URL in the URL-safe alphabet, unpadded, is the same input.
    red_again = run("data:image/png;base64," + base64.urlsafe_b64encode(solid((255, 0, 0))).decode().rstrip("="))
    blue = run(base64.b64encode(solid((0, 0, 255))).decode())
    assert red.size == blue.size == (64, 64)  # the input's size when none is asked for
    assert red.tobytes() == red_again.tobytes()  # plain base64 and a (URL-safe) data URL are the same input
    assert red.tobytes() != blue.tobytes()


def test_img2img_reads_image_path_only_inside_the_allowed_folders(image_server, image_dirs):
    (image_dirs["inputs"] / "sub").mkdir(exist_ok=True)
    (image_dirs["inputs"] / "sub" / "green.png").write_bytes(solid((0, 255, 0)))
    (image_dirs["outside"] / "secret.png").write_bytes(solid((9, 9, 9)))
    link = image_dirs["inputs"] / "escape.png"
    if not link.exists():
        link.symlink_to(image_dirs["outside"] / "secret.png")
    fields = {"prompt": "x", "width": 64, "height": 64, "sample_steps": 1}

    for path in ("sub/green.png", str(image_dirs["inputs"] / "sub" / "green.png")):
        answer = post(image_server, "/v1/img2img", {**fields, "image_path": path})
        assert answer.status_code == 200, answer.text
    for path in (str(image_dirs["outside"] / "secret.png"), "../outside/secret.png", "sub/../../outside/secret.png",
                 "escape.png", "/etc/passwd"):
        answer = post(image_server, "/v1/img2img", {**fields, "image_path": path})
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"]["code"] == "image_path_not_allowed"
    assert post(image_server, "/v1/img2img", {**fields, "image_path": "missing.png"}).status_code == 400
    assert post(image_server, "/v1/img2img", fields).status_code == 400  # no input image at all
    (image_dirs["inputs"] / "not-an-image.png").write_text("hello")
    bad = post(image_server, "/v1/img2img", {**fields, "image_path": "not-an-image.png"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"


def test_img2img_refuses_an_image_over_server_max_image_pixels(image_server, image_dirs):
    """The pixel limit vision chat uses too (tests/test_media.py): refused before the engine runs."""
    big = solid((0, 255, 0), size=(128, 128))
    (image_dirs["inputs"] / "big.png").write_bytes(big)
    fields = {"prompt": "x", "width": 64, "height": 64, "sample_steps": 1}
    for given in ({"image": base64.b64encode(big).decode()}, {"image_path": "big.png"}):
        answer = post(image_server, "/v1/img2img", {**fields, **given})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "image_too_large" and "128x128" in answer.json()["error"]["message"]


def test_openai_sdk_images_generate(client, image_server):
    result = client.images.generate(model="sdxs", prompt="a sailing boat", size="64x64", response_format="b64_json")
    assert isinstance(result.created, int)
    assert len(result.data) == 1 and result.data[0].b64_json and result.data[0].url is None
    assert decode(result.data[0].b64_json).size == (64, 64)

    two = client.images.generate(model="sd", prompt="a sailing boat", size="64x64", n=2, extra_body={"seed": 5})
    assert len(two.data) == 2
    first, second = (decode(d.b64_json) for d in two.data)
    assert first.tobytes() != second.tobytes()  # seeds 5 and 6

    by_url = client.images.generate(model="sdxs", prompt="a sailing boat", size="64x64", response_format="url",
                                    extra_body={"seed": 5})
    assert by_url.data[0].b64_json is None
    png = httpx.get(by_url.data[0].url, timeout=30)
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).tobytes() == first.tobytes()  # seed 5 again, via the file


@pytest.mark.parametrize("path, body", [
    ("/v1/txt2img", {"prompt": "x", "width": 2048, "height": 64}),
    ("/v1/txt2img", {"prompt": "x", "sample_steps": 51}),
    ("/v1/txt2img", {"prompt": "x", "image_path": "/tmp/anything.png"}),
    ("/v1/img2img", {"prompt": "x", "image": "not base64 !!", "width": 64, "height": 64}),
    ("/v1/images/generations", {"prompt": "x", "size": "big"}),
    ("/v1/images/generations", {"prompt": "x", "size": "64x4096"}),
    ("/v1/images/generations", {"prompt": "x", "n": 5}),
    ("/v1/images/generations", {"prompt": "x", "response_format": "gif"}),
    ("/v1/images/generations", {"prompt": ""}),
])
def test_bad_requests_are_400_in_the_openai_envelope(image_server, path, body):
    answer = post(image_server, path, body)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("name", [
    "..%2F..%2Fetc%2Fpasswd", "..", "img-00000000000000000000000000000000.png", "nexa.yaml", "%2Fetc%2Fpasswd",
    "img-..%2F..%2Fmodels%2Fnexa.yaml",
])
def test_file_route_serves_nothing_but_generated_images(image_server, name):
    answer = httpx.get(image_server.url + FILE_ROUTE + name, timeout=30)
    assert 400 <= answer.status_code < 500
    assert b"models:" not in answer.content and b"root:" not in answer.content


def test_broken_model_files_fail_to_load_clearly_and_the_gateway_keeps_serving(image_server):
    for name, hint in (("garbage", "unknown format"), ("truncated", "read tensor data failed")):
        answer = post(image_server, "/v1/txt2img", {"model": name, "prompt": "x", "width": 64, "height": 64})
        assert answer.status_code == 503, answer.text
        assert "could not load" in answer.json()["error"]["message"]
        card = httpx.get(f"{image_server.url}/v1/models/{name}", timeout=30).json()
        assert card["state"] == "failed"
        assert hint in card["error"]
    assert image_server.proc.poll() is None
    assert txt2img(image_server).size == (64, 64)
    models = {m["id"]: m["state"] for m in httpx.get(image_server.url + "/v1/models", timeout=30).json()["data"]}
    assert models == {"sdxs": "ready", "garbage": "failed", "truncated": "failed"}


def test_progress_is_logged_and_calls_in_a_row_survive_the_callback(image_server):
    for _ in range(3):
        txt2img(image_server, sample_steps=2)
    assert image_server.proc.poll() is None
    steps = [json.loads(line) for line in image_server.log_path.read_text().splitlines()
             if '"image_progress"' in line]
    assert any(entry["step"] == 2 and entry["steps"] == 2 and entry["request_id"] for entry in steps)
    assert "|==" not in image_server.log_path.read_text()  # sd.cpp's own progress bar never reaches stdout


def test_sigterm_unloads_the_diffusion_models_and_exits_0(image_server):
    """Last in this module: closing the native contexts at shutdown must not crash either."""
    assert image_server.stop() == 0
    assert "models unloaded" in image_server.log()
