"""Text to IPA phonemes with eSpeak NG, the phonemizer Piper voices were trained with.

The library is loaded with ctypes: Debian's `libespeak-ng1` (installed with the
`espeak-ng` package, with its data), else the copy the `espeakng-loader` wheel
ships (library and data). eSpeak NG keeps global state (one voice at a time), so
every call holds one process-wide lock; phonemizing is cheap next to synthesis.

`espeak_TextToPhonemes` consumes one clause per call and drops the clause's
punctuation; Piper voices were trained with it (their phoneme map has `,` `.`
`?` `!`), so the terminator is recovered from the text the call consumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path

AUDIO_OUTPUT_SYNCHRONOUS = 2
CHARS_UTF8 = 1
PHONEMES_IPA = 0x02
TERMINATORS = ".,;:!?"
SENTENCE_ENDS = ".!?"

_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_VOICE: str | None = None


class EspeakError(Exception):
    """eSpeak NG is missing, or refused its data folder or a voice."""


@dataclass
class Clause:
    phonemes: str  # IPA, stress marks included
    terminator: str  # one of TERMINATORS, or ""

    @property
    def ends_sentence(self) -> bool:
        return self.terminator in SENTENCE_ENDS and self.terminator != ""


def _locate(data_dir: str | None) -> tuple[str, str | None]:
    """(library path, data folder or None for the library's built-in default)."""
    found = ctypes.util.find_library("espeak-ng")
    if found:
        return found, data_dir
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakError("eSpeak NG is not installed: install the Debian package espeak-ng "
                          "(apt-get install espeak-ng) or the Python package espeakng-loader") from None
    return espeakng_loader.get_library_path(), data_dir or espeakng_loader.get_data_path()


def _library(data_dir: str | None) -> ctypes.CDLL:
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    path, data = _locate(data_dir)
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise EspeakError(f"cannot load eSpeak NG from {path}: {exc}") from exc
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    if data is not None and not Path(data).is_dir():
        raise EspeakError(f"eSpeak NG data folder {data} does not exist")
    if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode() if data else None, 0) <= 0:
        raise EspeakError(f"eSpeak NG could not start (data folder: {data or 'built-in default'})")
    _LIBRARY = lib
    return lib


def check(voice: str, data_dir: str | None = None) -> None:
    """Load the library and select `voice` now, so that a missing engine or voice fails the model's load."""
    with _LOCK:
        _select(_library(data_dir), voice)


def _select(lib: ctypes.CDLL, voice: str) -> None:
    global _VOICE
    if _VOICE != voice:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"eSpeak NG has no voice {voice!r}")
        _VOICE = voice


def phonemize(text: str, voice: str, data_dir: str | None = None) -> list[Clause]:
    """The clauses of `text`, each as IPA phonemes with its terminator."""
    data = text.encode("utf-8")
    buffer = ctypes.create_string_buffer(data)
    start = ctypes.addressof(buffer)
    pointer = ctypes.c_void_p(start)
    clauses: list[Clause] = []
    with _LOCK:
        lib = _library(data_dir)
        _select(lib, voice)
        while pointer.value:
            before = pointer.value - start
            phonemes = lib.espeak_TextToPhonemes(ctypes.byref(pointer), CHARS_UTF8, PHONEMES_IPA)
            after = pointer.value - start if pointer.value else len(data)
            consumed = data[before:after].decode("utf-8", errors="ignore")
            clauses.append(Clause((phonemes or b"").decode("utf-8", errors="ignore").strip(),
                                  _terminator(consumed, at_end=not pointer.value)))
    return [c for c in clauses if c.phonemes or c.terminator]


def _terminator(consumed: str, at_end: bool) -> str:
    """The punctuation that ended a clause. eSpeak reads one character past the clause
    (the next word's start), so that tail is dropped unless the text ended."""
    if not at_end:
        consumed = re.sub(r"\s+\S*$", "", consumed)
    consumed = consumed.rstrip()
    while consumed and consumed[-1] in "\"')]}»”’":
        consumed = consumed[:-1]
    return consumed[-1] if consumed and consumed[-1] in TERMINATORS else ""
