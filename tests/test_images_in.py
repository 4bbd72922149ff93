"""The route-layer image step: data URLs and base64 checked, http(s) fetched only from allowed
hosts, within byte and time limits (a real HTTP server on 127.0.0.1 serves the images)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from backends.media import decode_image
from gateway.http.core import HTTPError
from gateway.media.fetch import host_allowed
from gateway.media.inputs import resolve_image_parts
from schemas.manifest import ServerSettings
from tests.synth.vlm import png

pytestmark = pytest.mark.timeout(60)

SMALL = png("black")
BIG = png("noise", size=64)  # random pixels: thousands of bytes
LIMIT = 2000


class _Images(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if self.path == "/small.png":
            self._send(SMALL)
        elif self.path == "/big.png":
            self._send(BIG)
        elif self.path == "/big-unannounced":  # no content-length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.end_headers()
            self.wfile.write(BIG)
        elif self.path == "/slow.png":
            time.sleep(3)
            self._send(SMALL)
        elif self.path == "/redirect-in":
            self._redirect("/small.png")
        elif self.path == "/redirect-out":
            self._redirect(f"http://localhost:{self.server.server_port}/small.png")
        elif self.path == "/text":
            self._send(b"hello, not an image", "text/plain")
        else:
            self.send_error(404)

    def _send(self, body: bytes, kind: str = "image/png") -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("location", where)
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def settings(**extra) -> ServerSettings:
    values = dict(image_url_hosts=["127.0.0.1"], image_fetch_max_bytes=LIMIT, image_fetch_timeout_s=1.0)
    return ServerSettings(**{**values, **extra})


def resolve(url: str, **extra) -> bytes:
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    out = asyncio.run(resolve_image_parts(messages, settings(**extra)))
    assert out[0] == messages[0] and out[1]["content"][0] == messages[1]["content"][0]
    part = out[1]["content"][1]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    return decode_image(part["image_url"]["url"])


def failure(url: str, **extra) -> HTTPError:
    with pytest.raises(HTTPError) as caught:
        resolve(url, **extra)
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].content[1].image_url"
    return caught.value


def test_data_urls_and_raw_base64_become_data_urls():
    encoded = base64.b64encode(SMALL).decode()
    assert resolve("data:image/png;base64," + encoded) == SMALL
    assert resolve(encoded) == SMALL
    assert resolve(encoded[:40] + "\n" + encoded[40:]) == SMALL  # wrapped base64 is fine


def test_allowed_host_is_fetched(image_host):
    assert resolve(image_host + "/small.png") == SMALL
    assert resolve(image_host + "/redirect-in") == SMALL


def test_host_not_in_the_allowlist_is_refused_without_fetching(image_host):
    assert failure(image_host + "/small.png", image_url_hosts=[]).code == "image_url_not_allowed"
    assert failure("http://example.com/cat.png").code == "image_url_not_allowed"
    # A redirect may not leave the allowlist either.
    assert failure(image_host + "/redirect-out").code == "image_url_not_allowed"


def test_oversized_images_are_refused(image_host):
    assert len(BIG) > LIMIT
    assert failure(image_host + "/big.png").code == "image_too_large"
    assert failure(image_host + "/big-unannounced").code == "image_too_large"
    assert resolve(image_host + "/big.png", image_fetch_max_bytes=len(BIG)) == BIG


def test_slow_missing_and_non_image_answers_are_400s(image_host):
    started = time.monotonic()
    assert failure(image_host + "/slow.png").code == "image_fetch_failed"
    assert time.monotonic() - started < 2.5
    assert failure(image_host + "/missing.png").code == "image_fetch_failed"
    assert failure(image_host + "/text").code == "invalid_image"
    assert failure("data:image/png;base64,@@@").code == "invalid_image"
    assert failure("ftp://127.0.0.1/x.png").code == "invalid_image"


def test_urls_that_parsers_read_differently_are_refused_before_any_fetch(image_host):
    """One parser decides: a tab (or any whitespace or control character) before `@` once made the
    allowlist check and the HTTP client disagree about the host; credentials are refused too."""
    hits_before = _Images.hits
    port = image_host.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}\t@example.com/small.png", f"http://example.com\t@127.0.0.1:{port}/small.png",
                f"http://127.0.0.1:{port}/sm all.png", f"http://127.0.0.1:{port}/small.png\x00",
                f"http://127.0.0.1\n:{port}/small.png", f"http://user@127.0.0.1:{port}/small.png",
                f"http://user:pw@127.0.0.1:{port}/small.png"):
        assert failure(url).code == "invalid_image_url", url
        assert not host_allowed(url, ["127.0.0.1", "example.com"]), url
    assert _Images.hits == hits_before  # nothing was fetched
    assert resolve(image_host + "/small.png") == SMALL and _Images.hits == hits_before + 1


def test_host_allowlist_matching():
    allowed = ["example.com", "*.cdn.example.org", "127.0.0.1:8080", "[::1]"]
    assert host_allowed("https://EXAMPLE.com/a.png", allowed)
    assert host_allowed("http://img.cdn.example.org/a.png", allowed)
    assert not host_allowed("http://cdn.example.org/a.png", allowed)
    assert host_allowed("http://127.0.0.1:8080/a.png", allowed)
    assert not host_allowed("http://127.0.0.1:8081/a.png", allowed)
    assert host_allowed("http://[::1]:9000/a.png", allowed)
    assert not host_allowed("http://example.com.evil.net/a.png", allowed)
    assert not host_allowed("http://example.com@evil.net/a.png", allowed)
    assert not host_allowed("file://example.com/a.png", allowed)
