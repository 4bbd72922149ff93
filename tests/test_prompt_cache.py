"""The host-memory prompt cache (backends/prompt_cache.py): its bookkeeping alone, then wired into the
real llama.cpp engines in-process (SmolLM2): a conversation set aside by a side call is restored, not
prefilled again, and what a request produces is what it produces without the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import prompt_cache
from backends.base import SamplingParams
from backends.prompt_cache import MIN_TOKENS, PromptCache, common_prefix
from schemas.manifest import ModelSpec


def put(cache: PromptCache, tokens: list[int], size: int) -> bool:
    return cache.put(tokens, bytearray(size), size)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_least_recently_used_entries_go_first_and_bytes_stay_within_the_bound():
    cache = PromptCache(1000)
    a, b, c = ([k] * 200 for k in (1, 2, 3))
    assert put(cache, a, 400) and put(cache, b, 400)
    assert cache.best(a + [9], 0)[0] is not None  # a is used: b is now the least recent
    assert put(cache, c, 400)
    assert cache.bytes <= 1000 and len(cache) == 2
    assert cache.best(b, 0)[0] is None and cache.best(a, 0)[0] is not None and cache.best(c, 0)[0] is not None
    assert cache.stats.evictions == 1
    assert not put(cache, [4] * 200, 1001)  # larger than the whole bound: never kept
    assert cache.bytes <= 1000


def test_an_entry_that_extends_another_replaces_it_and_a_covered_state_is_not_saved_again():
    cache = PromptCache(10_000)
    base = list(range(100))
    put(cache, base, 100)
    put(cache, base + [7] * 100, 200)
    assert len(cache) == 1 and cache.bytes == 200
    assert not cache.save_worthwhile(base, 0)  # the entry holds these tokens and more
    assert not cache.save_worthwhile(list(range(1000, 1000 + MIN_TOKENS - 1)), 0)  # too short to be worth it
    assert cache.save_worthwhile(list(range(1000, 1200)), 0)
    assert not cache.save_worthwhile(list(range(1000, 1200)), 200 - MIN_TOKENS + 1)  # most of it is kept anyway
    assert not PromptCache(0).save_worthwhile(list(range(1000, 1200)), 0)


def test_best_is_the_longest_prefix_when_the_restore_costs_less_than_the_prefill():
    cache = PromptCache(10**9)
    common = list(range(300))
    put(cache, common[:150] + [1] * 50, 1000)
    put(cache, common + [2] * 50, 1000)
    entry, length = cache.best(common + [3] * 10, 0)
    assert length == 300 and list(entry.tokens[:300]) == common
    assert cache.best(common + [3] * 10, 300 - MIN_TOKENS + 1) == (None, 0)  # the sequence holds nearly as much
    cache.restore_s_per_byte = 1.0  # a restore slower than computing the prefix: not used
    assert cache.best(common + [3] * 10, 0) == (None, 0)
    assert PromptCache(0).best(common, 0) == (None, 0)


def test_counts_split_cached_restored_and_prefilled_tokens():
    cache = PromptCache(0)
    cache.count(prompt=1000, cached=900, restored=True)
    cache.count(prompt=500, cached=10, restored=False)
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.restored_tokens, stats.reused_tokens, stats.prefilled_tokens) == \
        (1, 1, 900, 10, 100 + 490)


def test_replicas_share_one_cache_until_the_last_lets_go():
    key = ("m", "/x.gguf", 512, 1, "[]")
    first, second = prompt_cache.acquire(key, 100), prompt_cache.acquire(key, 100)
    assert first is second
    prompt_cache.release(key)
    assert prompt_cache.acquire(key, 100) is first
    prompt_cache.release(key)
    prompt_cache.release(key)
    assert prompt_cache.acquire(key, 100) is not first
    prompt_cache.release(key)


def test_kv_bytes_per_token_from_gguf_metadata():
    gemma = {"general.architecture": "gemma3", "gemma3.embedding_length": "640", "gemma3.attention.head_count": "4",
             "gemma3.attention.key_length": "256", "gemma3.attention.value_length": "256"}
    assert prompt_cache.kv_bytes_per_token(gemma, n_layer=18, n_head_kv=1) == 18 * 1 * 512 * 2
    llama = {"general.architecture": "llama", "llama.embedding_length": "576", "llama.attention.head_count": "9"}
    assert prompt_cache.kv_bytes_per_token(llama, n_layer=30, n_head_kv=3) == 30 * 3 * 128 * 2
    assert prompt_cache.kv_bytes_per_token(llama, n_layer=30, n_head_kv=3, type_k=8, type_v=8) == int(30 * 3 * 128 * 34 / 32)


def test_a_model_file_replaced_at_the_same_path_gets_a_cache_of_its_own(tmp_path):
    """A reload hands a model's cache over by its key: a file replaced in place (a new download, the same
    name) must not inherit states computed by the old weights."""
    import os

    from backends.llama_cache import cache_key

    path = tmp_path / "m.gguf"
    path.write_bytes(b"old weights")
    spec = ModelSpec(name="m", source=str(path))
    before = cache_key(spec, path)
    assert cache_key(spec, path) == before  # the same file: the same cache
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert cache_key(spec, path) != before
    path.write_bytes(b"new weights, longer")
    assert cache_key(spec, path) != before

def test_the_manifest_key_takes_sizes_and_refuses_engines_without_token_prompts():
    assert ModelSpec(name="m", source="x.gguf", prompt_cache="512MiB").prompt_cache == 512 * 2**20
    assert ModelSpec(name="m", source="x.gguf", prompt_cache=0).prompt_cache == 0
    assert ModelSpec(name="m", source="x.gguf").prompt_cache is None
    with pytest.raises(ValueError, match="only for GGUF text models"):
        ModelSpec(name="v", source="x.gguf", type="MULTIMODAL", mmproj="p.gguf", prompt_cache="64MiB")
    with pytest.raises(ValueError, match="only for GGUF text models"):
        ModelSpec(name="o", source="x", format="onnx", prompt_cache="64MiB")


# -- the real engines, in-process -------------------------------------------------------------

llama = pytest.importorskip("llama_cpp")

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, top_k=1, seed=1)


def conversation(topic: str, turns: int) -> list[dict]:
    messages = [{"role": "system", "content": f"You are a careful assistant who knows about {topic}. " * 20}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Tell me fact {i} about {topic}, in one sentence. " * 4})
        messages.append({"role": "assistant", "content": f"Fact {i}: {topic} is interesting for reason {i}. " * 3})
    return messages


def ask(backend, messages: list[dict]):
    deltas = list(backend.chat(messages + [{"role": "user", "content": "And one more?"}], GREEDY, lambda: False))
    return "".join(d.text for d in deltas), deltas[-1].usage


def load(smollm2_path: Path, **fields):
    from backends.registry import backend_for

    spec = ModelSpec(name=f"smol-{id(fields)}", source=str(smollm2_path), nctx=2048, n_threads=2, device="cpu",
                     **fields)
    return backend_for(spec).load(spec, smollm2_path)  # parallel > 1: the batched engine


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_conversation_set_aside_by_side_calls_is_restored_not_prefilled(smollm2_path, parallel):
    backend = load(smollm2_path, parallel=parallel, prompt_cache="256MiB")
    try:
        main, side, other = conversation("rivers", 3), conversation("volcanoes", 1), conversation("owls", 1)
        ask(backend, main)
        ask(backend, side)
        if parallel == 2:
            ask(backend, other)  # two slots: a second side call takes the main conversation's slot
        stats = backend.prompt_cache().stats
        before = stats.prefilled_tokens
        _, usage = ask(backend, main + [{"role": "user", "content": "Rivers?"},
                                        {"role": "assistant", "content": "Yes."}])
        assert usage.cached_tokens >= 0.9 * usage.prompt_tokens
        assert stats.prefilled_tokens - before == usage.prompt_tokens - usage.cached_tokens
        assert stats.hits >= 1 and stats.restored_tokens >= usage.cached_tokens
        assert 0 < backend.prompt_cache().bytes <= 256 * 2**20
    finally:
        backend.close()


def test_without_the_cache_the_conversation_is_prefilled_again(smollm2_path):
    backend = load(smollm2_path, prompt_cache=0)
    try:
        main = conversation("rivers", 3)
        ask(backend, main)
        ask(backend, conversation("volcanoes", 1))
        _, usage = ask(backend, main)
        assert usage.cached_tokens < 0.2 * usage.prompt_tokens
        assert backend.prompt_cache().bytes == 0 and backend.prompt_cache().stats.hits == 0
    finally:
        backend.close()


def test_a_restored_state_answers_as_the_live_one_does(smollm2_path):
    """The same requests with and without the cache: the tokens after a restore are the tokens after a
    live prefix (same KV, same batch shapes for the rest)."""
    cached, plain = load(smollm2_path, prompt_cache="256MiB"), load(smollm2_path, prompt_cache=0)
    try:
        main = conversation("rivers", 3)
        follow = main + [{"role": "user", "content": "Which river is longest?"}]
        ask(cached, main)
        ask(cached, conversation("volcanoes", 1))
        restored, usage = ask(cached, follow)
        assert usage.cached_tokens > 0 and cached.prompt_cache().stats.hits == 1
        ask(plain, main)
        live, live_usage = ask(plain, follow)
        assert live_usage.cached_tokens == usage.cached_tokens
        assert restored == live
    finally:
        cached.close()
        plain.close()


def test_the_default_bound_is_one_context_of_kv(smollm2_path):
    backend = load(smollm2_path)
    try:
        per_token = 30 * 3 * 64 * 2 * 2  # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16 keys and values
        assert backend.prompt_cache().capacity == 2048 * per_token
        assert backend.info()["prompt_cache"]["capacity_bytes"] == 2048 * per_token
    finally:
        backend.close()


def test_a_sliding_window_model_restores_only_what_its_state_can_continue(gemma_path):
    """Gemma 3 attends over a 512-token window in most layers, and a saved state keeps only the window's
    last cells: an entry is cut back to its prompt before it is saved, a next turn extending it is
    restored (and answers as the live context does), and a prompt keeping only an early part of it is
    prefilled instead of being continued from a state that lacks the cells it needs."""
    from backends.registry import backend_for

    def load(bound):
        spec = ModelSpec(name=f"gemma-{bound}", source=str(gemma_path), nctx=2048, n_threads=2, device="cpu",
                         prompt_cache=bound)
        return backend_for(spec).load(spec, gemma_path)

    def run(backend, tokens):
        deltas = list(backend.complete(tokens, GREEDY, lambda: False))
        return "".join(d.text for d in deltas), deltas[-1].usage

    cached, plain = load("256MiB"), load(0)
    try:
        base = cached.tokenize("The river valley: " + " ".join(f"In {1000 + i} Ardel built bridge {i}." for i in range(70)))
        turn = base + cached.tokenize(" Then the town", add_bos=False)
        side = cached.tokenize("A recipe for bread: " + "flour, water, salt, yeast. " * 20)
        assert len(base) > 600 and cached.prompt_cache().n_swa > 0
        run(cached, base)
        run(cached, side)  # the conversation is saved, cut back to its prompt
        restored, usage = run(cached, turn)
        assert cached.prompt_cache().stats.hits == 1
        assert usage.cached_tokens >= len(base) - 2 * 16
        run(plain, base)
        live, _ = run(plain, turn)
        assert restored == live
        run(cached, side)  # (restored from its own entry: a hit)
        hits = cached.prompt_cache().stats.hits
        _, partial = run(cached, base[:200] + side[1:])  # keeps 200 tokens of an entry of 600+: not continued
        assert cached.prompt_cache().stats.hits == hits and partial.cached_tokens < 200
    finally:
        cached.close()
        plain.close()


@pytest.mark.parametrize("prompt_cache", [0, "256MiB"])
def test_a_live_prefix_whose_window_cells_are_gone_is_prefilled_not_continued(gemma_path, prompt_cache):
    """Text models keep a sliding-window cache of about the window's size (`swa_full: false`, llama-server's
    default): after a long prompt, the cells of early positions are overwritten, so a prompt sharing only an
    early part of the context cannot continue from it (its window's cells are gone) and is prefilled whole,
    with the answer a fresh context gives; a prompt extending the context still reuses it."""
    from backends.registry import backend_for

    def load(name):
        spec = ModelSpec(name=name, source=str(gemma_path), nctx=4096, n_threads=2, device="cpu",
                         prompt_cache=prompt_cache)
        return backend_for(spec).load(spec, gemma_path)

    def run(backend, tokens):
        deltas = list(backend.complete(tokens, GREEDY, lambda: False))
        return "".join(d.text for d in deltas), deltas[-1].usage

    used, fresh = load(f"gemma-used-{prompt_cache}"), load(f"gemma-fresh-{prompt_cache}")
    try:
        long = used.tokenize("The river valley: " + " ".join(f"In {1000 + i} Ardel built bridge {i}." for i in range(160)))
        early = long[:300] + used.tokenize(" But the chronicle says otherwise:", add_bos=False)
        assert len(long) > 1500 and used.llm.context_params.swa_full is False
        run(used, long)
        _, extended = run(used, long + used.tokenize(" Then the town", add_bos=False))
        assert extended.cached_tokens >= len(long) - 16  # the window's cells behind the end are held
        answer, usage = run(used, early)
        assert usage.cached_tokens == 0  # 300 tokens in common, but their window's cells were overwritten
        assert answer == run(fresh, early)[0]
    finally:
        used.close()
        fresh.close()


@pytest.mark.parametrize("parallel", [1, 2])
@pytest.mark.parametrize("prompt_cache", [0, "256MiB"])
def test_a_prompt_is_kept_from_its_prefill_when_the_window_moves_past_it(gemma_path, prompt_cache, parallel):
    """Context checkpoints: a window-sized sliding-window cache loses a prompt end's window cells once the
    sequence runs on past the window (here 700 more prompt tokens, as a long answer would), so a next request
    that goes on from the first prompt instead (a side branch) can only be served by the state saved as that
    prompt's prefill ended. Without a cache it is prefilled whole, so the test can fail. The batched engine
    (`parallel: 2`) saves it as the slot's prefill ends."""
    from backends.registry import backend_for

    spec = ModelSpec(name=f"gemma-checkpoint-{prompt_cache}-{parallel}", source=str(gemma_path), nctx=4096,
                     n_threads=2, device="cpu", prompt_cache=prompt_cache, parallel=parallel)
    backend = backend_for(spec).load(spec, gemma_path)

    def run(tokens):
        return list(backend.complete(tokens, GREEDY, lambda: False))[-1].usage

    try:
        first = backend.tokenize("The river valley: " + " ".join(f"In {1000 + i} Ardel built bridge {i}." for i in range(100)))
        onward = first + backend.tokenize(" " + " ".join(f"Then in {1200 + i} the mill {i} turned." for i in range(70)),
                                          add_bos=False)
        branch = first + backend.tokenize(" But the chronicle says otherwise:", add_bos=False)
        assert len(first) > 900 and len(onward) - len(first) > 600 and backend.llm.context_params.swa_full is False
        run(first)
        assert run(onward).cached_tokens >= len(first) - 16  # the live context extended
        usage = run(branch)  # goes on from `first`, whose window's cells the live context no longer holds
        if prompt_cache:
            assert usage.cached_tokens >= len(first) - 16
        else:
            assert usage.cached_tokens == 0
    finally:
        backend.close()
