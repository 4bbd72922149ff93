"""Request parameters and response bodies of /v1/audio/transcriptions and /v1/audio/translations.

The parameters arrive as multipart form fields (OpenAI clients) or as query
parameters (clients of the original `nexa server`); both are validated by one
model, so a bad `beam_size` is the same 400 whichever way it came.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class AudioParams(BaseModel):
    """Everything but the file. Unknown fields are ignored, as OpenAI adds new ones often."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    language: str | None = Field(None, max_length=32)
    prompt: str | None = Field(None, max_length=4096)
    response_format: ResponseFormat = "json"
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    beam_size: int = Field(5, ge=1, le=32)
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list)
    stream: bool = False

    @field_validator("model", "language", "prompt", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # HTML forms and curl send `language=` for "not given".
        return None if isinstance(value, str) and not value.strip() else value


class AudioUpload(AudioParams):
    """The multipart/form-data body of the audio routes, for the OpenAPI document: the parameters
    above as form fields (or, like the original server, query parameters) plus the file."""

    file: bytes = Field(description="the audio: wav, mp3, flac, ogg, webm, m4a, whatever FFmpeg decodes")


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class Transcription(BaseModel):
    """`response_format=json` (the default)."""

    text: str
    usage: DurationUsage | None = None


class VerboseTranscription(BaseModel):
    """`response_format=verbose_json`. `words` only when word timestamps were asked for."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    words: list[TranscriptionWord] | None = None
    usage: DurationUsage | None = None
