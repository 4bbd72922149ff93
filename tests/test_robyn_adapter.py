"""The Robyn adapter's translations, without a server: the rebuilt multipart body
and query string must read like the originals, and the stream bridge must close
the gateway's iterator when Robyn drops it (how a client disconnect shows)."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from gateway.http.core import Request
from gateway.http.multipart import parse_form
from gateway.servers.robyn import StreamBridge, query_string, rebuild_multipart

pytestmark = pytest.mark.timeout(60)


class Params:
    """What Robyn's QueryParams gives: raw (still percent-encoded) pairs."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def multi_items(self) -> list[tuple[str, str]]:
        return self.pairs


def test_rebuilt_multipart_body_parses_with_field_names_and_bytes():
    audio = bytes(range(256)) * 8 + b"\r\n--not-a-boundary\r\n"
    body, content_type = rebuild_multipart({"language": "en", "prompt": 'say "hi"\r\nthen stop'},
                                           {'my "fox".wav': audio})
    assert content_type.startswith("multipart/form-data; boundary=nexa-")
    form = parse_form(Request("POST", "/v1/audio/transcriptions", headers={"content-type": content_type},
                              body=body))
    assert form.value("language") == "en"
    assert form.value("prompt") == 'say "hi"\r\nthen stop'
    upload = form.file("file")
    assert upload is not None and upload.data == audio
    assert upload.filename == "my %22fox%22.wav" and upload.content_type in ("audio/x-wav", "audio/wav")


def test_rebuilt_query_string_decodes_like_the_original():
    raw = [("model", "no%20such+model"), ("timestamp_granularities%5B%5D", "word"),
           ("timestamp_granularities%5B%5D", "segment"), ("flag", ""), ("eq", "a=b")]
    request = Request("GET", "/", query_string=query_string(Params(raw)))
    assert request.query == {"model": ["no such model"], "timestamp_granularities[]": ["word", "segment"],
                             "flag": [""], "eq": ["a=b"]}
    assert request.query_value("model") == "no such model"


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_stream_bridge_pulls_every_chunk_then_reports_the_end_once(loop):
    ended: list[object] = []

    async def chunks():
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    source = chunks()
    bridge = StreamBridge(source, loop, ended.append)
    assert list(bridge) == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert list(bridge) == []
    del bridge
    gc.collect()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
    assert ended == [source]


def test_dropping_the_bridge_mid_stream_closes_the_source(loop):
    closed = threading.Event()
    ended: list[object] = []

    async def chunks():
        try:
            while True:
                yield b"data: x\n\n"
        finally:
            closed.set()

    def end(source) -> None:  # what the adapter does, on the loop
        ended.append(source)
        asyncio.ensure_future(source.aclose())

    source = chunks()
    bridge = StreamBridge(source, loop, end)
    assert next(bridge) == b"data: x\n\n"
    del bridge  # what Robyn does when the client has gone (`source` itself stays referenced)
    gc.collect()
    assert closed.wait(5)
    assert ended == [source]
