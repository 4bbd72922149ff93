"""Speech to text: POST /v1/audio/transcriptions and /v1/audio/translations.

The upload is multipart/form-data with the audio in a field named `file`.
Parameters come as form fields (OpenAI clients) or as query parameters
(clients of the original `nexa server`); a form field wins over a query
parameter of the same name. Decoding runs in a worker thread (PyAV) before
the request queues for the model, so an upload that is not audio is refused
at once; the transcription itself runs on the model's own thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from backends.errors import BackendError
from backends.whisper import (
    SAMPLE_RATE,
    AudioDecodeError,
    EnglishOnlyError,
    TranscribeOptions,
    Transcript,
    decode_audio,
    normalise_language,
)
from gateway.api.common import note_unknown_fields
from gateway.http.core import HTTPError, Request, Response, Route, json_response
from gateway.http.multipart import Form, parse_form
from gateway.models.handle import ModelHandle
from schemas.audio import (
    AudioParams,
    AudioUpload,
    DurationUsage,
    Transcription,
    TranscriptionSegment,
    TranscriptionWord,
    VerboseTranscription,
)

if TYPE_CHECKING:
    from gateway.api.context import Gateway

log = logging.getLogger("nexa.gateway.api.openai.audio")

PARAMS = ("model", "language", "prompt", "response_format", "temperature", "beam_size", "stream")
# Room for the other form fields and the multipart framing around the file.
FORM_OVERHEAD = 1024 * 1024


async def transcriptions(gw: "Gateway", request: Request) -> Response:
    return await _speech_to_text(gw, request, "transcribe")


async def translations(gw: "Gateway", request: Request) -> Response:
    return await _speech_to_text(gw, request, "translate")


async def _speech_to_text(gw: "Gateway", request: Request, task: str) -> Response:
    limit = gw.manifest.server.max_audio_bytes
    if len(request.body) > limit + FORM_OVERHEAD:
        raise _too_large(limit)
    form = await asyncio.to_thread(parse_form, request)
    upload = form.file("file")
    if upload is None:
        if form.value("file") is not None:
            raise HTTPError(400, "The 'file' field must be a file upload (a multipart part with a filename), "
                                 "not a text field.", param="file", code="invalid_file")
        raise HTTPError(400, "No audio file: send it as multipart/form-data in a field named 'file'.",
                        param="file", code="missing_file")
    if upload.size > limit:
        raise _too_large(limit, upload.size)
    if upload.size == 0:
        named = f" {upload.filename!r}" if upload.filename else ""
        raise HTTPError(400, f"The uploaded file{named} is empty.", param="file", code="empty_file")
    params = _params(request, form)
    if params.stream:
        raise HTTPError(400, "Streaming transcription is not supported; omit 'stream'.", param="stream",
                        code="invalid_value")
    try:
        language = normalise_language(params.language)
    except BackendError as exc:
        raise HTTPError(400, str(exc), param="language", code="invalid_value") from None
    handle = _select(gw, params.model, task, request.path)

    try:
        audio = await asyncio.to_thread(decode_audio, upload.data)
    except AudioDecodeError as exc:
        name = f"{upload.filename!r}" if upload.filename else "the upload"
        kind = f" ({upload.content_type})" if upload.content_type else ""
        raise HTTPError(400, f"Could not read {name}{kind} as audio: {exc}. Send wav, mp3, flac, ogg, webm, m4a "
                             "or another format FFmpeg decodes.", param="file", code="invalid_audio") from None
    seconds = len(audio) / SAMPLE_RATE
    _check_length(handle, seconds)

    verbose = params.response_format == "verbose_json"
    options = TranscribeOptions(task=task, language=language, prompt=params.prompt, temperature=params.temperature,
                                beam_size=params.beam_size,
                                word_timestamps=verbose and "word" in params.timestamp_granularities)
    started = time.perf_counter()
    transcript, handle = await _run(gw, handle, params.model is None, audio, options, request.path)
    elapsed = time.perf_counter() - started
    log.info("%s %.1fs of audio with %s in %.2fs", task, transcript.duration, handle.name, elapsed,
             extra={"event": "speech_to_text", "task": task, "model": handle.name, "audio_s": round(seconds, 3),
                    "ms": round(elapsed * 1000, 1), "language": transcript.language,
                    "segments": len(transcript.segments), "request_id": request.state.get("request_id")})
    return render(transcript, params.response_format, words=options.word_timestamps)


def _too_large(limit: int, size: int | None = None) -> HTTPError:
    got = f" (got {size} bytes)" if size is not None else ""
    return HTTPError(413, f"The audio file is larger than this gateway's limit of {limit} bytes{got}.",
                     param="file", code="file_too_large")


def _params(request: Request, form: Form) -> AudioParams:
    note_unknown_fields(request, form.fields, {*PARAMS, "timestamp_granularities[]", "timestamp_granularities"})
    raw: dict[str, Any] = {}
    for name in PARAMS:
        value = form.value(name)
        if value is None:
            value = request.query_value(name)
        if value is not None:
            raw[name] = value
    granularities = form.values("timestamp_granularities[]") + form.values("timestamp_granularities")
    if not granularities:
        query = request.query
        granularities = query.get("timestamp_granularities[]", []) + query.get("timestamp_granularities", [])
    if granularities:
        raw["timestamp_granularities"] = granularities
    try:
        return AudioParams.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        raise HTTPError(400, f"Invalid value for '{param}': {err['msg']}" if param else err["msg"],
                        param=param, code="invalid_value") from None


def _english_only(handle: ModelHandle) -> bool:
    """A speech model that cannot translate: known before loading (the catalog entry or the
    model's vocabulary, see capabilities_before_load), confirmed by faster-whisper once loaded."""
    return "transcribe" in handle.capabilities and "translate" not in handle.capabilities


def _english_only_error(handle: ModelHandle) -> HTTPError:
    return HTTPError(400, f"model {handle.name!r} is English-only and cannot translate; "
                          "use a multilingual Whisper model", param="model", code="model_not_capable")


def _select(gw: "Gateway", name: str | None, task: str, path: str) -> ModelHandle:
    """The gateway's selection, plus what matters for English-only models: a clear 400 when
    one is named for a translation, and skipping a loaded one when the gateway chooses."""
    if task == "translate" and name:
        handle = gw.pool.get(name)
        if handle is not None and _english_only(handle):
            raise _english_only_error(handle)
    try:
        handle = gw.select_model(name, task, path)
    except HTTPError as exc:
        english = [h for h in gw.pool if _english_only(h)] if task == "translate" and not name else []
        if exc.status == 404 and english:
            raise _english_only_error(english[0]) from None
        raise
    if task == "translate" and not name and _english_only(handle):
        following = _next_translator(gw, handle, path)
        if following is None:
            raise _english_only_error(handle)
        handle = following
    return handle


async def _run(gw: "Gateway", handle: ModelHandle, chosen_by_gateway: bool, audio: Any,
               options: TranscribeOptions, path: str) -> tuple[Transcript, ModelHandle]:
    """Transcribe on the model's thread. A translation the gateway routed on its own
    (no `model` given) moves on to the next declared model when the first turns out,
    once loaded, to be English-only: clients of the original server never name a model."""
    first_error: EnglishOnlyError | None = None
    while True:
        _check_length(handle, len(audio) / SAMPLE_RATE)
        try:
            return await handle.call(lambda backend: backend.transcribe(audio, options)), handle
        except EnglishOnlyError as exc:
            first_error = first_error or exc
            may_move_on = chosen_by_gateway and options.task == "translate"
            following = _next_translator(gw, handle, path) if may_move_on else None
            if following is None:
                raise HTTPError(400, str(first_error), param="model" if options.task == "translate" else "language",
                                code="model_not_capable") from None
            handle = following


def _next_translator(gw: "Gateway", after: ModelHandle, path: str) -> ModelHandle | None:
    """The next declared model after `after` that may translate, selected by name so that
    every check the gateway makes on a named model applies."""
    handles = list(gw.pool)
    for handle in handles[handles.index(after) + 1:]:
        if "translate" in handle.capabilities and not _english_only(handle):
            try:
                return gw.select_model(handle.name, "translate", path)
            except HTTPError:
                continue
    return None


def _check_length(handle: ModelHandle, seconds: float) -> None:
    """The optional per-model `options.max_audio_seconds`, checked on the decoded audio."""
    value = handle.spec.options.get("max_audio_seconds")
    try:
        limit = float(value) if value is not None else None
    except (TypeError, ValueError):
        return  # the backend refuses to load with such an option, and the request reports that
    if limit is not None and limit > 0 and seconds > limit:
        raise HTTPError(400, f"The audio is {seconds:.1f} s long; model {handle.name!r} accepts at most "
                             f"{limit:g} s.", param="file", code="audio_too_long")


# -- response formats ------------------------------------------------------------


def render(transcript: Transcript, response_format: str, *, words: bool = False) -> Response:
    if response_format == "text":
        return _plain(transcript.text, "text/plain")
    if response_format == "srt":
        return _plain(to_srt(transcript), "text/plain")
    if response_format == "vtt":
        return _plain(to_vtt(transcript), "text/vtt")
    usage = DurationUsage(seconds=round(transcript.duration, 3))
    if response_format == "verbose_json":
        body = VerboseTranscription(
            task=transcript.task, language=transcript.language_name, duration=round(transcript.duration, 3),
            text=transcript.text, usage=usage,
            segments=[TranscriptionSegment(id=s.id, seek=s.seek, start=s.start, end=s.end, text=s.text,
                                           tokens=s.tokens, temperature=s.temperature, avg_logprob=s.avg_logprob,
                                           compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob)
                      for s in transcript.segments],
            words=[TranscriptionWord(word=w.word, start=w.start, end=w.end)
                   for s in transcript.segments for w in (s.words or ())] if words else None,
        )
        return json_response(body.model_dump(mode="json", exclude_none=True))
    return json_response(Transcription(text=transcript.text, usage=usage).model_dump(mode="json"))


def _plain(text: str, content_type: str) -> Response:
    return Response(200, {"content-type": f"{content_type}; charset=utf-8"}, text.encode("utf-8"))


def timestamp(seconds: float, separator: str) -> str:
    """12.5 -> '00:00:12,500' (SubRip) or '00:00:12.500' (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    return "".join(f"{n}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n\n"
                   for n, s in enumerate(transcript.segments, 1))


def to_vtt(transcript: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n\n"
                                  for s in transcript.segments)


# json and verbose_json answers are JSON; text and srt are text/plain, vtt text/vtt.
ANSWERS = {"application/json": Transcription | VerboseTranscription, "text/plain": str, "text/vtt": str}

ROUTES = [
    Route("POST", "/v1/audio/transcriptions", "transcribe", transcriptions,
          request={"multipart/form-data": AudioUpload}, response=ANSWERS),
    Route("POST", "/v1/audio/translations", "translate", translations,
          request={"multipart/form-data": AudioUpload}, response=ANSWERS),
]
