"""End to end: POST /v1/audio/speech on a real `nexa server`, through the official openai SDK.

The round trip is the real check: text -> the gateway's Piper voice (en_US-joe-medium, a
real voice from the package index) -> every response format -> the gateway's own Whisper
(whisper-tiny-en) -> most of the words back. Words are compared loosely (Whisper may spell
a word differently or drop one), never as an exact transcript.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Iterator

import httpx
import openai
import pytest

from gateway.media.speech_out import wav_header
from tests.conftest import Server, fetch_catalog, metric, models, wait_for, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TEXT = "The weather is cold today. My brother plays the piano every morning. Please open the kitchen window."
WORDS = re.findall(r"[a-z]+", TEXT.lower())


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    fetch_catalog("piper-joe")
    fetch_catalog("whisper-tiny-en")
    tmp = tmp_path_factory.mktemp("speech")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "piper-joe", "aliases": ["tts-1"], "source": "piper-joe", "preload": True, "n_threads": 2},
        {"name": "whisper-tiny-en", "aliases": ["whisper-1"], "source": "whisper-tiny-en", "preload": True,
         "options": {"vad_filter": False}},
    ])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def recovered(client: openai.OpenAI, audio: bytes, filename: str) -> float:
    """The share of the input's words that Whisper hears in `audio`."""
    text = client.audio.transcriptions.create(model="whisper-1", file=(filename, audio), language="en",
                                              temperature=0.0).text
    heard = set(re.findall(r"[a-z]+", text.lower()))
    return sum(word in heard for word in WORDS) / len(WORDS)


def seconds_of(data: bytes) -> float:
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_round_trip_through_whisper(client, fmt):
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt).content
    assert 4.0 < seconds_of(audio) < 15.0
    assert recovered(client, audio, f"speech.{fmt}") >= 0.7


def test_pcm_is_raw_24khz_samples(client):
    pcm = client.audio.speech.create(model="piper-joe", voice="nova", input=TEXT, response_format="pcm").content
    assert 4.0 < len(pcm) / 2 / 24000 < 15.0
    assert recovered(client, wav_header() + pcm, "speech.wav") >= 0.7


def test_audio_is_streamed_in_chunks_as_it_is_made(server):
    body = {"model": "piper-joe", "input": TEXT, "voice": "echo", "response_format": "pcm"}
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/pcm" and "content-length" not in response.headers
        pieces = [piece for piece in response.iter_raw() if piece]
    assert len(pieces) >= 2 and sum(map(len, pieces)) > 4 * 24000 * 2


def test_sse_sends_one_delta_per_sentence_then_the_usage(server):
    before = metric(server.url, "nexa_speech_audio_seconds_total", model="piper-joe")
    body = {"model": "piper-joe", "input": TEXT, "voice": "alloy", "response_format": "mp3", "stream_format": "sse"}
    response = httpx.post(server.url + "/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 3 and events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    usage = events[-1]["usage"]
    assert usage["seconds"] == pytest.approx(seconds_of(audio), abs=0.15)
    assert usage["input_tokens"] == usage["total_tokens"] > len(TEXT) // 2
    spoken = metric(server.url, "nexa_speech_audio_seconds_total", model="piper-joe") - before
    assert spoken == pytest.approx(usage["seconds"], abs=0.01)


def test_speed_makes_shorter_audio(client):
    normal = client.audio.speech.create(model="piper-joe", voice="alloy", input=TEXT, response_format="pcm").content
    fast = client.audio.speech.create(model="piper-joe", voice="alloy", input=TEXT, response_format="pcm",
                                      speed=2.0).content
    assert len(fast) < 0.75 * len(normal)


@pytest.mark.parametrize("body, status, param", [
    ({"voice": "nobody"}, 400, "voice"),
    ({"response_format": "ogg"}, 400, "response_format"),
    ({"speed": 5}, 400, "speed"),
    ({"input": ""}, 400, "input"),
    ({"input": "x" * 4097}, 400, "input"),
    ({"model": "whisper-tiny-en"}, 400, "model"),
    ({"model": "nope"}, 404, "model"),
])
def test_bad_requests_fail_before_any_audio(server, body, status, param):
    request = {"model": "piper-joe", "input": TEXT, "voice": "alloy", **body}
    response = httpx.post(server.url + "/v1/audio/speech", json=request, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_a_client_that_leaves_stops_synthesis(server, client):
    long_text = " ".join([TEXT] * 8)  # 24 sentences, about a minute of speech
    before = metric(server.url, "nexa_speech_audio_seconds_total", model="piper-joe")
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=120,
                      json={"model": "piper-joe", "input": long_text, "response_format": "pcm"}) as response:
        next(response.iter_raw())  # one sentence, then hang up
    wait_for(lambda: models(server.url)["piper-joe"]["running"] == 0, timeout=60)
    spoken = metric(server.url, "nexa_speech_audio_seconds_total", model="piper-joe") - before
    assert 0 < spoken < 20  # a few sentences, not the whole minute
    audio = client.audio.speech.create(model="piper-joe", voice="alloy", input="Still speaking.",
                                       response_format="wav").content
    assert seconds_of(audio) > 0.3


def test_openapi_document_lists_the_route(server):
    document = httpx.get(server.url + "/openapi.json", timeout=30).json()
    operation = document["paths"]["/v1/audio/speech"]["post"]
    assert "SpeechRequest" in str(operation["requestBody"])
    assert {"audio/mpeg", "audio/wav", "audio/pcm", "text/event-stream"} <= set(operation["responses"]["200"]["content"])
