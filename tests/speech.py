"""Real speech for the audio tests: espeak-ng speaks a sentence into a WAV file,
and PyAV (a faster-whisper dependency) re-encodes it into other containers."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ENGLISH = "the quick brown fox jumps over the lazy dog"
FRENCH = "bonjour, je m'appelle Pierre et j'habite à Paris"

# container -> (PyAV muxer, codec, sample rate or None for the source's)
FORMATS = {
    "mp3": ("mp3", "libmp3lame", None),
    "flac": ("flac", "flac", None),
    "ogg": ("ogg", "libopus", 48000),
    "webm": ("webm", "libopus", 48000),
    "m4a": ("mp4", "aac", None),
}
CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg",
                 "webm": "audio/webm", "m4a": "audio/mp4"}


def speak(text: str, path: Path, voice: str = "en") -> Path:
    """Speak `text` into a WAV file with espeak-ng (scripts/test.sh installs it)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed: `apt-get install -y espeak-ng` (scripts/test.sh does this)")
    subprocess.run([espeak, "-v", voice, "-w", str(path), text], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert path.stat().st_size > 10_000, "espeak-ng wrote no speech"
    return path


def convert(wav: bytes, container: str) -> bytes:
    """Re-encode WAV bytes as mp3, flac, ogg (opus), webm (opus) or m4a (aac), mono."""
    import av

    muxer, codec, rate = FORMATS[container]
    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as src, av.open(out, "w", format=muxer) as dst:
        source = src.streams.audio[0]
        rate = rate or source.rate
        stream = dst.add_stream(codec, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame_size = stream.codec_context.frame_size or 0
        fifo = av.AudioFifo()

        def encode(frame) -> None:
            for packet in stream.encode(frame):
                dst.mux(packet)

        for frame in src.decode(source):
            for resampled in resampler.resample(frame):
                fifo.write(resampled)
                while fifo.samples >= max(frame_size, 1):
                    encode(fifo.read(frame_size or fifo.samples))
        for resampled in resampler.resample(None):
            fifo.write(resampled)
        if fifo.samples:
            encode(fifo.read(fifo.samples))
        encode(None)
    return out.getvalue()


# Manifest `options` that make Whisper's decoding deterministic: without these thresholds,
# faster-whisper never falls back to sampling at higher temperatures, so the gateway and an
# in-process run on the same bytes give the same text.
DETERMINISTIC = {"compression_ratio_threshold": None, "log_prob_threshold": None}


@functools.lru_cache(maxsize=4)
def _whisper(folder: str, cpu_threads: int) -> Any:
    from faster_whisper import WhisperModel

    # As backends/whisper.py loads it for `device: cpu`: int8, `n_threads` (0: the engine's default).
    return WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=cpu_threads, local_files_only=True)


def reference_segments(folder: Path, audio: bytes, *, task: str = "transcribe", language: str | None = None,
                       beam_size: int = 5, options: dict | None = None, cpu_threads: int = 0) -> list[str]:
    """What faster-whisper says about these bytes, segment by segment, run in this process with
    the settings the gateway uses by default (beam 5, the model's manifest `options`). Tests of
    transcription quality compare the gateway's answer with this, never with words written in
    the test: what a model hears depends on the CPU's kernels and on espeak-ng's build."""
    kwargs: dict[str, Any] = {"task": task, "beam_size": beam_size, **(options or {})}
    if language:
        kwargs["language"] = language
    segments, _ = _whisper(str(folder), cpu_threads).transcribe(io.BytesIO(audio), **kwargs)
    return [s.text for s in segments]


def reference(folder: Path, audio: bytes, **settings: Any) -> str:
    """The whole text of `reference_segments`, as the gateway joins it."""
    return "".join(reference_segments(folder, audio, **settings)).strip()
