"""Synthesized speech -> the bytes of OpenAI's `response_format`s, chunk by chunk.

A voice gives float samples one sentence at a time; `Encoder.feed` turns each
into the bytes a player can already use (so a streamed answer starts playing
before synthesis ends), and `Encoder.close` flushes the codec's tail.

Every format is 24 kHz mono, as OpenAI's (its `pcm` is documented as raw
24 kHz 16-bit little-endian samples, so clients play it without a header):
samples are resampled with PyAV (FFmpeg's swresample). mp3, opus (in Ogg), aac
(ADTS) and flac are encoded by PyAV's FFmpeg into a write-only sink, so the
muxers write streamable output. `wav` is a RIFF header followed by 16-bit
samples; a header cannot know the length of audio not synthesized yet, so its
sizes are 0xFFFFFFFF ("until the end of the stream"), which players accept
(what OpenAI's streamed wav does too).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any

import numpy as np

OUTPUT_RATE = 24_000

# response_format -> (container, codec, media type); None: written here, not by FFmpeg.
FORMATS: dict[str, tuple[str | None, str | None, str]] = {
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
    "aac": ("adts", "aac", "audio/aac"),
    "flac": ("flac", "flac", "audio/flac"),
    "wav": (None, None, "audio/wav"),
    "pcm": (None, None, "audio/pcm"),
}


def media_type(response_format: str) -> str:
    return FORMATS[response_format][2]


def wav_header(rate: int = OUTPUT_RATE, channels: int = 1, bits: int = 16) -> bytes:
    """A streaming RIFF/WAVE header: PCM, sizes unknown (0xFFFFFFFF)."""
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


class _Sink:
    """A write-only file for FFmpeg's muxer: what it writes is taken after each chunk.
    Having no `seek`, it makes muxers write streamable output (no header rewrites)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class Encoder:
    """One answer's encoder: `feed(samples)` per chunk, then `close()`; each returns bytes to send."""

    def __init__(self, response_format: str, input_rate: int):
        import av

        if response_format not in FORMATS:
            raise ValueError(f"unknown response_format {response_format!r}")
        self.format = response_format
        self.input_rate = input_rate
        self.samples_in = 0
        container, codec, _ = FORMATS[response_format]
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OUTPUT_RATE)
        self._pts = 0
        self._started = False
        self._output = self._stream = self._sink = None
        if container is not None:
            self._sink = _Sink()
            self._output = av.open(self._sink, mode="w", format=container)
            self._stream = self._output.add_stream(codec, rate=OUTPUT_RATE, layout="mono")
            if codec == "libmp3lame":
                self._stream.bit_rate = 64_000
            elif codec in ("libopus", "aac"):
                self._stream.bit_rate = 48_000

    @property
    def seconds(self) -> float:
        """Audio fed so far."""
        return self.samples_in / self.input_rate

    def feed(self, samples: np.ndarray) -> bytes:
        import av

        pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16)
        self.samples_in += pcm.size
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.input_rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.input_rate)
        self._pts += pcm.size
        return self._emit(self._resampler.resample(frame))

    def close(self) -> bytes:
        """The codec's and the resampler's tail, and the container's trailer."""
        tail = self._emit(self._resampler.resample(None))
        if self._output is None:
            return tail
        for packet in self._stream.encode(None):
            self._output.mux(packet)
        self._output.close()
        return tail + self._sink.take()

    def _prefix(self) -> bytes:
        started, self._started = self._started, True
        return wav_header() if self.format == "wav" and not started else b""

    def _emit(self, frames: list[Any]) -> bytes:
        if self._output is None:
            return self._prefix() + b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._output.mux(packet)
        return self._sink.take()
