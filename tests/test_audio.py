"""Speech to text below HTTP: multipart parsing, parameters, response formats,
audio decoding, and the Whisper backend on the real tiny.en model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from backends.errors import BackendError, LoadError
from backends.registry import ENGINES
from backends.whisper import (
    AudioDecodeError,
    EnglishOnlyError,
    Segment,
    TranscribeOptions,
    Transcript,
    WhisperBackend,
    Word,
    decode_audio,
    normalise_language,
)
from gateway.api.openai.audio import _params, render, timestamp, to_srt, to_vtt
from gateway.http.core import HTTPError, Request
from gateway.http.multipart import Form, parse_form, parse_multipart
from gateway.manifest.load import parse_text
from schemas.manifest import ModelFormat, ModelSpec, ModelType, ServerSettings
from tests.conftest import fetch_catalog
from tests.speech import DETERMINISTIC, ENGLISH, convert, reference, speak

pytestmark = pytest.mark.timeout(300)

BOUNDARY = "----nexa-test-boundary"


def multipart(*parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    """(field name, filename or None, content type or None, data) -> a multipart body."""
    out = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def form_request(body: bytes, query: str = "", content_type: str | None = None) -> Request:
    return Request("POST", "/v1/audio/transcriptions", query_string=query, body=body,
                   headers={"content-type": content_type or f"multipart/form-data; boundary={BOUNDARY}"})


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> bytes:
    return speak(ENGLISH, tmp_path_factory.mktemp("speech") / "en.wav").read_bytes()


# -- multipart -------------------------------------------------------------------


def test_files_are_keyed_by_field_name_with_filename_and_content_type():
    body = multipart(("model", None, None, b"whisper-1"),
                     ("file", "réunion.mp3", "audio/mpeg", b"\x00\x01ID3 bytes\r\n--not-a-boundary"),
                     ("timestamp_granularities[]", None, None, b"word"),
                     ("timestamp_granularities[]", None, None, b"segment"))
    form = parse_form(form_request(body))
    upload = form.file("file")
    assert upload is not None and form.file("réunion.mp3") is None
    assert upload.field == "file" and upload.filename == "réunion.mp3" and upload.content_type == "audio/mpeg"
    assert upload.data == b"\x00\x01ID3 bytes\r\n--not-a-boundary"
    assert form.value("model") == "whisper-1"
    assert form.values("timestamp_granularities[]") == ["word", "segment"]


def test_malformed_multipart_bodies_are_400s():
    whole = multipart(("file", "a.wav", "audio/wav", b"RIFF"))
    for body, content_type in [
        (whole[: len(whole) // 2], None),  # cut off before the closing boundary
        (whole, "multipart/form-data"),  # no boundary parameter
        (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: x\r\n\r\nno name\r\n--" + BOUNDARY.encode() + b"--\r\n", None),
    ]:
        with pytest.raises(HTTPError) as caught:
            parse_form(form_request(body, content_type=content_type))
        assert caught.value.status == 400


def test_other_content_types_say_what_to_send():
    with pytest.raises(HTTPError) as caught:
        parse_form(form_request(b'{"file": "x"}', content_type="application/json"))
    assert caught.value.status == 400 and caught.value.param == "file"
    assert "multipart/form-data" in caught.value.message
    urlencoded = parse_form(form_request(b"model=m&language=en", content_type="application/x-www-form-urlencoded"))
    assert urlencoded.value("language") == "en" and urlencoded.file("file") is None


def test_a_text_field_that_is_not_utf8_is_a_400():
    with pytest.raises(HTTPError) as caught:
        parse_multipart(multipart(("prompt", None, None, b"\xff\xfe")), f"multipart/form-data; boundary={BOUNDARY}")
    assert caught.value.param == "prompt"


# -- parameters ------------------------------------------------------------------


def test_form_fields_win_over_query_parameters():
    form = Form(fields={"beam_size": ["2"], "response_format": ["srt"]})
    params = _params(form_request(b"", query="beam_size=7&language=fr&temperature=0.4&response_format=vtt"), form)
    assert params.beam_size == 2 and params.response_format == "srt"  # from the form
    assert params.language == "fr" and params.temperature == pytest.approx(0.4)  # from the query
    defaults = _params(form_request(b""), Form())
    assert defaults.beam_size == 5 and defaults.response_format == "json" and defaults.temperature is None


def test_timestamp_granularities_in_both_spellings_and_bad_values():
    form = Form(fields={"timestamp_granularities[]": ["word", "segment"]})
    assert _params(form_request(b""), form).timestamp_granularities == ["word", "segment"]
    assert _params(form_request(b"", query="timestamp_granularities=word"), Form()).timestamp_granularities == ["word"]
    for fields, param in [({"beam_size": ["0"]}, "beam_size"), ({"temperature": ["1.5"]}, "temperature"),
                          ({"response_format": ["mp3"]}, "response_format"),
                          ({"timestamp_granularities[]": ["letter"]}, "timestamp_granularities")]:
        with pytest.raises(HTTPError) as caught:
            _params(form_request(b""), Form(fields=fields))
        assert caught.value.status == 400 and caught.value.param == param


def test_language_names_and_codes():
    assert normalise_language("EN") == "en" and normalise_language("en-US") == "en"
    assert normalise_language("French") == "fr" and normalise_language("yue") == "yue"
    assert normalise_language(None) is None
    with pytest.raises(BackendError):
        normalise_language("klingon")


# -- response formats --------------------------------------------------------------


def sample() -> Transcript:
    return Transcript(task="transcribe", language="en", language_probability=1.0, duration=3725.5, segments=[
        Segment(0, 0, 0.0, 1.5, " Hello there.", [1, 2], 0.0, -0.2, 1.1, 0.01, [Word(" Hello", 0.0, 0.7, 0.9)]),
        Segment(1, 150, 3723.25, 3725.5, " Bye.", [3], 0.2, -0.3, 0.9, 0.02),
    ])


def test_subtitle_timestamps():
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3723.25, ".") == "01:02:03.250"
    assert timestamp(59.9996, ",") == "00:01:00,000"


def test_srt_and_vtt():
    assert to_srt(sample()) == ("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
                                "2\n01:02:03,250 --> 01:02:05,500\nBye.\n\n")
    assert to_vtt(sample()) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
                                "01:02:03.250 --> 01:02:05.500\nBye.\n\n")


def test_json_text_and_verbose_json():
    import json

    plain = render(sample(), "json")
    assert json.loads(plain.body)["text"] == "Hello there. Bye."
    text = render(sample(), "text")
    assert text.body == b"Hello there. Bye." and text.headers["content-type"].startswith("text/plain")
    verbose = json.loads(render(sample(), "verbose_json").body)
    assert verbose["language"] == "english" and verbose["task"] == "transcribe" and verbose["duration"] == 3725.5
    assert [s["id"] for s in verbose["segments"]] == [0, 1] and "words" not in verbose
    assert set(verbose["segments"][0]) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                           "avg_logprob", "compression_ratio", "no_speech_prob"}
    with_words = json.loads(render(sample(), "verbose_json", words=True).body)
    assert with_words["words"] == [{"word": " Hello", "start": 0.0, "end": 0.7}]


# -- decoding --------------------------------------------------------------------


def test_decoding_real_speech_in_several_containers(wav):
    samples = decode_audio(wav)
    assert samples.dtype.name == "float32" and 2.0 < len(samples) / 16000 < 4.0
    assert 0.05 < float(abs(samples).max()) <= 1.0
    for container in ("mp3", "flac", "ogg", "webm"):
        decoded = decode_audio(convert(wav, container))
        assert abs(len(decoded) - len(samples)) < 16000 * 0.2, container


def test_what_is_not_audio_is_refused():
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    for data in (b"hello, this is text" * 50, png.getvalue(), b"RIFF\x00\x00\x00\x00WAVEfmt "):
        with pytest.raises(AudioDecodeError):
            decode_audio(data)


# -- the backend -------------------------------------------------------------------


def spec(**fields) -> ModelSpec:
    return ModelSpec(**{"name": "w", "source": "whisper-tiny-en", "type": "AUDIO", "format": "bin",
                        "device": "cpu", **fields})


def test_registry_and_manifest_settings(monkeypatch):
    assert ENGINES[(ModelType.AUDIO, ModelFormat.bin)].load_class() is WhisperBackend
    assert WhisperBackend.capabilities == {"transcribe", "translate"}
    assert ServerSettings().max_audio_bytes == 25 * 1024 * 1024
    manifest = parse_text("server: {max_audio_bytes: 1000}\nmodels: [{name: w, source: whisper-base}]")
    assert manifest.server.max_audio_bytes == 1000
    assert (manifest.models[0].type, manifest.models[0].format) == (ModelType.AUDIO, ModelFormat.bin)
    monkeypatch.setenv("NEXA_MAX_AUDIO_BYTES", "2000")
    assert parse_text("server: {max_audio_bytes: 1000}\nmodels: [{name: w, source: whisper-base}]"
                      ).server.max_audio_bytes == 2000


def test_load_errors_are_clear(tmp_path: Path):
    with pytest.raises(LoadError, match="not a CTranslate2 Whisper folder"):
        WhisperBackend.load(spec(), tmp_path)
    folder = fetch_catalog("whisper-tiny-en")
    with pytest.raises(LoadError, match="unknown faster-whisper option"):
        WhisperBackend.load(spec(options={"beam_width": 3}), folder)
    with pytest.raises(LoadError, match="download_root"):  # a hub option is never taken from a manifest
        WhisperBackend.load(spec(options={"download_root": "/tmp"}), folder)
    with pytest.raises(LoadError, match="max_audio_seconds"):
        WhisperBackend.load(spec(options={"max_audio_seconds": "long"}), folder)
    with pytest.raises(LoadError, match="cpu or cuda"):
        WhisperBackend.load(spec(device="metal"), folder)


TINY_OPTIONS = {"vad_filter": False, **DETERMINISTIC}


@pytest.fixture(scope="module")
def tiny() -> WhisperBackend:
    backend = WhisperBackend.load(spec(n_threads=2, options=TINY_OPTIONS), fetch_catalog("whisper-tiny-en"))
    yield backend
    backend.close()


def test_tiny_en_transcribes_and_is_english_only(tiny, wav):
    assert tiny.device == "cpu" and tiny.compute_type == "int8"
    assert tiny.multilingual is False and tiny.capabilities == {"transcribe"}
    result = tiny.transcribe(decode_audio(wav), TranscribeOptions(word_timestamps=True))
    # the same text as faster-whisper called directly with the same settings (never words named here)
    assert result.text and result.text == reference(fetch_catalog("whisper-tiny-en"), wav, cpu_threads=2,
                                                    options={**TINY_OPTIONS, "word_timestamps": True})
    assert result.language == "en" and result.language_name == "english"
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert all(isinstance(w.start, float) for s in result.segments for w in s.words or ())
    with pytest.raises(EnglishOnlyError, match="English-only and cannot translate"):
        tiny.transcribe(decode_audio(wav), TranscribeOptions(task="translate"))
    with pytest.raises(EnglishOnlyError, match="cannot transcribe french"):
        tiny.transcribe(decode_audio(wav), TranscribeOptions(language="fr"))


def test_prompt_and_temperature_reach_the_engine(tiny, wav):
    audio = decode_audio(wav)
    greedy = tiny.transcribe(audio, TranscribeOptions(beam_size=1, temperature=0.0))
    assert all(s.temperature == 0.0 for s in greedy.segments)
    hot = tiny.transcribe(audio, TranscribeOptions(beam_size=1, temperature=0.9))
    assert hot.segments and all(s.temperature == pytest.approx(0.9) for s in hot.segments)


# -- English-only, known before loading --------------------------------------------


def test_english_only_is_known_from_the_files_before_loading(tmp_path):
    from backends.whisper import MULTILINGUAL_VOCABULARY, english_only_files

    tiny = fetch_catalog("whisper-tiny-en")
    assert WhisperBackend.capabilities_of(spec(), tiny) == {"transcribe"}  # its vocabulary says so
    english, multilingual, named = tmp_path / "a", tmp_path / "b", tmp_path / "faster-whisper-base.en"
    for folder, tokens in ((english, MULTILINGUAL_VOCABULARY - 1), (multilingual, MULTILINGUAL_VOCABULARY)):
        folder.mkdir()
        (folder / "vocabulary.txt").write_text("".join(f"t{i}\n" for i in range(tokens)))
    named.mkdir()
    assert english_only_files(english) and not english_only_files(multilingual) and english_only_files(named)
    assert WhisperBackend.capabilities_of(spec(), multilingual) == {"transcribe", "translate"}
    assert WhisperBackend.capabilities_of(spec(), None) == {"transcribe", "translate"}  # nothing on disk yet


def test_the_cards_know_before_loading(tmp_path):
    from gateway.models.state import capabilities_before_load

    local = tmp_path / "whisper-small.en"
    local.mkdir()
    assert capabilities_before_load(spec(source="whisper-tiny-en")) == {"transcribe"}  # the catalog says so
    assert capabilities_before_load(spec(source="whisper-base")) == {"transcribe", "translate"}
    assert capabilities_before_load(spec(source=str(local))) == {"transcribe"}

