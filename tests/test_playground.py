"""The built-in playground, driven in a real headless Chromium against a real `nexa server`.

Debian's `chromium` (scripts/test.sh installs it) through Python Playwright, whose pip package
brings its own driver; `playwright install` is never run. A missing browser fails these tests
instead of skipping them.

One gateway serves a model of every kind the page has a section for: SmolLM2 (real chat), the
fake engine (slow, for Stop), all-MiniLM-L6-v2 (embeddings), Whisper tiny.en (speech), a synthetic
SDXS checkpoint (images) and a synthetic LLaVA-style pair (vision). Smaller fake-only gateways
check API keys and `--no-playground`. A screenshot lands in test-artifacts/playground.png.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway.api.ops import playground
from gateway.http.core import HTTPError, Request
from tests.conftest import ROOT, Server, fetch_catalog, wait_for, write_manifest
from tests.speech import DETERMINISTIC, ENGLISH, speak
from tests.synth.sd_checkpoint import sdxs_checkpoint
from tests.synth.vlm import TOKENS_PER_IMAGE, png, vlm_pair

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
# Playwright's assertions wait 5 s by default; a loaded 2-core machine can take longer to stream an
# answer, and these tests assert behaviour, not speed.
expect.set_options(timeout=90_000)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}
KEY = "sk-playground-test-key"
USAGE = re.compile(r"usage: (\d+) prompt \+ (\d+) completion = (\d+) tokens")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get update && apt-get install -y chromium` "
                    "(scripts/test.sh does this); the playground tests need a real browser")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


class Tab:
    """A fresh browser context and page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Browser, url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(90_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(url)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_tab(browser: Browser) -> Iterator:
    tabs: list[Tab] = []

    def open_(url: str) -> Tab:
        tab = Tab(browser, url)
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        tab.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("playground")
    fetch_catalog("smollm2")
    fetch_catalog("all-minilm-l6-v2")
    fetch_catalog("whisper-tiny-en")
    model, mmproj = vlm_pair()
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "source": "smollm2", "nctx": 2048, "preload": True},
        {"name": "slow", **FAKE, "preload": True, "options": {"delay": 0.02}},
        {"name": "minilm", "source": "all-minilm-l6-v2", "preload": True},
        {"name": "whisper-tiny-en", "source": "whisper-tiny-en", "device": "cpu", "preload": True,
         "options": DETERMINISTIC},
        {"name": "sdxs", "type": "COMPUTER_VISION", "format": "gguf", "source": str(sdxs_checkpoint()),
         "preload": True, "n_threads": 2, "options": {"default_steps": 1, "default_cfg_scale": 1.0}},
        {"name": "vlm", "source": str(model), "type": "MULTIMODAL", "mmproj": str(mmproj), "nctx": 512,
         "preload": True},
    ], server={"image_output_dir": str(tmp / "outputs")})
    started = Server(["-c", str(manifest)], tmp, ready_timeout=240)
    yield started
    started.stop()


def cards(url: str, **kwargs) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(url + "/v1/models", timeout=10, **kwargs).json()["data"]}




def ready_page(open_tab, url: str) -> Tab:
    tab = open_tab(url + "/")
    expect(tab.page.locator("#app")).to_be_visible()
    expect(tab.page.locator("#models-table tbody tr").first).to_be_visible()
    return tab


def chat(page: Page, model: str, text: str, max_tokens: int, temperature: float | None = None) -> None:
    page.select_option("#chat-model", model)
    page.fill("#chat-max-tokens", str(max_tokens))
    if temperature is not None:
        page.fill("#chat-temperature", str(temperature))
    page.fill("#chat-input", text)
    page.click("#chat-send")


def last_answer(page: Page):
    return page.locator(".msg.assistant .content").last


def usage_of(page: Page) -> tuple[int, int, int]:
    expect(page.locator("#chat-usage")).to_contain_text("usage:")
    found = USAGE.search(page.inner_text("#chat-usage"))
    assert found, page.inner_text("#chat-usage")
    return int(found[1]), int(found[2]), int(found[3])


# -- serving the files ---------------------------------------------------------------------------


def test_page_and_assets_are_served_with_types_and_nothing_else(server):
    root = httpx.get(server.url + "/")
    again = httpx.get(server.url + "/playground")
    assert root.status_code == again.status_code == 200
    assert root.headers["content-type"] == "text/html; charset=utf-8" and root.content == again.content
    assert "default-src 'self'" in root.headers["content-security-policy"]
    assert b'src="static/playground.js"' in root.content
    types = {"playground.js": "text/javascript", "playground.css": "text/css", "playground.html": "text/html"}
    for name, kind in types.items():
        answer = httpx.get(f"{server.url}/static/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), name
        assert answer.content == (playground.STATIC_DIR / name).read_bytes()
    # No way out of the folder, and nothing in it but what has a known type.
    for path in ["/static/..%2Fapp.py", "/static/..%2F..%2Fpyproject.toml", "/static/..", "/static/.hidden.js",
                 "/static/playground.js%00.css", "/static/nope.js", "/static/sub/playground.js",
                 "/static/%2e%2e%2fcatalog.yaml"]:
        status, body = raw_get(server, path)
        assert status == 404 and json.loads(body)["error"]["code"] == "route_not_found", (path, status)


def raw_get(server: Server, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (httpx would resolve `..` segments before sending)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_asset_handler_only_serves_listed_files():
    """Below HTTP: names are looked up in the folder's listing, never joined onto a path."""

    class Settings:
        playground = True

    class Manifest:
        server = Settings()

    class Gw:
        manifest = Manifest()

    def get(name: str):
        request = Request("GET", "/static/" + name, path_params={"name": name})
        return asyncio.run(playground.asset(Gw(), request))

    assert get("playground.css").headers["content-type"] == "text/css; charset=utf-8"
    for name in ["../app.py", "..", "../../pyproject.toml", "/etc/passwd", "playground.py", "x.exe", ""]:
        with pytest.raises(HTTPError) as caught:
            get(name)
        assert caught.value.status == 404, name
    Settings.playground = False
    with pytest.raises(HTTPError):
        get("playground.css")


# -- the page in a browser -----------------------------------------------------------------------


def test_page_loads_cleanly_and_lists_every_model(server, open_tab):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    expected = cards(server.url)
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(len(expected))
    for model_id, card in expected.items():
        row = page.locator(f'#models-table tr[data-model="{model_id}"]')
        assert row.locator("td.type").inner_text() == card["type"]
        assert row.locator("td.format").inner_text() == card["format"]
        assert row.locator("td.state").inner_text().strip() == card["state"] == "ready"
    # Each section's picker holds the models that can serve it, with type, format and state.
    assert page.locator("#chat-model option").all_inner_texts() == [
        "smollm2 — NLP · gguf · ready", "slow — NLP · gguf · ready", "vlm — MULTIMODAL · gguf · ready"]
    assert page.locator("#embed-model option").all_inner_texts() == ["minilm — TEXT_EMBEDDING · onnx · ready"]
    assert page.locator("#audio-model option").all_inner_texts() == ["whisper-tiny-en — AUDIO · bin · ready"]
    assert page.locator("#image-model option").all_inner_texts() == ["sdxs — COMPUTER_VISION · gguf · ready"]
    for section in ["chat", "complete", "embed", "audio", "image"]:
        expect(page.locator(f"#{section}-section")).to_be_visible()
    expect(page.locator("#key-section")).to_be_hidden()
    expect(page.locator("#global-error")).to_be_hidden()
    assert tab.errors == []


def test_chat_streams_the_answer_with_usage(server, open_tab):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    # Record every text the answer element shows while it streams.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.msg.assistant .content');
            const last = answers[answers.length - 1];
            if (last) window.__seen.push(last.textContent);
        }).observe(document.getElementById('chat-log'), {childList: true, subtree: true, characterData: true});
    }""")
    question = "Name three colors."
    chat(page, "smollm2", question, max_tokens=24, temperature=0)
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    shown = last_answer(page).text_content()
    seen = [text for text in page.evaluate("() => window.__seen") if text]
    assert len(set(seen)) >= 3, seen  # the text grew piece by piece, not in one go
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))
    prompt, completion, total = usage_of(page)
    assert prompt > 0 and 0 < completion <= 24 and total == prompt + completion
    # The same request without streaming gives the same greedy answer and counts.
    whole = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": 24,
        "temperature": 0}).json()
    assert shown.strip() and shown == whole["choices"][0]["message"]["content"]
    assert (prompt, completion) == (whole["usage"]["prompt_tokens"], whole["usage"]["completion_tokens"])
    assert tab.errors == []


def test_stop_really_stops_generation(server, open_tab):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    chat(page, "slow", "tell me everything", max_tokens=4000)  # 80 s of tokens if nothing stops it
    answer = last_answer(page)
    wait_for(lambda: len(answer.text_content().split()) >= 10)
    first = answer.text_content()
    wait_for(lambda: len(answer.text_content()) > len(first))  # still streaming
    assert cards(server.url)["slow"]["running"] == 1
    page.click("#chat-stop")
    stopped_at = time.monotonic()
    wait_for(lambda: cards(server.url)["slow"]["running"] == 0, timeout=5, interval=0.02)
    print(f"running back to 0 {time.monotonic() - stopped_at:.3f} s after Stop")
    expect(answer).to_have_attribute("data-state", "stopped")
    frozen = answer.text_content()
    time.sleep(1.0)
    assert answer.text_content() == frozen
    assert 10 <= len(frozen.split()) < 4000
    expect(page.locator("#chat-send")).to_be_enabled()
    expect(page.locator("#chat-stop")).to_be_disabled()
    # The model is free again: the next message is answered at once.
    chat(page, "slow", "short one", max_tokens=3)
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    assert last_answer(page).text_content() == " w0 w1 w2"
    assert tab.errors == []


def test_api_errors_show_the_api_message(server, open_tab, tmp_path):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    chat(page, "smollm2", "hello", max_tokens=99999)
    expect(page.locator("#chat-error")).to_be_visible()
    api = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "smollm2", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 99999}).json()
    assert page.inner_text("#chat-error") == api["error"]["message"]
    assert "at most 4096" in api["error"]["message"]
    # Multipart too: a file that is not audio.
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not audio at all")
    page.set_input_files("#audio-file", str(junk))
    page.click("#audio-send")
    expect(page.locator("#audio-error")).to_be_visible()
    api = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("notes.txt", junk.read_bytes(),
                                                                             "text/plain")},
                     data={"model": "whisper-tiny-en"}, timeout=60).json()
    assert page.inner_text("#audio-error") == api["error"]["message"] != ""
    # The page is still there and usable.
    expect(page.locator("#models-table")).to_be_visible()
    expect(page.locator("#global-error")).to_be_hidden()
    assert tab.errors and all("Failed to load resource" in e for e in tab.errors), tab.errors


def test_embedding_similarity(server, open_tab):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    sentences = ["A man is eating food.", "A man eats something."]
    page.fill("#embed-a", sentences[0])
    page.fill("#embed-b", sentences[1])
    page.click("#embed-send")
    expect(page.locator("#embed-result")).to_contain_text("cosine similarity")
    shown = float(page.get_attribute("#embed-result", "data-similarity"))
    data = httpx.post(server.url + "/v1/embeddings", json={"model": "minilm", "input": sentences},
                      timeout=60).json()["data"]
    a, b = (np.array(d["embedding"]) for d in data)
    assert shown == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)
    assert "384 dimensions" in page.inner_text("#embed-result")
    page.fill("#embed-b", "The stock market fell sharply today.")
    page.click("#embed-send")
    expect(page.locator("#embed-result")).not_to_have_attribute("data-similarity", str(shown))
    expect(page.locator("#embed-send")).to_be_enabled()
    assert float(page.get_attribute("#embed-result", "data-similarity")) < shown - 0.2
    assert tab.errors == []


def test_transcribes_an_uploaded_recording(server, open_tab, tmp_path):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    assert page.locator("#audio-task option").all_inner_texts() == ["transcribe"]  # tiny.en cannot translate
    recording = speak(ENGLISH, tmp_path / "fox.wav")
    page.set_input_files("#audio-file", str(recording))
    page.click("#audio-send")
    expect(page.locator("#audio-text")).to_have_attribute("data-state", "done")
    text = page.inner_text("#audio-text")
    # what the page shows is the API's answer for the same file (the model's words are not the point here)
    direct = httpx.post(server.url + "/v1/audio/transcriptions", timeout=120, data={"model": "whisper-tiny-en"},
                        files={"file": ("fox.wav", recording.read_bytes(), "audio/wav")}).json()["text"]
    assert text.strip() and text.strip() == direct.strip(), (text, direct)
    assert tab.errors == []


def test_generates_an_image_and_transforms_a_picture(server, open_tab, tmp_path):
    from PIL import Image

    tab = ready_page(open_tab, server.url)
    page = tab.page
    expect(page.locator("#image-size")).to_have_value("64x64")
    page.click("#image-send")
    expect(page.locator("#image-meta")).to_contain_text("text to image")
    generated = page.get_attribute("#image-output", "src")
    assert generated.startswith("data:image/png;base64,")
    assert page.locator("#image-output").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    picture = tmp_path / "red.png"
    Image.new("RGB", (80, 48), (220, 20, 20)).save(picture)
    page.set_input_files("#img2img-file", str(picture))
    with page.expect_request("**/v1/img2img") as sent:
        page.click("#img2img-send")
    body = json.loads(sent.value.post_data)
    assert body["image"].startswith("data:image/png;base64,") and (body["width"], body["height"]) == (64, 64)
    expect(page.locator("#image-meta")).to_contain_text("from your picture")
    assert page.get_attribute("#image-output", "src") != generated
    assert page.locator("#image-output").evaluate("img => img.naturalWidth") == 64
    assert tab.errors == []


def test_vision_chat_sends_the_attached_image(server, open_tab):
    tab = ready_page(open_tab, server.url)
    page = tab.page
    page.select_option("#chat-model", "smollm2")
    expect(page.locator("#chat-image-label")).to_be_hidden()  # text-only model: nothing to attach
    page.select_option("#chat-model", "vlm")
    expect(page.locator("#chat-image-label")).to_be_visible()
    page.set_input_files("#chat-image", files=[{"name": "black.png", "mimeType": "image/png",
                                                "buffer": png("black")}])
    expect(page.locator("#chat-image-preview")).to_be_visible()
    with page.expect_request("**/v1/chat/completions") as sent:
        chat(page, "vlm", "What is in this picture?", max_tokens=4, temperature=0)
    parts = json.loads(sent.value.post_data)["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "What is in this picture?"}
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    expect(page.locator(".msg.user img.thumb")).to_be_visible()
    with_image = usage_of(page)[0]
    page.click("#chat-clear")
    chat(page, "vlm", "What is in this picture?", max_tokens=4, temperature=0)
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    expect(page.locator("#chat-usage")).not_to_contain_text(f"usage: {with_image} prompt")
    assert with_image - usage_of(page)[0] == TOKENS_PER_IMAGE
    assert tab.errors == []


def test_screenshot(server, open_tab):
    """A picture of the page in use, for people to look at (test-artifacts/playground.png)."""
    tab = ready_page(open_tab, server.url)
    page = tab.page
    chat(page, "slow", "Hello there", max_tokens=12)
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    page.click("#embed-send")
    expect(page.locator("#embed-result")).to_contain_text("cosine similarity")
    page.click("#image-send")
    expect(page.locator("#image-meta")).to_contain_text("64×64")
    page.click("#models-refresh")
    expect(page.locator('#models-table tr[data-model="sdxs"] td.running')).to_have_text("0")
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "playground.png"
    page.screenshot(path=str(target), full_page=True)
    from PIL import Image

    with Image.open(target) as shot:
        assert shot.width == 1280 and shot.height > 900
    assert tab.errors == []


# -- API keys and --no-playground ----------------------------------------------------------------


def test_api_key_prompt(tmp_path, start_server, open_tab):
    path = write_manifest(tmp_path / "nexa.yaml", [{"name": "fake", **FAKE, "preload": True}],
                          server={"api_keys": [KEY]})
    gateway = start_server(["-c", str(path)])
    for open_path in ["/", "/playground", "/static/playground.js", "/static/playground.css"]:
        assert httpx.get(gateway.url + open_path).status_code == 200, open_path
    assert httpx.get(gateway.url + "/v1/models").status_code == 401
    assert httpx.get(gateway.url + "/static/nope.js").status_code == 404
    tab = open_tab(gateway.url + "/")
    page = tab.page
    expect(page.locator("#key-section")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#api-key", "sk-wrong-key-123")
    page.click("#key-submit")
    expect(page.locator("#key-error")).to_have_text("Incorrect API key provided.")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-key.png"))
    page.fill("#api-key", KEY)
    page.click("#key-submit")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#key-section")).to_be_hidden()
    assert page.locator("#chat-model option").all_inner_texts() == ["fake — NLP · gguf · ready"]
    assert page.evaluate("() => [sessionStorage.getItem('nexa-playground-api-key'), localStorage.length]") == [KEY, 0]
    with page.expect_request("**/v1/chat/completions") as sent:
        chat(page, "fake", "hi", max_tokens=3)
    assert sent.value.headers["authorization"] == f"Bearer {KEY}"
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    assert last_answer(page).text_content() == " w0 w1 w2"
    # Sections for kinds of model this manifest lacks are not shown.
    for section in ["embed", "audio", "image"]:
        expect(page.locator(f"#{section}-section")).to_be_hidden()
    expect(page.locator("#chat-section")).to_be_visible()
    # The key lives as long as the tab: a reload asks for nothing.
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#key-section")).to_be_hidden()
    # The only console errors are the two refused /v1/models requests.
    assert len(tab.errors) == 2 and all("401" in e for e in tab.errors), tab.errors


@pytest.mark.parametrize("how", ["--no-playground", "server.playground: false"])
def test_no_playground_turns_the_page_off(tmp_path, start_server, how):
    setting = {"playground": False} if how.startswith("server.") else {}
    path = write_manifest(tmp_path / "nexa.yaml", [{"name": "fake", **FAKE}], server=setting)
    gateway = start_server(["-c", str(path)] + ([how] if how.startswith("--") else []))
    for off in ["/", "/playground", "/static/playground.js", "/static/playground.html"]:
        answer = httpx.get(gateway.url + off)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "route_not_found", off
    assert httpx.get(gateway.url + "/v1/models").status_code == 200
