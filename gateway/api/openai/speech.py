"""POST /v1/audio/speech: text to speech, as OpenAI's, streamed while it is made.

The voice speaks one sentence at a time on the model's thread; each sentence is
encoded there too (gateway/media/speech_out.py: mp3, opus, aac, flac, wav or
pcm, 24 kHz mono) and its bytes are sent at once, so playback starts before
synthesis ends. `stream_format: "sse"` sends the same bytes base64-encoded in
`speech.audio.delta` events, then `speech.audio.done` with the usage.

The first sentence is made before the answer starts, so a bad request (an
unknown voice, an input too long or with nothing to speak) or a model that
cannot load is a proper 4xx/5xx, not a broken stream. A client that leaves
stops synthesis at the next sentence.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from backends.base import Backend, Cancelled
from gateway.api.common import SSE_HEADERS, parse_body, sse
from gateway.http.core import HTTPError, Request, Route, StreamResponse
from gateway.http.errors import error_event
from gateway.media.speech_out import Encoder, media_type
from gateway.observability import metrics
from schemas.audio import SpeechRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway


def encoded(backend: Backend, body: SpeechRequest, model: str, cancelled: Cancelled) -> Iterator[tuple[str, Any]]:
    """On the model's thread: ("audio", bytes) per sentence, then ("done", usage)."""
    speaker = backend.speaker(body.voice)
    sentences = backend.sentences(body.input)
    encoder = Encoder(body.response_format, backend.sample_rate)
    for samples in backend.speak(sentences, speaker, body.speed, cancelled):
        metrics.SPEECH_SECONDS.labels(model).inc(len(samples) / backend.sample_rate)
        data = encoder.feed(samples)
        if data:
            yield "audio", data
    if cancelled():
        return
    tail = encoder.close()
    if tail:
        yield "audio", tail
    phonemes = sum(len(ids) for ids in sentences)
    yield "done", {"input_tokens": phonemes, "output_tokens": 0, "total_tokens": phonemes,
                   "seconds": round(encoder.seconds, 3)}


async def speech(gw: "Gateway", request: Request) -> StreamResponse:
    body: SpeechRequest = parse_body(SpeechRequest, request)
    handle = gw.select_model(body.model, "speech", request.path)
    items = handle.stream(lambda backend, cancelled: encoded(backend, body, handle.name, cancelled))
    try:
        first = await items.__anext__()  # errors before any audio become a proper status
    except StopAsyncIteration:
        raise HTTPError(500, "the voice produced no audio") from None
    except BaseException:
        await items.aclose()
        raise
    if body.stream_format == "sse":
        return StreamResponse(_sse(first, items), headers=dict(SSE_HEADERS))
    return StreamResponse(_audio(first, items), headers={"content-type": media_type(body.response_format),
                                                         "cache-control": "no-cache", "x-accel-buffering": "no"})


async def _audio(first: tuple[str, Any], items: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
    try:
        kind, value = first
        if kind == "audio":
            yield value
        async for kind, value in items:
            if kind == "audio":
                yield value
    finally:
        await items.aclose()


async def _sse(first: tuple[str, Any], items: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
    try:
        kind, value = first
        yield _event(kind, value)
        async for kind, value in items:
            yield _event(kind, value)
    except Exception as exc:  # noqa: BLE001 - a failure after the answer started: an error event ends the stream
        yield error_event(exc)
    finally:
        await items.aclose()


def _event(kind: str, value: Any) -> bytes:
    if kind == "audio":
        return sse({"type": "speech.audio.delta", "audio": base64.b64encode(value).decode("ascii")})
    return sse({"type": "speech.audio.done", "usage": value})


ROUTES = [
    Route("POST", "/v1/audio/speech", "speech", speech, request=SpeechRequest,
          response={"audio/mpeg": None, "audio/ogg": None, "audio/aac": None, "audio/flac": None,
                    "audio/wav": None, "audio/pcm": None, "text/event-stream": None}),
]
