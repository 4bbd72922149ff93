"""The prompt cache (backends/prompt_cache.py) wired into llama.cpp's two text engines.

`parallel: 1` (`Llama.generate`): llama-cpp-python keeps the context's tokens in `Llama.input_ids`
and reuses their longest common prefix with the next prompt. `prepare_single` runs before it: it
saves the live sequence if the new prompt would throw most of it away, and restores a cached entry
in its place when that entry shares a longer prefix; `Llama.generate` then evaluates only the rest.

`parallel: N` (backends/llama_batch.py): the scheduler calls `prepare_slot` while admitting a
request into a free slot, with the same two steps on that slot's sequence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from backends import llama_private as private
from backends import prompt_cache
from backends.prompt_cache import PromptCache, common_prefix
from schemas.manifest import ModelSpec, ModelType


def cache_key(spec: ModelSpec, path: Path) -> tuple:
    """What a saved state depends on: the model file and the context settings (replicas share a cache)."""
    return (spec.name, str(path), spec.nctx, spec.parallel, repr(sorted(spec.options.items())))


def capacity(spec: ModelSpec, llm: Any) -> int:
    """The manifest's `prompt_cache`, else the KV of one full context (`nctx` × bytes per token): room to
    set the longest conversation the model can hold aside while side calls run."""
    if spec.prompt_cache is not None:
        return int(spec.prompt_cache)
    return spec.nctx * bytes_per_token(spec, llm)


def bytes_per_token(spec: ModelSpec, llm: Any) -> int:
    import llama_cpp

    model = llm.model
    return prompt_cache.kv_bytes_per_token(llm.metadata, llama_cpp.llama_model_n_layer(model),
                                           llama_cpp.llama_model_n_head_kv(model),
                                           spec.options.get("type_k"), spec.options.get("type_v"))


def open_cache(spec: ModelSpec, path: Path, llm: Any) -> tuple[tuple, PromptCache] | None:
    """The model's shared cache (a disabled one, `prompt_cache: 0`, still counts prefilled tokens).
    None for engines whose prompts are not plain token sequences (vision)."""
    if spec.type != ModelType.NLP:
        return None
    key = cache_key(spec, path)
    return key, prompt_cache.acquire(key, capacity(spec, llm))


def close_cache(opened: tuple[tuple, PromptCache] | None) -> None:
    """Let go of a model's cache (`open_cache`'s result); the last replica's release frees it."""
    if opened is not None:
        prompt_cache.release(opened[0])


def reused(held: int, prompt: int, exact_live: bool) -> int:
    """Prompt tokens `Llama.generate` (llama-cpp-python 0.3.36) will not evaluate again when the context
    holds a `held`-token common prefix: all of them, except that a fully held prompt re-evaluates its
    last token to get fresh logits unless the context's logits are that prompt's own (`exact_live`)."""
    if held < prompt:
        return held
    return prompt if exact_live else prompt - 1


def prepare_single(llm: Any, cache: PromptCache, prompt: list[int]) -> int:
    """Before `Llama.generate(prompt)`: save the live sequence if it is about to be replaced, restore the
    best entry if worth it. Returns the prompt tokens that will not be evaluated (cached tokens)."""
    live = llm.input_ids[: llm.n_tokens].copy()
    keep = common_prefix(live, prompt)
    if cache.save_worthwhile(live, keep):
        data, size = prompt_cache.save_state(llm.ctx, 0)
        cache.put(live, data, size)
    entry, length = cache.best(prompt, keep)
    restored = False
    if entry is not None:
        started = time.perf_counter()
        if prompt_cache.restore_state(llm.ctx, 0, entry):
            private.adopt_tokens(llm, entry.tokens)
            cache.observe_restore(entry.size, time.perf_counter() - started)
            keep, restored = length, True
        else:  # llama.cpp refused the state: the sequence is empty now, and so is what the Llama believes
            private.adopt_tokens(llm, [])
            keep = 0
    exact = llm.n_tokens == len(prompt) and not private.needs_eval(llm)
    cached = reused(keep, len(prompt), exact)
    cache.count(prompt=len(prompt), cached=cached, restored=restored)
    return cached


def save_finished(ctx: Any, seq: int, tokens: Any, cache: PromptCache) -> None:
    """With `replicas`, a conversation's next turn may go to another replica, whose context never held it:
    a finished sequence is saved at once (not only when its own context replaces it), so any replica can
    restore it. Skipped when short or when an entry already holds these tokens (a restored, unextended one)."""
    if cache.save_worthwhile(tokens, 0):
        data, size = prompt_cache.save_state(ctx, seq)
        cache.put(tokens, data, size)


def prepare_slot(ctx: Any, seq: int, held: list[int], keep: int, cache: PromptCache,
                 prompt: list[int]) -> tuple[int, list[int] | None]:
    """A batched slot whose sequence `seq` holds `held` is about to keep its first `keep` tokens (or a
    longer prefix copied from another slot) for `prompt`. Saves what it held if worth it, then restores
    the best entry if it beats `keep`: returns (prefix now usable, the tokens the sequence holds after a
    restore, or None when nothing was restored)."""
    if cache.save_worthwhile(held, common_prefix(held, prompt)):
        data, size = prompt_cache.save_state(ctx, seq)
        cache.put(held, data, size)
    entry, length = cache.best(prompt, keep)
    if entry is None:
        return keep, None
    started = time.perf_counter()
    if not prompt_cache.restore_state(ctx, seq, entry):
        return 0, []
    cache.observe_restore(entry.size, time.perf_counter() - started)
    return length, [int(t) for t in entry.tokens]
