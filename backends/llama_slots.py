"""The batched engine's sequences (backends/llama_batch.py) and where a new request's KV starts from.

A request admitted into a free slot starts from the longest prefix of its prompt that is already
computed somewhere: the slot's own kept KV (its last prompt), another slot's stream (a common system
prompt, copied with `llama_memory_seq_cp`), or a state in the model's host-memory prompt cache
(backends/llama_cache.py). `reuse_prefix` makes that choice and leaves the slot's sequence holding
exactly the prefix chosen; the scheduler then evaluates the rest.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Any

from backends import llama_cache
from backends.base import Cancelled, SamplingParams
from backends.prompt_cache import PromptCache, common_prefix
from backends.textloop import Prefill


@dataclass(eq=False)
class SeqRequest:
    """One generation: its prompt, sampling, and the queue its tokens go out on."""

    prompt: list[int]
    params: SamplingParams
    grammar: Any
    budget: int
    cancelled: Cancelled
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    prefill: Prefill = field(default_factory=Prefill)  # cached tokens, set at admission
    abandoned: bool = False  # the consumer stopped reading (a stop sequence, an error)

    def gone(self) -> bool:
        return self.abandoned or self.cancelled()


class Slot:
    """One sequence of the context: the tokens its KV holds, and the request it serves."""

    def __init__(self, seq: int):
        self.seq = seq
        self.tokens: list[int] = []  # tokens whose KV is in this sequence, positions 0..n-1
        self.request: SeqRequest | None = None
        self.sampler: Any = None
        self.todo: list[int] = []  # prompt tokens still to evaluate
        self.last: int | None = None  # sampled, not yet evaluated
        self.generated = 0
        self.used = 0.0
        self.prompt_len = 0  # the prompt length of the request whose KV the sequence holds


def reuse_prefix(ctx: Any, slot: Slot, slots: list[Slot], prompt: list[int], n_swa: int,
                 cache: PromptCache | None) -> tuple[int, bool]:
    """Leave `slot`'s sequence holding the longest usable prefix of `prompt` (never all of it: the last
    token makes the logits) and set `slot.tokens` to it. Returns (its length, whether it was restored from
    the host-memory cache). A sliding-window model's sequence can only be continued where it still holds
    the window's cells (`llama_cache.window_held`), so that is checked before anything is cut."""
    import llama_cpp

    memory = llama_cpp.llama_get_memory(ctx)
    keep = common_prefix(slot.tokens, prompt)
    donor = max((s for s in slots if s is not slot), key=lambda s: common_prefix(s.tokens, prompt), default=None)
    shared = common_prefix(donor.tokens, prompt) if donor is not None else 0
    keep, shared = min(keep, len(prompt) - 1), min(shared, len(prompt) - 1)
    if n_swa:
        keep = keep if llama_cache.window_held(ctx, slot.seq, keep, n_swa) else 0
        shared = shared if shared and llama_cache.window_held(ctx, donor.seq, shared, n_swa) else 0
    restored = None
    if cache is not None:  # save what the slot held if it is about to go; restore a longer prefix
        found, restored = llama_cache.prepare_slot(ctx, slot.seq, slot.tokens, max(keep, shared), cache, prompt,
                                                   slot.prompt_len)
        if restored is not None:
            slot.tokens, keep, shared = restored, min(found, len(prompt) - 1), 0
    if restored is not None:
        llama_cpp.llama_memory_seq_rm(memory, slot.seq, keep, -1)
    elif shared > keep:  # another sequence holds a longer prefix (a common system prompt): copy its stream
        # (across streams llama.cpp copies whole streams, so -1, -1; the tail is dropped right after)
        llama_cpp.llama_memory_seq_cp(memory, donor.seq, slot.seq, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, slot.seq, shared, -1)
        keep = shared
    elif not llama_cpp.llama_memory_seq_rm(memory, slot.seq, keep, -1):
        llama_cpp.llama_memory_seq_rm(memory, slot.seq, -1, -1)
        keep = 0
    slot.tokens = prompt[:keep]
    return keep, restored is not None and keep > 0
