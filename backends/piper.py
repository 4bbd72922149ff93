"""TTS models: Piper voices (VITS exported to ONNX) run by onnxruntime, phonemized by eSpeak NG.

A Piper voice is an .onnx file and its .onnx.json (sample rate, eSpeak voice,
phoneme -> id map, default noise and length scales, speaker names). Synthesis
is Piper's own recipe: text -> IPA phonemes by eSpeak NG (backends/espeak.py),
one sentence at a time -> ids (`^`, each phoneme followed by the pad `_`, `$`)
-> the network (`input`, `input_lengths`, `scales` = noise, length / speed,
noise_w; `sid` for multi-speaker voices) -> float samples, peak-normalized,
with a short pause after each sentence.

Why this loop and not a packaged engine: `piper-tts` is GPL-3.0 (this project is
Apache-2.0); `kokoro-onnx` needs `phonemizer` (GPL-3.0) and no Kokoro English
voice ships in any package; sherpa-onnx (Apache-2.0) runs Piper voices only
after its own metadata has been written into the .onnx file, which the packaged
voice lacks. The network is the same either way; only phonemization and the
scales are ours, and they follow Piper's code.

`synthesize` yields one float32 array per sentence, so the gateway can encode
and send the first sentence while the next is computed (chunked streaming),
and it checks `cancelled()` between sentences.

Voices: a voice's own speaker names (multi-speaker voices), the manifest's
`options.voices` (name -> speaker id), and OpenAI's voice names (alloy, echo, ...),
which all mean the first speaker, so OpenAI clients work unchanged.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from backends import espeak
from backends.base import Backend, Cancelled
from backends.errors import BackendError, LoadError
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.piper")

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
PAD, BOS, EOS = "_", "^", "$"


def locate(path: Path, config_file: str | None) -> tuple[Path, Path]:
    """(the .onnx file, its .onnx.json) for a file or a folder holding one voice."""
    if path.is_dir():
        voices = sorted(path.glob("*.onnx"))
        if len(voices) != 1:
            raise LoadError(f"{path} holds {len(voices)} .onnx files; name one with `file:`")
        path = voices[0]
    config = Path(config_file) if config_file else path.with_name(path.name + ".json")
    if not config.is_absolute():
        config = path.parent / config
    if not config.is_file():
        raise LoadError(f"{path.name} has no voice config {config.name} beside it (Piper's .onnx.json)")
    return path, config


class PiperBackend(Backend):
    capabilities: ClassVar[frozenset[str]] = frozenset({"speech"})

    def __init__(self, spec: ModelSpec, path: Path, session: Any, config: dict[str, Any], options: dict[str, Any]):
        super().__init__(spec, path)
        self.session = session
        self.sample_rate = int(config["audio"]["sample_rate"])
        self.espeak_voice = str(config.get("espeak", {}).get("voice", "en-us"))
        self.espeak_data = options.get("espeak_data")
        self.id_map: dict[str, list[int]] = config["phoneme_id_map"]
        self.phoneme_map: dict[str, list[str]] = config.get("phoneme_map") or {}
        inference = config.get("inference", {})
        self.noise_scale = float(options.get("noise_scale", inference.get("noise_scale", 0.667)))
        self.length_scale = float(inference.get("length_scale", 1.0))
        self.noise_w = float(options.get("noise_w", inference.get("noise_w", 0.8)))
        self.silence = np.zeros(int(self.sample_rate * options.get("sentence_silence_s", 0.2)), dtype=np.float32)
        self.max_input_chars = int(options.get("max_input_chars", 4096))
        self.n_speakers = int(config.get("num_speakers", 1))
        self.speakers: dict[str, int] = {name: 0 for name in OPENAI_VOICES}
        self.speakers.update({str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()})
        self.speakers.update({str(k): int(v) for k, v in options.get("voices", {}).items()})
        self.input_names = {node.name for node in session.get_inputs()}

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "PiperBackend":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise LoadError(f"onnxruntime is not installed: {exc}") from exc
        options = dict(spec.options)
        onnx_file, config_file = locate(path, options.get("config_file"))
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config["audio"]["sample_rate"], config["phoneme_id_map"]  # noqa: B018 - the keys every voice has
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LoadError(f"{config_file.name} is not a Piper voice config: {exc}") from exc
        if config.get("phoneme_type", "espeak") != "espeak":
            raise LoadError(f"{config_file.name}: phoneme_type {config['phoneme_type']!r} is not supported (espeak only)")
        for key in ("noise_scale", "noise_w", "sentence_silence_s", "max_input_chars", "voices"):
            if key in options and options[key] is None:
                del options[key]
        session_options = ort.SessionOptions()
        session_options.log_severity_level = int(options.get("log_severity_level", 3))
        if spec.n_threads:
            session_options.intra_op_num_threads = spec.n_threads
        try:
            session = ort.InferenceSession(str(onnx_file), session_options, providers=ort.get_available_providers()
                                           if spec.device.value != "cpu" else ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise LoadError(f"onnxruntime could not load {onnx_file.name}: {exc}") from exc
        backend = cls(spec, onnx_file, session, config, options)
        if not {"input", "input_lengths", "scales"} <= backend.input_names:
            raise LoadError(f"{onnx_file.name} is not a Piper voice: its inputs are {sorted(backend.input_names)}, "
                            "expected input, input_lengths, scales")
        try:
            espeak.check(backend.espeak_voice, backend.espeak_data)
        except espeak.EspeakError as exc:
            raise LoadError(str(exc)) from exc
        log.info("Piper voice ready: %d Hz, %d speaker(s), eSpeak voice %s", backend.sample_rate, backend.n_speakers,
                 backend.espeak_voice, extra={"event": "tts_model", "model": spec.name})
        return backend

    def close(self) -> None:
        self.session = None

    def info(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "voices": sorted(self.speakers), "speakers": self.n_speakers,
                "espeak_voice": self.espeak_voice}

    # -- requests ----------------------------------------------------------------

    def speaker(self, voice: str | None) -> int:
        """The speaker id of a voice name; a 400 naming the voices for an unknown one."""
        if voice is None:
            return 0
        if voice not in self.speakers:
            raise BackendError(f"model {self.spec.name!r} has no voice {voice!r}; its voices: "
                               f"{', '.join(sorted(self.speakers))}", param="voice")
        return self.speakers[voice]

    def sentences(self, text: str) -> list[list[int]]:
        """The phoneme ids of each sentence of `text`, as Piper builds them."""
        if not text.strip():
            raise BackendError("input must not be empty", param="input")
        if len(text) > self.max_input_chars:
            raise BackendError(f"input is {len(text)} characters long; model {self.spec.name!r} takes at most "
                               f"{self.max_input_chars}", param="input")
        sentences: list[str] = []
        phonemes = ""
        for clause in espeak.phonemize(text, self.espeak_voice, self.espeak_data):
            phonemes += clause.phonemes + clause.terminator
            if clause.ends_sentence:
                sentences.append(phonemes)
                phonemes = ""
            else:
                phonemes += " "
        sentences.append(phonemes)
        # a sentence of punctuation only ("..." or "!!") has nothing to speak
        return [self._ids(p) for p in sentences if p.strip(espeak.TERMINATORS + " ")]

    def _ids(self, phonemes: str) -> list[int]:
        ids = list(self.id_map[BOS]) + list(self.id_map[PAD])
        for phoneme in unicodedata.normalize("NFD", phonemes.strip()):
            for mapped in self.phoneme_map.get(phoneme, [phoneme]):
                if mapped in self.id_map:  # Piper skips phonemes its voice does not know, as here
                    ids.extend(self.id_map[mapped])
                    ids.extend(self.id_map[PAD])
        ids.extend(self.id_map[EOS])
        return ids

    def synthesize(self, text: str, voice: str | None, speed: float, cancelled: Cancelled) -> Iterator[np.ndarray]:
        """float32 mono samples at `sample_rate`, one array per sentence (with its pause)."""
        speaker = self.speaker(voice)
        yield from self.speak(self.sentences(text), speaker, speed, cancelled)

    def speak(self, sentences: list[list[int]], speaker: int, speed: float, cancelled: Cancelled) -> Iterator[np.ndarray]:
        """`synthesize` from phoneme ids already made (`sentences`) and a speaker id (`speaker`)."""
        if not sentences:
            raise BackendError("input has nothing to speak (no letters or digits)", param="input")
        for ids in sentences:
            if cancelled():
                return
            yield np.concatenate([self._run(ids, speaker, speed), self.silence])

    def _run(self, ids: list[int], speaker: int, speed: float) -> np.ndarray:
        feed = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray([self.noise_scale, self.length_scale / speed, self.noise_w], dtype=np.float32),
        }
        if "sid" in self.input_names:
            feed["sid"] = np.asarray([speaker], dtype=np.int64)
        audio = np.asarray(self.session.run(None, feed)[0], dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if not np.isfinite(peak):
            raise RuntimeError("the voice returned non-finite samples")
        return audio * (0.95 / peak) if peak > 1e-6 else np.zeros_like(audio)
