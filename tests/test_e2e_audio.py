"""End to end: a real `nexa server` with the real Whisper tiny.en and base models,
real speech from espeak-ng, spoken to with the official openai SDK and httpx.

What a model hears depends on the CPU's kernels and on espeak-ng's build, so no test
here names the words: quality is compared with faster-whisper run in this process on
the same bytes with the same settings (tests.speech.reference), and routing is read
from the `x-nexa-model` header and the model cards."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from tests.conftest import Server, fetch_catalog, metric, models, write_manifest
from tests.speech import (
    CONTENT_TYPES,
    DETERMINISTIC,
    ENGLISH,
    FORMATS,
    FRENCH,
    convert,
    reference,
    reference_segments,
    speak,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300),
              # The openai SDK marks audio.translations as deprecated; the route is still part of the API.
              pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")]

TRANSCRIBE = "/v1/audio/transcriptions"
TRANSLATE = "/v1/audio/translations"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("speech")
    english = speak(ENGLISH, tmp / "en.wav").read_bytes()
    files = {"wav": english, "fr.wav": speak(FRENCH, tmp / "fr.wav", voice="fr").read_bytes()}
    files.update({container: convert(english, container) for container in FORMATS})
    return files


@pytest.fixture(scope="module")
def folders() -> dict[str, Path]:
    return {name: fetch_catalog(name) for name in ("whisper-tiny-en", "whisper-base")}


def expected(folders: dict[str, Path], model: str, audio: bytes, **settings) -> str:
    """The in-process reference for a model of `audio_server` (same options)."""
    return reference(folders[model], audio, options=DETERMINISTIC, **settings)


@pytest.fixture(scope="module")
def audio_server(tmp_path_factory, folders) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("audio")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "whisper-tiny-en", "aliases": ["whisper-1"], "source": "whisper-tiny-en", "device": "cpu",
         "preload": True, "options": DETERMINISTIC},
        {"name": "whisper-base", "source": "whisper-base", "device": "cpu", "preload": True, "options": DETERMINISTIC},
    ])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(audio_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=audio_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(server: Server, path: str, files: dict | None = None, data: dict | None = None,
         params: dict | None = None) -> httpx.Response:
    return httpx.post(server.url + path, files=files, data=data, params=params, timeout=120)


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


# -- transcription -------------------------------------------------------------


def test_openai_sdk_transcribes_real_speech(client, speech, folders):
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-tiny-en",
                                                               file=("fox.wav", speech["wav"], "audio/wav"))
    assert raw.headers["x-nexa-model"] == "whisper-tiny-en"
    result = raw.parse()
    assert result.text and result.text == expected(folders, "whisper-tiny-en", speech["wav"])
    # whisper-1 (the SDK examples' name) is an alias of tiny.en in this manifest.
    aliased = client.audio.transcriptions.with_raw_response.create(model="whisper-1",
                                                                   file=("fox.wav", speech["wav"], "audio/wav"))
    assert aliased.headers["x-nexa-model"] == "whisper-tiny-en" and aliased.parse().text == result.text


def test_nexa_style_query_parameters_and_no_model(audio_server, speech, folders):
    response = post(audio_server, TRANSCRIBE, files={"file": ("fox.wav", speech["wav"], "audio/wav")},
                    params={"beam_size": 3, "language": "en", "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-nexa-model"] == "whisper-tiny-en"  # the first declared speech model
    assert response.json()["text"] == expected(folders, "whisper-tiny-en", speech["wav"], beam_size=3, language="en")


@pytest.mark.parametrize("container", sorted(FORMATS))
def test_every_container_format_is_decoded(client, speech, container, folders):
    upload = (f"fox.{container}", speech[container], CONTENT_TYPES[container])
    result = client.audio.transcriptions.create(model="whisper-tiny-en", file=upload)
    assert result.text and result.text == expected(folders, "whisper-tiny-en", speech[container]), container


def test_response_format_text(client, audio_server, speech, folders):
    text = client.audio.transcriptions.create(model="whisper-tiny-en", file=("a.wav", speech["wav"]),
                                              response_format="text")
    assert isinstance(text, str) and text.strip() == expected(folders, "whisper-tiny-en", speech["wav"])
    raw = post(audio_server, TRANSCRIBE, files={"file": ("a.wav", speech["wav"])}, data={"response_format": "text"})
    assert raw.headers["content-type"].startswith("text/plain")
    assert not raw.text.lstrip().startswith("{")


def test_response_format_srt(client, speech, folders):
    srt = client.audio.transcriptions.create(model="whisper-tiny-en", file=("a.wav", speech["wav"]),
                                             response_format="srt")
    blocks = [b for b in srt.strip().split("\n\n") if b]
    assert blocks, srt
    for number, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(number)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", lines[1]), lines[1]
    segments = reference_segments(folders["whisper-tiny-en"], speech["wav"], options=DETERMINISTIC)
    assert ["\n".join(block.split("\n")[2:]) for block in blocks] == [s.strip() for s in segments]


def test_response_format_vtt(client, speech, folders):
    vtt = client.audio.transcriptions.create(model="whisper-tiny-en", file=("a.wav", speech["wav"]),
                                             response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.*)$", vtt, re.M)
    assert cues and all(start <= end for start, end, _ in cues)
    segments = reference_segments(folders["whisper-tiny-en"], speech["wav"], options=DETERMINISTIC)
    assert [text for _, _, text in cues] == [s.strip() for s in segments]


def test_response_format_verbose_json(client, speech, folders):
    result = client.audio.transcriptions.create(model="whisper-tiny-en", file=("a.wav", speech["wav"]),
                                                response_format="verbose_json")
    assert result.language == "english"
    assert result.task == "transcribe"
    assert 2.0 < result.duration < 4.0  # espeak speaks the sentence in about 2.8 s
    assert result.text == expected(folders, "whisper-tiny-en", speech["wav"])
    assert result.words is None  # only when asked for
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    for segment in result.segments:
        assert 0 <= segment.start < segment.end <= result.duration + 0.5
        assert segment.tokens and all(isinstance(t, int) for t in segment.tokens)
        assert segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1
        assert segment.compression_ratio > 0 and segment.temperature == 0  # no fallback with these options
    assert "".join(s.text for s in result.segments).strip() == result.text


def test_word_timestamps_only_when_asked(client, speech):
    result = client.audio.transcriptions.create(model="whisper-tiny-en", file=("a.wav", speech["wav"]),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    assert result.words and "".join(w.word for w in result.words).strip() == result.text
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and all(w.start <= w.end for w in result.words)


def test_form_fields_win_over_query_parameters(audio_server, speech):
    response = post(audio_server, TRANSCRIBE, files={"file": ("a.wav", speech["wav"])},
                    data={"response_format": "vtt", "beam_size": "5"},
                    params={"response_format": "srt", "beam_size": "0"})  # the query's beam_size alone is a 400
    assert response.status_code == 200, response.text
    assert response.text.startswith("WEBVTT")
    only_query = post(audio_server, TRANSCRIBE, files={"file": ("a.wav", speech["wav"])}, params={"beam_size": "0"})
    assert only_query.status_code == 400 and error(only_query)["param"] == "beam_size"


# -- translation ---------------------------------------------------------------


def test_translation_of_french_speech_into_english(client, speech, folders):
    upload = ("bonjour.wav", speech["fr.wav"], "audio/wav")
    raw = client.audio.translations.with_raw_response.create(model="whisper-base", file=upload,
                                                             response_format="verbose_json")
    assert raw.headers["x-nexa-model"] == "whisper-base"
    translated = raw.parse()
    assert translated.task == "translate"
    assert translated.language == "french"
    assert translated.text and translated.text == expected(folders, "whisper-base", speech["fr.wav"], task="translate")
    transcribed = client.audio.transcriptions.create(model="whisper-base", file=upload)
    assert transcribed.text and transcribed.text == expected(folders, "whisper-base", speech["fr.wav"])


def test_english_only_model_cannot_translate(client, audio_server, speech):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="whisper-tiny-en", file=("a.wav", speech["fr.wav"]))
    assert caught.value.status_code == 400
    body = caught.value.body
    assert "English-only" in body["message"] and "cannot translate" in body["message"]
    assert body["param"] == "model"
    # Without `model`, the gateway skips the English-only model and translates with whisper-base.
    routed = post(audio_server, TRANSLATE, files={"file": ("a.wav", speech["fr.wav"])})
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-nexa-model"] == "whisper-base" and routed.json()["text"]


# -- refusals ------------------------------------------------------------------


def test_upload_that_is_not_audio_is_a_400(audio_server):
    response = post(audio_server, TRANSCRIBE, files={"file": ("notes.txt", b"these are not sound waves " * 40,
                                                              "text/plain")})
    assert response.status_code == 400
    assert error(response)["param"] == "file" and error(response)["code"] == "invalid_audio"
    assert "as audio" in error(response)["message"] and "notes.txt" in error(response)["message"]


def test_empty_and_missing_file_are_400s(audio_server):
    empty = post(audio_server, TRANSCRIBE, files={"file": ("empty.wav", b"", "audio/wav")})
    assert empty.status_code == 400 and error(empty)["code"] == "empty_file"
    missing = post(audio_server, TRANSCRIBE, files={"other": ("a.wav", b"RIFF", "audio/wav")},
                   data={"model": "whisper-tiny-en"})
    assert missing.status_code == 400
    assert error(missing)["param"] == "file" and error(missing)["code"] == "missing_file"
    as_json = httpx.post(audio_server.url + TRANSCRIBE, json={"file": "a.wav"}, timeout=30)
    assert as_json.status_code == 400 and error(as_json)["param"] == "file"


def test_bad_parameters_are_400s(audio_server, speech):
    upload = {"file": ("a.wav", speech["wav"])}
    cases = [({"response_format": "mp4"}, "response_format"), ({"temperature": "3"}, "temperature"),
             ({"language": "klingon"}, "language"), ({"stream": "true"}, "stream")]
    for data, param in cases:
        response = post(audio_server, TRANSCRIBE, files=upload, data=data)
        assert response.status_code == 400, (data, response.text)
        assert error(response)["param"] == param
    french = post(audio_server, TRANSCRIBE, files=upload, data={"model": "whisper-tiny-en", "language": "fr"})
    assert french.status_code == 400 and "English-only" in error(french)["message"]
    unknown = post(audio_server, TRANSCRIBE, files=upload, data={"model": "whisper-huge"})
    assert unknown.status_code == 404 and error(unknown)["code"] == "model_not_found"


def test_models_list_the_speech_models(client):
    models = {m.id: m for m in client.models.list()}
    assert {"whisper-tiny-en", "whisper-base"} <= set(models)
    assert models["whisper-base"].model_extra["capabilities"] == ["transcribe", "translate"]
    assert models["whisper-tiny-en"].model_extra["capabilities"] == ["transcribe"]


# -- routing before anything loads, limits --------------------------------------


def test_size_and_duration_limits_and_translation_routing(start_server, tmp_path: Path, speech):
    manifest = write_manifest(tmp_path / "nexa.yaml", [
        {"name": "whisper-tiny-en", "source": "whisper-tiny-en", "device": "cpu"},
        {"name": "whisper-base", "source": "whisper-base", "device": "cpu", "options": {"max_audio_seconds": 2.6}},
    ], server={"max_audio_bytes": 1_000_000})
    # The environment overrides the manifest's server section.
    server = start_server(["-c", str(manifest)], env={"NEXA_MAX_AUDIO_BYTES": "200000"})
    # Before anything loads, the cards already know that tiny.en is English-only (the catalog says so).
    cards = models(server.url)
    assert cards["whisper-tiny-en"]["state"] == "unloaded" and cards["whisper-base"]["state"] == "unloaded"
    assert cards["whisper-tiny-en"]["capabilities"] == ["transcribe"]
    assert cards["whisper-base"]["capabilities"] == ["transcribe", "translate"]
    # No `model`: the translation goes straight to whisper-base; tiny.en is never loaded for it.
    routed = post(server, TRANSLATE, files={"file": ("fr.wav", speech["fr.wav"])})
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-nexa-model"] == "whisper-base"
    assert models(server.url)["whisper-tiny-en"]["state"] == "unloaded"
    assert metric(server.url, "nexa_model_loads_total", model="whisper-tiny-en") == 0
    too_big = post(server, TRANSCRIBE, files={"file": ("big.wav", b"\0" * 200_001)})
    assert too_big.status_code == 413
    assert error(too_big)["param"] == "file" and "200000" in error(too_big)["message"]
    at_limit = post(server, TRANSCRIBE, files={"file": ("big.wav", b"\0" * 200_000)})
    assert at_limit.status_code == 400 and error(at_limit)["code"] == "invalid_audio"
    transcribed = post(server, TRANSCRIBE, files={"file": ("a.mp3", speech["mp3"])})
    assert transcribed.status_code == 200 and transcribed.headers["x-nexa-model"] == "whisper-tiny-en"
    assert models(server.url)["whisper-tiny-en"]["capabilities"] == ["transcribe"]  # the same once loaded
    # 2.8 s of speech is over whisper-base's 2.6 s; tiny.en has no such limit.
    too_long = post(server, TRANSCRIBE, files={"file": ("a.mp3", speech["mp3"])}, data={"model": "whisper-base"})
    assert too_long.status_code == 400 and error(too_long)["code"] == "audio_too_long"


def test_gateway_without_speech_models_does_not_serve_audio_routes(start_server, tmp_path: Path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "chat", "source": "smollm2", "preload": False}])
    server = start_server(["-c", str(manifest)])
    for path in (TRANSCRIBE, TRANSLATE):
        response = post(server, path, files={"file": ("a.wav", b"RIFF....WAVE", "audio/wav")})
        assert response.status_code == 404
        assert error(response)["code"] == "route_not_served"
