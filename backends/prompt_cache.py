"""A host-memory prompt cache for GGUF text models (manifest `prompt_cache: <size>`).

An agent's session is not one conversation: between two turns of the main conversation (a long
system prompt, tools, history) it sends side calls on other prefixes (a title, a summary). A
context keeps only the KV state of the prompts its sequences ran last, so each side call threw the
main conversation away and the next turn prefilled all of it again. Here, when a sequence's KV state
is about to be replaced, it is copied into RAM (llama.cpp's per-sequence state API,
`llama_state_seq_get_data`), and before a prefill the entry sharing the longest token prefix with the
new prompt is copied back (`llama_state_seq_set_data`) when that is cheaper than computing the prefix.

One cache per model, shared by its replicas and batched slots (a state is plain bytes any context of
the same model and settings can take), bounded in bytes, least-recently-used entries evicted first.
The engines (backends/llama.py for `parallel: 1`, backends/llama_batch.py for `parallel: N`) decide
when to save and restore with `PromptCache.save_worthwhile` / `PromptCache.best`; this module knows
no engine.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Below this many tokens a prefix is recomputed rather than saved or restored: the bookkeeping and
# copies cost more than a short prefill (bench/prompt_cache.py measures the crossover).
MIN_TOKENS = 64
# Seconds per prompt token and per state byte before any measurement: from bench/prompt_cache.py on
# Gemma 3 270M, 2 CPU threads (prefill ~3 ms/token; a restore copies ~2 GB/s). Both are then
# re-estimated from what this process measures (an exponential average), so a GPU adapts.
PREFILL_S_PER_TOKEN = 3e-3
RESTORE_S_PER_BYTE = 5e-10
_SMOOTHING = 0.3


def common_prefix(a: Any, b: Any) -> int:
    """Length of the longest common prefix of two token sequences."""
    a, b = np.asarray(a, dtype=np.int32), np.asarray(b, dtype=np.int32)
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass
class CacheStats:
    """Counters read by /metrics at scrape time; `prefilled_tokens` counts every prompt token an engine
    evaluated (cache or not), so a cache's effect shows in it."""

    hits: int = 0  # requests that restored an entry
    misses: int = 0  # requests that prefilled at least MIN_TOKENS without a restore
    restored_tokens: int = 0  # prompt tokens taken from restored entries
    reused_tokens: int = 0  # prompt tokens a live sequence already held
    prefilled_tokens: int = 0  # prompt tokens evaluated
    saves: int = 0
    evictions: int = 0


@dataclass(eq=False)
class Entry:
    tokens: np.ndarray  # the tokens whose KV the state holds, positions 0..n-1
    data: Any  # a ctypes uint8 array: llama_state_seq_get_data's output
    size: int
    used: float = field(default_factory=time.monotonic)
    pos_min: int | None = None  # sliding-window models: the first position its state holds (known once restored)
    stored: Any = None  # read from disk (backends/prompt_cache_disk.py): `data` is None until its first restore


class PromptCache:
    """The entries of one model, at most `capacity` bytes. Thread-safe: replicas share it."""

    def __init__(self, capacity: int):
        self.capacity = max(int(capacity), 0)
        self.stats = CacheStats()
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()
        self.n_swa = 0  # the model's sliding window (0: none); set by the engine
        self.swa_window_only = False  # its sliding-window cells are only the window's (`swa_full: false`)
        self.prefill_s_per_token = PREFILL_S_PER_TOKEN
        self.restore_s_per_byte = RESTORE_S_PER_BYTE
        self.store: Any = None  # a prompt_cache_disk.Store when `server.prompt_cache_dir` keeps it across restarts

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    # -- decisions -------------------------------------------------------------------------

    def save_worthwhile(self, tokens: Any, kept: int) -> bool:
        """A sequence holding `tokens` is about to keep only its first `kept`: is the rest worth saving?
        Not when short, and not when an entry already holds these tokens (or more)."""
        if not self.enabled or len(tokens) - kept < MIN_TOKENS:
            return False
        with self._lock:
            return not any(len(e.tokens) >= len(tokens) and common_prefix(e.tokens, tokens) == len(tokens)
                           for e in self._entries.values())

    def best(self, prompt: Any, have: int) -> tuple[Entry | None, int]:
        """The entry to restore for `prompt` when its sequence already holds `have` tokens of it:
        the longest common prefix, if it saves more prefill time than the restore costs. Returns
        (entry, usable prefix) or (None, 0)."""
        if not self.enabled:
            return None, 0
        with self._lock:
            found, length = None, 0
            for entry in self._entries.values():
                n = common_prefix(entry.tokens, prompt)
                if self.n_swa and entry.pos_min is not None and entry.pos_min > max(0, n - 1 - self.n_swa):
                    continue  # a sliding-window state lacks the cells this prefix would need
                if n > length or (n == length and found is not None and entry.size < found.size):
                    found, length = entry, n
            gain = length - have
            if found is None or gain < MIN_TOKENS:
                return None, 0
            if gain * self.prefill_s_per_token <= found.size * self.restore_s_per_byte:
                return None, 0
            self._entries.move_to_end(id(found))
            found.used = time.monotonic()
            return found, length

    # -- contents --------------------------------------------------------------------------

    def put(self, tokens: Any, data: Any, size: int, pos_min: int | None = None, stored: Any = None,
            counted: bool = True) -> bool:
        """Keep a saved state; entries it extends are dropped when it serves every prompt they did (a
        sliding-window state whose first position `pos_min` is past an entry's window does not). An entry read
        from disk comes with `stored` instead of `data`, and is not `counted` as a save."""
        tokens = np.array(tokens, dtype=np.int32)
        if not self.enabled or size > self.capacity:
            return False
        with self._lock:
            for key, entry in list(self._entries.items()):
                if len(entry.tokens) <= len(tokens) and common_prefix(entry.tokens, tokens) == len(entry.tokens):
                    if self.n_swa and (pos_min is None or pos_min > max(0, len(entry.tokens) - 1 - self.n_swa)):
                        continue  # the new state lacks the window this entry's end needs: both stay
                    self._drop(key)
            while self._entries and self._bytes + size > self.capacity:
                self._drop(next(iter(self._entries)))
                self.stats.evictions += 1
            entry = Entry(tokens, data, size, pos_min=pos_min, stored=stored)
            self._entries[id(entry)] = entry
            self._bytes += size
            self.stats.saves += counted
        return True

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    def attach_store(self, store: Any) -> bool:
        """Give the cache its disk store; False if a replica already did (it reads the folder once)."""
        with self._lock:
            if self.store is not None:
                return False
            self.store = store
            return True

    def discard(self, entry: Entry) -> None:
        """Forget an entry whose state could not be restored (a damaged file on disk)."""
        with self._lock:
            if id(entry) in self._entries:
                self._drop(id(entry))

    def entries(self) -> list[Entry]:
        """The entries, least recently used first (what the disk store writes)."""
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    # -- measurements ----------------------------------------------------------------------

    def count(self, *, prompt: int, cached: int, restored: bool) -> None:
        """One request's prompt: `cached` of its `prompt` tokens came from a cache, from a restored
        entry if `restored`, else from what its sequence still held; the rest is prefilled."""
        with self._lock:
            stats = self.stats
            stats.prefilled_tokens += prompt - cached
            if restored:
                stats.hits += 1
                stats.restored_tokens += cached
            else:
                stats.reused_tokens += cached
                stats.misses += prompt - cached >= MIN_TOKENS

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """A prefill of `tokens` took `seconds`: the cost a restore is weighed against."""
        if tokens >= MIN_TOKENS and seconds > 0:
            self.prefill_s_per_token += _SMOOTHING * (seconds / tokens - self.prefill_s_per_token)

    def observe_restore(self, size: int, seconds: float) -> None:
        if size > 0 and seconds > 0:
            self.restore_s_per_byte += _SMOOTHING * (seconds / size - self.restore_s_per_byte)


# -- llama.cpp's per-sequence state ---------------------------------------------------------

def save_state(ctx: Any, seq: int) -> tuple[Any, int]:
    """Copy sequence `seq`'s KV state out of a llama.cpp context: (buffer, bytes)."""
    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    buffer = state_buffer(size)
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq)
    if written != size:
        raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
    return buffer, size


def state_buffer(size: int) -> Any:
    """A state's buffer: its own anonymous mapping, unmapped when the entry is dropped. malloc would keep
    freed states of these sizes in its heap, and the process's RSS would not come back down to the bound."""
    return (ctypes.c_uint8 * size).from_buffer(mmap.mmap(-1, max(size, 1)))


def restore_state(ctx: Any, seq: int, entry: Entry) -> bool:
    """Put `entry`'s KV state into sequence `seq` (cleared first). False if llama.cpp refused it
    (the sequence is then empty). An entry read from disk has its state read first (its errors raise)."""
    import llama_cpp

    if entry.data is None:
        entry.data = entry.stored.read()

    memory = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
    if llama_cpp.llama_state_seq_set_data(ctx, entry.data, entry.size, seq) == 0:
        llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        return False
    return True


# -- one cache per model, shared by its replicas ----------------------------------------------

_shared: dict[tuple, tuple[PromptCache, int]] = {}
_shared_lock = threading.Lock()


def acquire(key: tuple, capacity: int) -> PromptCache:
    """The cache of the model identified by `key` (its name, file and load settings); replicas of one
    model get the same object. Pair with `release`."""
    with _shared_lock:
        cache, users = _shared.get(key, (None, 0))
        if cache is None:
            cache = PromptCache(capacity)
        _shared[key] = (cache, users + 1)
        return cache


def release(key: tuple) -> None:
    """The last replica's release frees the cache, after writing it to disk if it has a store."""
    with _shared_lock:
        cache, users = _shared.get(key, (None, 0))
        if cache is None:
            return
        if users > 1:
            _shared[key] = (cache, users - 1)
            return
        del _shared[key]
    if cache.store is not None:  # outside the lock: a write takes seconds, other models' loads go on
        cache.store.save(cache)
    cache.clear()


def kv_bytes_per_token(metadata: dict[str, str], n_layer: int, n_head_kv: int, type_k: int | None = None,
                       type_v: int | None = None) -> int:
    """KV bytes one token takes in a llama.cpp context, from the GGUF metadata: per layer, a key and a
    value vector per KV head (f16 unless options.type_k/type_v say otherwise). The default cache
    bound is `nctx` of these."""
    arch = metadata.get("general.architecture", "")
    n_embd = int(metadata.get(f"{arch}.embedding_length", 0) or 0)
    n_head = int(metadata.get(f"{arch}.attention.head_count", 1) or 1)
    key = int(metadata.get(f"{arch}.attention.key_length", 0) or 0) or n_embd // max(n_head, 1)
    value = int(metadata.get(f"{arch}.attention.value_length", 0) or 0) or key
    return int(n_layer * n_head_kv * (key * _type_bytes(type_k) + value * _type_bytes(type_v)))


# ggml type ids (ggml.h) -> bytes per element of the types a KV cache takes
_TYPE_BYTES = {0: 4.0, 1: 2.0, 30: 2.0, 8: 34 / 32, 2: 18 / 32, 3: 20 / 32, 6: 22 / 32, 7: 24 / 32, 20: 18 / 32}


def _type_bytes(ggml_type: int | None) -> float:
    return _TYPE_BYTES.get(ggml_type, 2.0) if ggml_type is not None else 2.0
