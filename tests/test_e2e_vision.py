"""End to end: vision chat through a real `nexa server` with a synthetic LLaVA-style pair
(random weights, real llama.cpp multimodal path), spoken to with the openai SDK and httpx.

The route layer's image step (`gateway.media.inputs.resolve_image_parts`) is tested directly in
tests/test_images_in.py; tests/test_media.py holds the rules vision chat shares with /v1/img2img."""

from __future__ import annotations

import base64
import threading
from http.server import ThreadingHTTPServer
from typing import Iterator

import httpx
import openai
import pytest

from tests.conftest import Server, fetch_catalog, write_manifest
from tests.synth.vlm import TOKENS_PER_IMAGE, png, vlm_pair, write_projector
from tests.test_images_in import BIG, _Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FETCH_LIMIT = 2000
MAX_PIXELS = 100 * 100  # server.max_image_pixels: the 32x32 test images pass, 128x128 does not


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def ask(*urls: str, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         *({"type": "image_url", "image_url": {"url": u}} for u in urls)]}]


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("vision")
    model, mmproj = vlm_pair()
    broken = write_projector(tmp / "mmproj-broken.gguf", drop=["mm.2.weight"])
    # Passes the tensor check but SIGSEGVs libmtmd: only the child-process probe can catch it.
    crashy = write_projector(tmp / "mmproj-crashy.gguf", keys={"clip.projector_type": "qwen2vl_merger"})
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "vlm", "source": str(model), "type": "MULTIMODAL", "mmproj": str(mmproj), "nctx": 512,
         "preload": True},
        {"name": "smollm2", "source": str(fetch_catalog("smollm2")), "nctx": 512, "preload": True},
        {"name": "vlm-broken", "source": str(model), "type": "MULTIMODAL", "mmproj": str(broken), "nctx": 512},
        {"name": "vlm-crashy", "source": str(model), "type": "MULTIMODAL", "mmproj": str(crashy), "nctx": 512},
    ], server={"image_url_hosts": ["127.0.0.1"], "image_fetch_max_bytes": FETCH_LIMIT, "image_fetch_timeout_s": 5,
               "max_image_pixels": MAX_PIXELS})
    started = Server(["-c", str(manifest)], tmp)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, messages: list[dict], max_tokens: int = 8, **kwargs):
    return client.chat.completions.create(model="vlm", messages=messages, max_tokens=max_tokens, temperature=0,
                                          **kwargs)


def test_chat_with_an_image_is_a_full_openai_answer(client):
    answer = chat(client, ask(data_url(png("black"))))
    assert answer.object == "chat.completion" and answer.model == "vlm"
    assert isinstance(answer.choices[0].message.content, str) and answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


def test_prompt_tokens_count_every_image(client):
    black = data_url(png("black"))
    none = chat(client, ask(), max_tokens=1).usage.prompt_tokens
    one = chat(client, ask(black), max_tokens=1).usage.prompt_tokens
    two = chat(client, ask(black, black), max_tokens=1).usage.prompt_tokens
    assert (one - none, two - one) == (TOKENS_PER_IMAGE, TOKENS_PER_IMAGE)


def test_the_image_changes_the_answer(client):
    black = chat(client, ask(data_url(png("black")))).choices[0].message.content
    white = chat(client, ask(data_url(png("white")))).choices[0].message.content
    assert black == chat(client, ask(data_url(png("black")))).choices[0].message.content
    assert black != white


def test_raw_base64_without_data_prefix(client):
    image = png("white")
    by_url = chat(client, ask(data_url(image)))
    by_b64 = chat(client, ask(base64.b64encode(image).decode()))
    assert by_b64.choices[0].message.content == by_url.choices[0].message.content
    assert by_b64.usage.prompt_tokens == by_url.usage.prompt_tokens


def test_url_safe_unpadded_base64_is_the_same_image(client):
    """One decoder for vision chat and /v1/img2img: the URL-safe alphabet and missing padding are fine."""
    image = png("noise")
    urlsafe = base64.urlsafe_b64encode(image).decode().rstrip("=")
    assert urlsafe != base64.b64encode(image).decode()
    by_url = chat(client, ask(data_url(image)))
    for given in (urlsafe, "data:image/png;base64," + urlsafe):
        answer = chat(client, ask(given))
        assert answer.choices[0].message.content == by_url.choices[0].message.content
        assert answer.usage.prompt_tokens == by_url.usage.prompt_tokens


def test_an_image_over_server_max_image_pixels_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, ask(data_url(png("black", size=128))))
    assert caught.value.code == "image_too_large" and "128x128" in caught.value.message
    assert caught.value.param == "messages[0].content[1].image_url"


def test_streaming_with_usage(client):
    messages = ask(data_url(png("noise")))
    whole = chat(client, messages, max_tokens=6)
    chunks = list(chat(client, messages, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == 6


def test_models_lists_the_vision_model(server):
    cards = {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}
    assert cards["vlm"]["type"] == "MULTIMODAL" and cards["vlm"]["state"] == "ready"
    assert {"chat", "vision"} <= set(cards["vlm"]["capabilities"])
    assert "vision" not in cards["smollm2"]["capabilities"]


def test_a_text_model_refuses_images(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=ask(data_url(png("black"))), max_tokens=2)
    assert caught.value.code == "images_not_supported"


def test_remote_url_of_a_host_outside_the_allowlist_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, ask("http://example.com/cat.png"))
    assert caught.value.code == "image_url_not_allowed"


def test_bad_image_data_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        chat(client, ask("data:image/png;base64,bm90IGFuIGltYWdl"))  # "not an image"


def test_allowed_host_is_fetched(client, image_host):
    fetched = chat(client, ask(image_host + "/small.png"))
    inline = chat(client, ask(data_url(png("black"))))
    assert fetched.choices[0].message.content == inline.choices[0].message.content


def test_oversized_remote_image_is_a_400(client, image_host):
    assert len(BIG) > FETCH_LIMIT
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, ask(image_host + "/big.png"))
    assert caught.value.code == "image_too_large"


def test_broken_projector_fails_its_model_only(server, client):
    answer = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                        json={"model": "vlm-broken", "messages": ask(data_url(png("black"))), "max_tokens": 2})
    assert answer.status_code == 503
    assert "mm.2.weight" in answer.json()["error"]["message"]
    card = httpx.get(server.url + "/v1/models/vlm-broken", timeout=10).json()
    assert card["state"] == "failed"
    assert "missing tensors: mm.2.weight" in card["error"]
    # The process survived (no SIGSEGV) and still serves the other models.
    assert server.proc.poll() is None
    assert chat(client, ask(data_url(png("black"))), max_tokens=2).usage.completion_tokens == 2
    text = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert text.usage.completion_tokens >= 1


def test_a_projector_that_crashes_llama_cpp_fails_its_model_only(server, client):
    answer = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                        json={"model": "vlm-crashy", "messages": ask(data_url(png("black"))), "max_tokens": 2})
    assert answer.status_code == 503
    card = httpx.get(server.url + "/v1/models/vlm-crashy", timeout=10).json()
    assert card["state"] == "failed" and "crashed llama.cpp (SIGSEGV)" in card["error"]
    assert server.proc.poll() is None
    assert chat(client, ask(data_url(png("white"))), max_tokens=2).usage.completion_tokens == 2
