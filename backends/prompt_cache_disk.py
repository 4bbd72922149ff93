"""The prompt cache on disk (manifest `server.prompt_cache_dir`): kept across gateway restarts.

A restart (a deploy, a reload that replaces the model, SIGTERM) used to lose every KV state the
host-memory cache (backends/prompt_cache.py) held, so each agent's next turn prefilled its whole
conversation again (~40 s for 16k tokens on a CPU). Here a model's entries are written when its
last engine closes gracefully and read back when it loads again.

Layout: `<dir>/<sha256(model name)[:16]>/` holds one file per entry and `index.json`:

  entry file  MAGIC | u32 header length | header (JSON) | tokens (int32, little-endian) | state bytes
  index.json  {"format", "fingerprint": {...}, "entries": [file names, least recently used first]}

The fingerprint is what a state depends on (model file path, size and mtime, llama-cpp-python's
version, the context settings); each entry's header repeats its digest, so an entry is checked on
its own too. Every file is written to a temporary name and renamed, the index last, so a write cut
short (a kill during shutdown) leaves the previous set or a stray temporary file, never a torn entry.

Loading reads headers and tokens only: an entry's state is read (and its CRC checked) at its first
restore, so a model is ready as fast as without the directory, and states nobody asks for take no
RAM. They count against the bound from the start, as if resident: the bound holds once all are read.
Anything that does not match or is damaged is skipped with a warning; nothing here raises into a load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends import prompt_cache
from backends.prompt_cache import PromptCache

log = logging.getLogger("nexa.backends.prompt_cache")

FORMAT = 1
MAGIC = b"NEXAPC1\n"
INDEX = "index.json"
SUFFIX = ".entry"
_LENGTH = struct.Struct("<I")


_folders: dict[Path, threading.Lock] = {}
_folders_lock = threading.Lock()


def _folder_lock(directory: Path) -> threading.Lock:
    """One lock per folder: a model loaded again while its last engine's save runs (an eviction then a
    request) reads the folder after that save, not half-way through it."""
    with _folders_lock:
        return _folders.setdefault(directory, threading.Lock())


class Damaged(ValueError):
    """An entry file that cannot be used; the message is the reason the warning names."""


def model_dir(root: str | Path, name: str) -> Path:
    """The folder of one model's entries under the manifest's `prompt_cache_dir`."""
    return Path(root).expanduser() / hashlib.sha256(name.encode()).hexdigest()[:16]


def digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def entry_name(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()[:32] + SUFFIX


# -- one entry file ----------------------------------------------------------------------------

@dataclass
class Stored:
    """Where an entry's state lies on disk (`Entry.stored`): read by `read_state` at its first restore."""

    path: Path
    offset: int
    size: int
    crc: int

    def read(self) -> Any:
        return read_state(self)


def write_entry(path: Path, fingerprint_digest: str, tokens: Any, data: Any, size: int, pos_min: int | None) -> int:
    """Write one entry atomically (temporary file, then rename); returns the bytes written."""
    tokens = np.ascontiguousarray(tokens, dtype="<i4")
    state = memoryview(data).cast("B")[:size]
    header = json.dumps({"format": FORMAT, "fingerprint": fingerprint_digest, "tokens": len(tokens),
                         "tokens_crc": zlib.crc32(tokens.tobytes()), "state_bytes": size,
                         "state_crc": zlib.crc32(state), "pos_min": pos_min}).encode()
    temporary = path.with_name(path.name + f".{uuid.uuid4().hex}.tmp")  # unique across containers (pid 1 each)
    try:
        with open(temporary, "wb") as out:
            out.write(MAGIC + _LENGTH.pack(len(header)) + header)
            out.write(tokens.tobytes())
            out.write(state)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return len(MAGIC) + _LENGTH.size + len(header) + tokens.nbytes + size


def read_entry(path: Path, fingerprint_digest: str) -> tuple[np.ndarray, Stored, int | None]:
    """An entry file's tokens and where its state lies, checked against the fingerprint and the file's
    size; raises Damaged (or OSError) naming what is wrong. The state itself is not read."""
    with open(path, "rb") as handle:
        start = handle.read(len(MAGIC) + _LENGTH.size)
        if len(start) < len(MAGIC) + _LENGTH.size or not start.startswith(MAGIC):
            raise Damaged("not a prompt cache entry (bad magic)")
        (length,) = _LENGTH.unpack(start[len(MAGIC):])
        try:
            header = json.loads(handle.read(length))
            count, size = int(header["tokens"]), int(header["state_bytes"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Damaged(f"unreadable header ({exc})") from None
        if header.get("format") != FORMAT:
            raise Damaged(f"format {header.get('format')!r}, expected {FORMAT}")
        if header.get("fingerprint") != fingerprint_digest:
            raise Damaged("written for another model file or other settings")
        raw = handle.read(4 * count)
        offset = handle.tell()
    expected = offset + size
    actual = path.stat().st_size
    if len(raw) != 4 * count or actual != expected:
        raise Damaged(f"truncated or extended: {actual} bytes, expected {expected}")
    if zlib.crc32(raw) != header.get("tokens_crc"):
        raise Damaged("token CRC mismatch")
    tokens = np.frombuffer(raw, dtype="<i4").astype(np.int32)
    return tokens, Stored(path, offset, size, int(header.get("state_crc", -1))), header.get("pos_min")


def read_state(stored: Stored) -> Any:
    """The state bytes of an entry, in a buffer `llama_state_seq_set_data` takes; Damaged on a CRC mismatch."""
    buffer = prompt_cache.state_buffer(stored.size)
    with open(stored.path, "rb") as handle:
        handle.seek(stored.offset)
        read = handle.readinto(memoryview(buffer).cast("B"))
    if read != stored.size:
        raise Damaged(f"truncated: read {read} of {stored.size} state bytes")
    if zlib.crc32(memoryview(buffer).cast("B")) != stored.crc:
        raise Damaged("state CRC mismatch")
    return buffer


# -- a model's folder -----------------------------------------------------------------------------

class Store:
    """One model's folder: `load` fills a cache from it, `save` writes a cache's entries to it."""

    def __init__(self, directory: Path, model: str, fingerprint: dict[str, Any]):
        self.directory = directory
        self.model = model
        self.fingerprint = fingerprint
        self.digest = digest(fingerprint)

    def _warn(self, reason: str, file: str | None = None) -> None:
        log.warning("prompt cache of %s: skipping %s in %s: %s", self.model, file or "the saved entries",
                    self.directory, reason, extra={"event": "prompt_cache_skipped", "model": self.model,
                                                   "file": file, "reason": reason})

    def load(self, cache: PromptCache) -> int:
        """Put the folder's matching entries into `cache` (least recently used first, so a smaller bound
        keeps the newest); returns how many. Never raises: what cannot be used is skipped with a warning."""
        with _folder_lock(self.directory):
            return self._load(cache)

    def _load(self, cache: PromptCache) -> int:
        started = time.perf_counter()
        try:
            index = json.loads((self.directory / INDEX).read_text())
            names, saved = list(index["entries"]), index["fingerprint"]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._warn(f"unreadable {INDEX} ({exc})")
            return 0
        if saved != self.fingerprint:
            changed = sorted(k for k in {*saved, *self.fingerprint} if saved.get(k) != self.fingerprint.get(k))
            self._warn("saved under other settings: " + "; ".join(
                f"{k} {saved.get(k)!r} -> {self.fingerprint.get(k)!r}" for k in changed))
            return 0
        loaded = 0
        for name in names:
            if not isinstance(name, str) or "/" in name or not name.endswith(SUFFIX):
                self._warn("not an entry file name", str(name))
                continue
            try:
                tokens, stored, pos_min = read_entry(self.directory / name, self.digest)
            except (OSError, ValueError, Damaged) as exc:  # ValueError: a name with a NUL byte, bad numbers
                self._warn(str(exc), name)
                continue
            loaded += cache.put(tokens, None, stored.size, pos_min, stored=stored, counted=False)
        log.info("prompt cache of %s: %d entries (%d bytes) found in %s in %.2fs", self.model, loaded, cache.bytes,
                 self.directory, time.perf_counter() - started,
                 extra={"event": "prompt_cache_loaded", "model": self.model, "entries": loaded, "bytes": cache.bytes,
                        "seconds": round(time.perf_counter() - started, 3)})
        return loaded

    def save(self, cache: PromptCache) -> None:
        """Write `cache`'s entries (those not already in the folder), then the index, then remove every
        other file. Failures are logged: a model's unload never fails because its cache could not be kept."""
        with _folder_lock(self.directory):
            self._save(cache)

    def _save(self, cache: PromptCache) -> None:
        started = time.perf_counter()
        written = kept = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            names = []
            for entry in cache.entries():
                name = entry_name(entry.tokens)
                stored = entry.stored
                if stored is not None and stored.path == self.directory / name and stored.path.exists():
                    kept += 1  # read from this folder under the same fingerprint: the file is this state
                elif entry.data is not None:
                    written += write_entry(self.directory / name, self.digest, entry.tokens, entry.data, entry.size,
                                           entry.pos_min)
                else:
                    continue  # a lazy entry whose file went away
                names.append(name)
            index = self.directory / INDEX
            temporary = index.with_name(INDEX + f".{uuid.uuid4().hex}.tmp")
            temporary.write_text(json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "entries": names}))
            os.replace(temporary, index)
            for path in self.directory.iterdir():
                if path.name != INDEX and path.name not in names:
                    path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("prompt cache of %s: could not save to %s: %s", self.model, self.directory, exc,
                        extra={"event": "prompt_cache_save_failed", "model": self.model, "reason": str(exc)})
            return
        seconds = time.perf_counter() - started
        log.info("prompt cache of %s: saved %d entries (%d new bytes written, %d kept) to %s in %.2fs", self.model,
                 len(names), written, kept, self.directory, seconds,
                 extra={"event": "prompt_cache_saved", "model": self.model, "entries": len(names), "bytes": written,
                        "kept": kept, "seconds": round(seconds, 3)})
