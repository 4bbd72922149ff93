"""The prompt cache (backends/prompt_cache.py) wired into llama.cpp's two text engines.

`parallel: 1` (`Llama.generate`): llama-cpp-python keeps the context's tokens in `Llama.input_ids`
and reuses their longest common prefix with the next prompt. `prepare_single` runs before it: it
saves the live sequence if the new prompt would throw most of it away, and restores a cached entry
in its place when that entry shares a longer prefix; `Llama.generate` then evaluates only the rest.

`parallel: N` (backends/llama_batch.py): the scheduler calls `prepare_slot` while admitting a
request into a free slot, with the same two steps on that slot's sequence.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from backends import llama_private as private
from backends import prompt_cache, prompt_cache_disk
from backends.prompt_cache import PromptCache, common_prefix
from schemas.manifest import ModelSpec, ModelType

log = logging.getLogger("nexa.backends.prompt_cache")

SWA_SLACK = 16  # tokens a sliding-window model's entry stops short of its prompt (see `save`)


def cache_key(spec: ModelSpec, path: Path) -> tuple:
    """What a saved state depends on: the model file (its size and mtime too: a file replaced at the same path
    must not inherit the old one's states through a reload's handover) and the context settings and offload
    (replicas share a cache)."""
    stat = path.stat()
    return (spec.name, str(path), stat.st_size, stat.st_mtime_ns, spec.nctx, spec.parallel,
            repr(sorted(spec.options.items())), spec.device.value, spec.n_gpu_layers)


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
    import llama_cpp

    key = cache_key(spec, path)
    cache = prompt_cache.acquire(key, capacity(spec, llm))
    cache.n_swa = int(llama_cpp.llama_model_n_swa(llm.model))  # sliding-window attention: see `save`
    cache.swa_window_only = not llm.context_params.swa_full  # a window-sized cache: see `checkpoint`
    return key, cache


def close_cache(opened: tuple[tuple, PromptCache] | None) -> None:
    """Let go of a model's cache (`open_cache`'s result); the last replica's release frees it (and writes
    it to disk first, with `server.prompt_cache_dir`)."""
    if opened is not None:
        prompt_cache.release(opened[0])


def persist(cache: PromptCache | None, spec: ModelSpec, path: Path, directory: str) -> None:
    """Keep the model's cache in `directory` across restarts (backends/prompt_cache_disk.py): the first
    replica to get here reads what the last run saved; the last release writes it back."""
    if cache is None or not cache.enabled:
        return
    store = prompt_cache_disk.Store(prompt_cache_disk.model_dir(directory, spec.name), spec.name,
                                    fingerprint(spec, path, cache))
    if cache.attach_store(store):
        store.load(cache)


def fingerprint(spec: ModelSpec, path: Path, cache: PromptCache) -> dict[str, Any]:
    """What a saved state depends on, compared field by field when it is read back: the model file (its
    size and mtime, its digest when the manifest gives one), llama.cpp's build, and the context settings
    (`cache_key`'s, and the offload, which may change how the KV cache is laid out)."""
    import llama_cpp

    stat = path.stat()
    return {"model": str(path), "model_bytes": stat.st_size, "model_mtime_ns": stat.st_mtime_ns,
            "sha256": spec.sha256, "llama_cpp": llama_cpp.__version__, "nctx": spec.nctx, "parallel": spec.parallel,
            "options": repr(sorted(spec.options.items())), "device": spec.device.value,
            "n_gpu_layers": spec.n_gpu_layers, "n_swa": cache.n_swa, "swa_window_only": cache.swa_window_only}


def save_for_restart(ctx: Any, seq: int, tokens: Any, boundary: int, cache: PromptCache | None) -> None:
    """An engine about to close saves what sequence `seq` holds when its cache goes to disk: the conversation
    it served last is otherwise only in the context, and would be prefilled again after the restart."""
    if cache is not None and cache.store is not None and len(tokens):
        try:
            save(ctx, seq, tokens, 0, boundary, cache)
        except Exception as exc:  # noqa: BLE001 - a close never fails for this: the model must still be freed
            log.warning("prompt cache: could not keep sequence %d for the restart: %s", seq, exc,
                        extra={"event": "prompt_cache_save_failed", "reason": str(exc)})


def reused(held: int, prompt: int, exact_live: bool) -> int:
    """Prompt tokens `Llama.generate` (llama-cpp-python 0.3.36) will not evaluate again when the context
    holds a `held`-token common prefix: all of them, except that a fully held prompt re-evaluates its
    last token to get fresh logits unless the context's logits are that prompt's own (`exact_live`)."""
    if held < prompt:
        return held
    return prompt if exact_live else prompt - 1


def prepare_single(llm: Any, cache: PromptCache, prompt: list[int], boundary: int) -> int:
    """Before `Llama.generate(prompt)`: save the live sequence if it is about to be replaced (its last
    request's prompt was `boundary` tokens), restore the best entry if worth it. Returns the prompt tokens
    that will not be evaluated (cached tokens)."""
    live = llm.input_ids[: llm.n_tokens].copy()
    keep = common_prefix(live, prompt)
    held = window_held(llm.ctx, 0, min(keep, len(prompt) - 1), cache.n_swa)  # before `save` cuts anything
    saved = save(llm.ctx, 0, live, keep, boundary, cache)
    if saved is not None and len(saved) < len(live):  # trimmed to its prompt (sliding-window models)
        private.adopt_tokens(llm, saved)
    entry, length = cache.best(prompt, keep if held else 0)  # a live prefix without its window is worth nothing
    restored = False
    if entry is not None:
        started = time.perf_counter()
        if restore(llm.ctx, 0, entry, min(length, len(prompt) - 1), cache):
            private.adopt_tokens(llm, entry.tokens)
            cache.observe_restore(entry.size, time.perf_counter() - started)
            keep, restored = length, True
        else:  # the sequence is empty now, and so is what the Llama believes
            private.adopt_tokens(llm, [])
            keep = 0
    elif keep and not held:
        clear(llm.ctx, 0)  # the live prefix lacks its window's cells: `Llama.generate` prefills it all
        private.adopt_tokens(llm, [])
        keep = 0
    exact = llm.n_tokens == len(prompt) and not private.needs_eval(llm)
    cached = reused(keep, len(prompt), exact)
    cache.count(prompt=len(prompt), cached=cached, restored=restored)
    return cached


def save(ctx: Any, seq: int, tokens: Any, keep: int, boundary: int, cache: PromptCache) -> Any:
    """Save sequence `seq` (holding `tokens`, of which the next prompt keeps `keep`) if worth it; returns
    the tokens saved, or None. A sliding-window model's state holds only the window's last cells, so its
    entry could only continue from its very end, while a conversation's next turn usually rewrites the end
    of the last one (the answer's own tokens): the sequence is first cut back to the last prompt, less a
    few tokens of slack (SWA_SLACK), which a next turn does extend."""
    if cache.n_swa:
        cut = min(len(tokens), boundary) - SWA_SLACK
        if cut <= keep or not cache.save_worthwhile(tokens[:cut], keep) or not window_held(ctx, seq, cut, cache.n_swa):
            return None
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq, cut, -1)
        tokens = tokens[:cut]
    elif not cache.save_worthwhile(tokens, keep):
        return None
    data, size = prompt_cache.save_state(ctx, seq)
    cache.put(tokens, data, size, pos_min(ctx, seq) if cache.n_swa else None)
    return tokens


def checkpoint(ctx: Any, seq: int, prompt: Any, cached: int, cache: PromptCache) -> None:
    """Save a sliding-window model's state as its prompt's prefill ends (llama-server's context checkpoints).
    A window-sized cache (`swa_full: false`) loses the prompt end's window cells once the answer runs past
    the window, so `save`'s cut back to the prompt finds nothing left to save, and the next turn that goes
    on from the prompt (after a side call, or with the answer sent back changed) would be prefilled whole."""
    if cache.n_swa and cache.swa_window_only and cache.save_worthwhile(prompt, cached):
        data, size = prompt_cache.save_state(ctx, seq)
        cache.put(prompt, data, size, pos_min(ctx, seq))


def restore(ctx: Any, seq: int, entry: Any, keep: int, cache: PromptCache) -> bool:
    """Restore `entry` into `seq` to continue after its first `keep` tokens. A sliding-window model needs the
    window's cells before position `keep`: if the state lacks them (llama.cpp's own server applies this
    rule), the sequence is cleared and the entry marked, and the prompt is prefilled."""
    try:
        restored = prompt_cache.restore_state(ctx, seq, entry)
    except (OSError, ValueError) as exc:  # a state read from disk (backends/prompt_cache_disk.py) is damaged
        file = str(getattr(entry.stored, "path", ""))
        log.warning("prompt cache: the %d-token state in %s is unusable (%s); prefilling instead", len(entry.tokens),
                    file, exc, extra={"event": "prompt_cache_skipped", "tokens": len(entry.tokens), "file": file,
                                      "reason": str(exc)})
        cache.discard(entry)
        clear(ctx, seq)
        return False
    if not restored:
        log.warning("prompt cache: llama.cpp refused a %d-token state; prefilling instead", len(entry.tokens),
                    extra={"event": "prompt_cache_refused", "tokens": len(entry.tokens)})
        if entry.stored is not None:  # from disk: it would be refused again
            cache.discard(entry)
        return False
    if cache.n_swa:
        entry.pos_min = pos_min(ctx, seq)
        if not window_held(ctx, seq, keep, cache.n_swa):
            log.info("prompt cache: a %d-token state starts at position %d, too late to continue after %d tokens "
                     "(sliding window %d); prefilling instead", len(entry.tokens), entry.pos_min, keep, cache.n_swa,
                     extra={"event": "prompt_cache_window", "tokens": len(entry.tokens), "pos_min": entry.pos_min})
            clear(ctx, seq)
            return False
    return True


def pos_min(ctx: Any, seq: int) -> int:
    """The first position whose cells sequence `seq` still holds (-1: none)."""
    import llama_cpp

    return int(llama_cpp.llama_memory_seq_pos_min(llama_cpp.llama_get_memory(ctx), seq))


def window_held(ctx: Any, seq: int, keep: int, n_swa: int) -> bool:
    """Whether sequence `seq` can be continued after its first `keep` tokens. A sliding-window model's next
    token attends to the window's cells before `keep`; a sliding-window cache that is not full-size (the
    text engines' default, `swa_full: false`: about n_swa + n_ubatch cells) has overwritten the cells of
    positions far behind the sequence's end, so a prefix much shorter than the sequence may lack them.
    llama-server's rule: the sequence must hold every position from `keep - n_swa` on."""
    return not n_swa or keep <= 0 or pos_min(ctx, seq) <= max(0, keep - n_swa)


def clear(ctx: Any, seq: int) -> None:
    import llama_cpp

    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq, -1, -1)


def save_finished(ctx: Any, seq: int, tokens: Any, boundary: int, cache: PromptCache) -> Any:
    """With `replicas`, a conversation's next turn may go to another replica, whose context never held it:
    a finished sequence is saved at once (not only when its own context replaces it), so any replica can
    restore it. Returns the tokens the sequence holds afterwards (cut back for sliding-window models)."""
    saved = save(ctx, seq, tokens, 0, boundary, cache)
    return saved if saved is not None else tokens


def prepare_slot(ctx: Any, seq: int, held: list[int], keep: int, cache: PromptCache,
                 prompt: list[int], boundary: int) -> tuple[int, list[int] | None]:
    """A batched slot whose sequence `seq` holds `held` (its last prompt `boundary` tokens) is about to keep
    its first `keep` tokens (or a longer prefix copied from another slot) for `prompt`. Saves what it held
    if worth it, then restores the best entry if it beats `keep`: returns (prefix now usable, the tokens
    the sequence holds after a restore, or None when nothing was restored)."""
    save(ctx, seq, held, common_prefix(held, prompt), boundary, cache)
    entry, length = cache.best(prompt, keep)
    if entry is None:
        return keep, None
    started = time.perf_counter()
    if not restore(ctx, seq, entry, min(length, len(prompt) - 1), cache):
        return 0, []
    cache.observe_restore(entry.size, time.perf_counter() - started)
    return length, [int(t) for t in entry.tokens]
