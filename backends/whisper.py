"""Speech to text through faster-whisper (CTranslate2 Whisper folders).

A model folder holds model.bin, config.json, tokenizer.json and
vocabulary.txt. faster-whisper returns segments as a lazy generator that
runs the decoder as it is consumed, so `transcribe` drains it here, on the
model's own thread, and hands back plain data. Audio decoding (PyAV) is a
separate function so the gateway can decode an upload, and refuse one that is
not audio, without queueing behind other requests to the model.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import Backend, Cancelled
from backends.errors import BackendError, LoadError
from schemas.manifest import Device, ModelSpec

log = logging.getLogger("nexa.backends.whisper")

SAMPLE_RATE = 16000

# Whisper's language codes and the names OpenAI reports in verbose_json.
LANGUAGES: dict[str, str] = dict(pair.split(":") for pair in (
    "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french ja:japanese pt:portuguese "
    "tr:turkish pl:polish ca:catalan nl:dutch ar:arabic sv:swedish it:italian id:indonesian hi:hindi "
    "fi:finnish vi:vietnamese he:hebrew uk:ukrainian el:greek ms:malay cs:czech ro:romanian da:danish "
    "hu:hungarian ta:tamil no:norwegian th:thai ur:urdu hr:croatian bg:bulgarian lt:lithuanian la:latin "
    "mi:maori ml:malayalam cy:welsh sk:slovak te:telugu fa:persian lv:latvian bn:bengali sr:serbian "
    "az:azerbaijani sl:slovenian kn:kannada et:estonian mk:macedonian br:breton eu:basque is:icelandic "
    "hy:armenian ne:nepali mn:mongolian bs:bosnian kk:kazakh sq:albanian sw:swahili gl:galician mr:marathi "
    "pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba so:somali af:afrikaans oc:occitan ka:georgian "
    "be:belarusian tg:tajik sd:sindhi gu:gujarati am:amharic yi:yiddish lo:lao uz:uzbek fo:faroese "
    "ht:haitian_creole ps:pashto tk:turkmen nn:nynorsk mt:maltese sa:sanskrit lb:luxembourgish my:myanmar "
    "bo:tibetan tl:tagalog mg:malagasy as:assamese tt:tatar haw:hawaiian ln:lingala ha:hausa ba:bashkir "
    "jw:javanese su:sundanese yue:cantonese"
).split())
LANGUAGES = {code: name.replace("_", " ") for code, name in LANGUAGES.items()}
_BY_NAME = {name: code for code, name in LANGUAGES.items()}

# spec.options the gateway reads itself, and those WhisperModel takes at load time.
GATEWAY_OPTIONS = {"max_audio_seconds"}
LOAD_OPTIONS = {"compute_type", "device_index", "num_workers"}
# Never from a manifest: they would make faster-whisper reach for a model hub or override request fields.
FORBIDDEN_OPTIONS = {"audio", "language", "task", "initial_prompt", "temperature", "beam_size", "word_timestamps",
                     "log_progress", "download_root", "local_files_only", "files", "revision", "use_auth_token"}


class AudioDecodeError(BackendError):
    """The upload is not audio PyAV can decode."""


class EnglishOnlyError(BackendError):
    """An English-only model (tiny.en, base.en, ...) was asked to translate or to hear another language."""


@dataclass
class TranscribeOptions:
    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None  # None: faster-whisper's fallback schedule 0.0, 0.2, ... 1.0
    beam_size: int = 5
    word_timestamps: bool = False


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
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
    words: list[Word] | None = None


@dataclass
class Transcript:
    task: str
    language: str  # a code, e.g. "en"
    language_probability: float
    duration: float
    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()

    @property
    def language_name(self) -> str:
        return LANGUAGES.get(self.language, self.language)


def decode_audio(data: bytes) -> Any:
    """Decode any container/codec PyAV reads (wav, mp3, flac, ogg, webm/opus, m4a, ...)
    into 16 kHz mono float32 samples. Raises AudioDecodeError for anything else."""
    try:
        import av
        from faster_whisper.audio import decode_audio as fw_decode
    except ImportError as exc:  # pragma: no cover - faster-whisper is a dependency
        raise LoadError(f"faster-whisper is not installed: {exc}") from exc
    try:
        samples = fw_decode(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except IndexError:  # PyAV opened it, but it has no audio stream (an image, a silent video)
        raise AudioDecodeError("the uploaded file has no audio stream") from None
    except (av.error.FFmpegError, ValueError, OSError, RuntimeError, EOFError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise AudioDecodeError(f"the uploaded file could not be decoded as audio ({reason})") from None
    if samples.size == 0:
        raise AudioDecodeError("the uploaded file contains no audio samples")
    return samples


def normalise_language(value: str | None) -> str | None:
    """'en', 'EN', 'en-US', 'english' -> 'en'. Raises BackendError for unknown languages."""
    if value is None:
        return None
    raw = value.strip().lower()
    code = raw.replace("_", "-").split("-")[0] if raw not in _BY_NAME else _BY_NAME[raw]
    if code not in LANGUAGES:
        raise BackendError(f"unknown language {value!r}; use an ISO-639-1 code such as 'en', 'fr' or 'de'")
    return code


def _device(spec: ModelSpec) -> str:
    if spec.device == Device.cpu:
        return "cpu"
    if spec.device in (Device.gpu, Device.cuda):
        return "cuda"
    if spec.device == Device.auto:
        import ctranslate2

        try:
            return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # noqa: BLE001 - a broken CUDA install means CPU
            return "cpu"
    raise LoadError(f"faster-whisper runs on cpu or cuda; device {spec.device.value!r} is not supported")


# CTranslate2's own test (models/whisper.cc): a multilingual Whisper vocabulary has at least this many tokens.
MULTILINGUAL_VOCABULARY = 51865


def vocabulary_size(folder: Path) -> int | None:
    """The token count of a CTranslate2 Whisper folder, from whichever vocabulary file it has."""
    try:
        if (folder / "vocabulary.txt").is_file():
            with open(folder / "vocabulary.txt", "rb") as file:
                return sum(1 for _ in file)
        if (folder / "vocabulary.json").is_file():
            return len(json.loads((folder / "vocabulary.json").read_text(encoding="utf-8")))
        if (folder / "tokenizer.json").is_file():
            tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            ids = [*tokenizer.get("model", {}).get("vocab", {}).values(),
                   *(t.get("id", -1) for t in tokenizer.get("added_tokens", ()))]
            return max(ids) + 1 if ids else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return None


def english_only_files(path: Path) -> bool:
    """Whether a Whisper folder holds an English-only model, known without loading it:
    from its vocabulary size (what faster-whisper itself decides by), else the `.en`
    in the name OpenAI gives those models (`tiny.en`, `faster-whisper-base.en`)."""
    folder = path.parent if path.is_file() else path
    size = vocabulary_size(folder)
    if size is not None:
        return size < MULTILINGUAL_VOCABULARY
    return re.search(r"\.en($|[-_.])", folder.name) is not None


class WhisperBackend(Backend):
    capabilities = frozenset({"transcribe", "translate"})

    @classmethod
    def capabilities_of(cls, spec: ModelSpec, path: Path | None) -> frozenset[str]:
        if path is not None and english_only_files(path):
            return frozenset({"transcribe"})
        return cls.capabilities

    def __init__(self, spec: ModelSpec, path: Path, model: Any, device: str, compute_type: str,
                 transcribe_defaults: dict[str, Any]):
        super().__init__(spec, path)
        self.model = model
        self.device = device
        self.compute_type = compute_type
        self.transcribe_defaults = transcribe_defaults
        self.multilingual = bool(model.model.is_multilingual)
        if not self.multilingual:
            # What /v1/models shows once loaded; the route still answers a clear 400 before that.
            self.capabilities = frozenset({"transcribe"})

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "WhisperBackend":
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise LoadError(f"faster-whisper is not installed: {exc}") from exc
        if path.is_file():
            path = path.parent
        missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (path / name).exists()]
        if missing:
            raise LoadError(f"{path} is not a CTranslate2 Whisper folder: missing {', '.join(missing)}")
        device = _device(spec)
        options = dict(spec.options)
        allowed = set(inspect.signature(WhisperModel.transcribe).parameters) - {"self"} - FORBIDDEN_OPTIONS
        unknown = sorted(set(options) - GATEWAY_OPTIONS - LOAD_OPTIONS - allowed)
        if unknown:
            raise LoadError(f"unknown faster-whisper option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(GATEWAY_OPTIONS | LOAD_OPTIONS | allowed))}")
        limit = options.get("max_audio_seconds")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise LoadError(f"options.max_audio_seconds must be a positive number of seconds, not {limit!r}")
        compute_type = str(options.get("compute_type") or ("int8" if device == "cpu" else "default"))
        kwargs: dict[str, Any] = {
            "device": device,
            "compute_type": compute_type,
            "cpu_threads": spec.n_threads or 0,
            "local_files_only": True,
        }
        for name in ("device_index", "num_workers"):
            if name in options:
                kwargs[name] = options[name]
        try:
            model = WhisperModel(str(path), **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LoadError(f"faster-whisper could not load {path}: {exc}") from exc
        defaults = {k: v for k, v in options.items() if k in allowed}
        log.info("whisper model on %s (%s)", device, compute_type,
                 extra={"event": "whisper_loaded", "model": spec.name, "device": device, "compute_type": compute_type,
                        "multilingual": bool(model.model.is_multilingual)})
        return cls(spec, path, model, device, compute_type, defaults)

    def close(self) -> None:
        self.model = None

    def info(self) -> dict[str, Any]:
        return {"device": self.device, "compute_type": self.compute_type, "multilingual": self.multilingual}

    def transcribe(self, audio: Any, options: TranscribeOptions, cancelled: Cancelled | None = None) -> Transcript:
        """Run the whole transcription (or translation into English) on the calling thread."""
        language = normalise_language(options.language)
        if not self.multilingual:
            if options.task == "translate":
                raise EnglishOnlyError(f"model {self.spec.name!r} is English-only and cannot translate; "
                                       "use a multilingual Whisper model")
            if language not in (None, "en"):
                raise EnglishOnlyError(f"model {self.spec.name!r} is English-only and cannot transcribe "
                                       f"{LANGUAGES[language]} ({language!r})")
        kwargs: dict[str, Any] = {**self.transcribe_defaults, "task": options.task, "beam_size": options.beam_size,
                                  "word_timestamps": options.word_timestamps}
        if language:
            kwargs["language"] = language
        if options.prompt:
            kwargs["initial_prompt"] = options.prompt
        if options.temperature:  # 0 or unset: the fallback schedule, as OpenAI documents for 0
            kwargs["temperature"] = options.temperature
        raw_segments, info = self.model.transcribe(audio, **kwargs)
        segments: list[Segment] = []
        for raw in raw_segments:  # the decoder runs as this generator is consumed
            segments.append(Segment(
                id=len(segments), seek=int(raw.seek), start=round(float(raw.start), 3), end=round(float(raw.end), 3),
                text=raw.text, tokens=[int(t) for t in raw.tokens],
                temperature=float(raw.temperature or 0.0), avg_logprob=float(raw.avg_logprob),
                compression_ratio=float(raw.compression_ratio), no_speech_prob=float(raw.no_speech_prob),
                words=[Word(w.word, round(float(w.start), 3), round(float(w.end), 3), float(w.probability))
                       for w in raw.words] if raw.words else None,
            ))
            if cancelled is not None and cancelled():
                break
        return Transcript(task=options.task, language=info.language,
                          language_probability=float(info.language_probability or 0.0),
                          duration=float(info.duration), segments=segments)
