"""Request parameters and response bodies of /v1/audio/transcriptions, /v1/audio/translations
and /v1/audio/speech.

The parameters arrive as multipart form fields (OpenAI clients) or as query
parameters (clients of the original `nexa server`); both are validated by one
model, so a bad `beam_size` is the same 400 whichever way it came.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from pydantic_core import PydanticUseDefault

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


# -- /v1/audio/speech --------------------------------------------------------------

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
MAX_SPEECH_INPUT = 100_000  # the ceiling of any voice; a voice's `options.max_input_chars` is usually 4096


class SpeechRequest(BaseModel):
    """OpenAI's body. `voice` names one of the model's voices (OpenAI's names work with every
    voice model); `instructions` is accepted and ignored: Piper voices take no style prompt."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: StrictStr = Field(min_length=1, max_length=MAX_SPEECH_INPUT)
    voice: str | None = Field(None, max_length=128, description="a voice name, or {\"id\": name}")
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = Field("audio", description="audio: the encoded bytes as they are "
                                                                        "made; sse: speech.audio.delta events")
    instructions: str | None = Field(None, max_length=4096)

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_object(cls, value: object) -> object:
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]  # OpenAI's custom-voice form
        return value

    @field_validator("model", "response_format", "speed", "stream_format", mode="before")
    @classmethod
    def _null_is_default(cls, value: object) -> object:
        if value is None:
            raise PydanticUseDefault()  # the openai SDK sends explicit nulls for unset options
        return value


class SpeechUsage(BaseModel):
    input_tokens: int = Field(description="phonemes the voice read")
    output_tokens: int = 0
    total_tokens: int
    seconds: float = Field(description="audio length")


class SpeechAudioDelta(BaseModel):
    """One `stream_format: sse` event: a piece of the encoded audio, base64."""

    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage
