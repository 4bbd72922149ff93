"""Continuous batching for GGUF text models (manifest `parallel: N`).

One model, one llama.cpp context holding N sequences, and one scheduler thread that owns the
context. Requests (one per slot) come from the gateway's job threads through `sample_tokens`;
each step the scheduler admits waiting requests into free slots, feeds every generating slot's
last token plus a chunk of pending prompt tokens into ONE `llama_decode`, then samples each
slot's next token with that slot's own sampler chain (the chain `Llama.generate` builds, so a
request gets the same sampling alone or batched). Everything above the token stream (chat
templates, tools, grammars, stop sequences, logprob text, usage) is `LlamaBackend`'s, unchanged.

The context holds `parallel × nctx` tokens as one KV stream of `nctx` per sequence. A slot keeps
its last prompt's KV when it frees; a new prompt goes to the free slot sharing its longest prefix,
and a longer prefix held by any other slot (a common system prompt) is copied from that slot's
stream (`llama_memory_seq_cp`) instead of being evaluated again. A slot's state about to be replaced
goes to the model's host-memory prompt cache, and a cached state sharing a longer prefix is restored
into the slot instead (backends/llama_cache.py).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from backends import grammar_sampling, llama_cache
from backends import llama_private as private
from backends.base import Cancelled, SamplingParams, TokenLogprob
from backends.batch_stats import BATCH_BUCKETS, BatchStats  # noqa: F401 (their old home)
from backends.errors import BackendError, LoadError
from backends.llama import LlamaBackend, token_logprob
from backends.llama_load import generation_defaults, gguf_file, llama_kwargs, open_llama
from backends.llama_slots import SeqRequest, Slot, reuse_prefix
from backends.prompt_cache import PromptCache, common_prefix
from backends.textloop import Prefill
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.llama_batch")

DEFAULT_CHUNK = 512  # tokens per decode step (generating slots first, then prompt chunks)
MIN_SHARED = 32  # prompt tokens worth waiting for another slot's prefill to copy (see _worth_waiting)
_END = object()


class BatchEngine:
    """The scheduler: owns the batched context; `submit` is its only entry point from other threads."""

    candidate_first = True  # as LlamaBackend.candidate_first: False only in the tests' reference runs

    def __init__(self, llm: Any, n_seq: int, n_ctx_seq: int, chunk: int = DEFAULT_CHUNK,
                 cache: PromptCache | None = None, save_finished: bool = False):
        import llama_cpp

        self.llm = llm
        self.cache = cache  # the model's host-memory prompt cache (backends/llama_cache.py)
        self.save_finished = save_finished and cache is not None  # replicas: any of them may get the next turn
        self.n_ctx_seq = n_ctx_seq
        self.chunk = chunk = max(chunk, n_seq)  # one step must hold a token of every sequence
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_seq * n_ctx_seq
        params.n_seq_max = n_seq
        params.n_batch = params.n_ubatch = chunk
        # One KV stream per sequence, laid out as a single-sequence context's: a request's greedy answer is
        # bit-identical alone or batched (a unified cache moves cells around and changes float sums).
        params.kv_unified = False
        params.embeddings = False
        try:
            self.ctx = private.new_context(llm, params)
        except ValueError as exc:
            raise LoadError(f"llama.cpp could not create a context of {n_seq} × {n_ctx_seq} tokens: {exc}") from exc
        self.memory = self.ctx.memory
        self.batch = llama_cpp.llama_batch_init(chunk, 0, 1)
        self.vocab = private.vocab(llm)
        self.n_swa = int(llama_cpp.llama_model_n_swa(llm.model))  # sliding-window attention: see `_admit`
        self.slots = [Slot(i) for i in range(n_seq)]
        self.stats = BatchStats()
        self._pending: list[SeqRequest] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="batch-scheduler")
        self._thread.start()

    # -- other threads ---------------------------------------------------------------------

    def submit(self, request: SeqRequest) -> None:
        with self._wake:
            if self._closing:
                raise BackendError("the model is unloading")
            self._pending.append(request)
            self._wake.notify()

    def poke(self) -> None:
        """A request changed state (its consumer left): let the scheduler look now."""
        with self._wake:
            self._wake.notify()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def kv_cells(self) -> tuple[int, int]:
        """(cells in use, cells) over every sequence, read by /metrics while the scheduler runs.

        A slot's `tokens` mirror exactly the KV cells its sequence holds (the scheduler writes both in
        the same step), so this needs no call into llama.cpp, whose context is not safe to query from
        another thread mid-decode. In use: the cells of slots serving a request. A free slot's kept
        prompt (prefix reuse) is evictable at no cost, so it counts as free, as vLLM counts its cached
        blocks; so does anything a host-memory prompt cache keeps outside the context."""
        used = sum(len(slot.tokens) for slot in self.slots if slot.request is not None)
        return used, len(self.slots) * self.n_ctx_seq

    def close(self) -> None:
        import llama_cpp

        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        self.ctx.close()

    # -- the scheduler thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._pending and not self._active():
                    self._wake.wait()
                if self._closing:
                    break
            self._admit_waiting()
            self._reap()
            if self._active():
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - every running request gets the error, the engine goes on
                    log.exception("batched decode failed")
                    self._fail_all(BackendError(f"generation failed: {exc}"))
            else:
                with self._wake:  # every active request left; wait briefly for news instead of spinning
                    if not self._pending and not self._closing:
                        self._wake.wait(0.05)
        for slot in self.slots:  # with `server.prompt_cache_dir`, what the slots hold survives a restart
            llama_cache.save_for_restart(self.ctx.ctx, slot.seq, slot.tokens, slot.prompt_len, self.cache)
        self._fail_all(BackendError("the model is unloading"))
        with self._wake:
            pending, self._pending = self._pending, []
        for request in pending:
            request.out.put(BackendError("the model is unloading"))

    def _active(self) -> list[Slot]:
        return [s for s in self.slots if s.request is not None]

    def _admit_waiting(self) -> None:
        """Fill free slots in arrival order, one at a time, so each admission sees the prompts before it."""
        while any(s.request is None for s in self.slots):
            with self._wake:
                request = next((r for r in self._pending if not self._worth_waiting(r)), None)
                if request is None:
                    return
                self._pending.remove(request)
            self._admit(request)

    def _worth_waiting(self, request: SeqRequest) -> bool:
        """A prompt sharing a long prefix with one still being evaluated (eight chats arriving together
        with one system prompt) waits for it and copies its KV, instead of computing the prefix again."""
        if request.gone():
            return False
        prompt = request.prompt
        have = max(common_prefix(s.tokens, prompt) for s in self.slots)
        return any(s.request is not None and s.todo and common_prefix(s.request.prompt, prompt) >= have + MIN_SHARED
                   for s in self.slots)

    def _admit(self, request: SeqRequest) -> None:
        if request.gone():
            request.out.put(_END)
            return
        try:
            sampler = self._sampler(request)
        except Exception as exc:  # noqa: BLE001 - e.g. a grammar llama.cpp refuses: this request fails, not the engine
            request.out.put(BackendError(f"could not set up sampling: {exc}"))
            return
        prompt = request.prompt
        free = [s for s in self.slots if s.request is None]
        slot = max(free, key=lambda s: (common_prefix(s.tokens, prompt), -s.used))
        keep, restored = reuse_prefix(self.ctx.ctx, slot, self.slots, prompt, self.n_swa, self.cache)
        slot.prompt_len = len(prompt)
        slot.todo = prompt[keep:]
        slot.last, slot.generated = None, 0
        slot.request, slot.used = request, time.monotonic()
        slot.sampler = sampler
        self.stats.running += 1
        self.stats.requests += 1
        self.stats.prompt_tokens += len(prompt)
        self.stats.reused_tokens += keep
        self.stats.prefix_hits += keep > 0
        request.prefill.cached_tokens = keep
        if self.cache is not None:
            self.cache.count(prompt=len(prompt), cached=keep, restored=restored)

    def _sampler(self, request: SeqRequest) -> Any:
        """The sampler `LlamaBackend.sample_tokens` would use for these parameters: the chain
        `Llama.generate` builds (penalties, then greedy, or top-k/typical/top-p/min-p/temperature/dist
        with the request's seed), and a grammar checked against the sampled token first
        (backends/grammar_sampling.py)."""
        p, llm = request.params, self.llm
        llm.set_seed(p.seed if p.seed is not None else random.randrange(2**31))
        return grammar_sampling.make_sampler(
            llm, request.grammar, candidate_first=self.candidate_first, top_k=p.top_k, top_p=p.top_p,
            min_p=p.min_p, temp=p.temperature, repeat_penalty=p.repeat_penalty,
            frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty)

    def _release(self, slot: Slot, item: Any = _END) -> None:
        if slot.request is not None:
            slot.request.out.put(item)
            self.stats.running -= 1
            if item is _END and self.save_finished:
                slot.tokens = list(llama_cache.save_finished(self.ctx.ctx, slot.seq, slot.tokens, slot.prompt_len,
                                                             self.cache))
        slot.request, slot.todo, slot.last = None, [], None
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None
        slot.used = time.monotonic()

    def _reap(self) -> None:
        """Free at once the slots whose client left or whose consumer stopped reading."""
        for slot in self._active():
            if slot.request.gone():
                self._release(slot)

    def _fail_all(self, exc: BaseException) -> None:
        import llama_cpp

        for slot in self._active():
            self._release(slot, exc)
        llama_cpp.llama_memory_clear(self.memory, True)
        for slot in self.slots:
            slot.tokens = []

    def _step(self) -> None:
        """One `llama_decode`: the last token of every generating slot, then prompt chunks."""
        import llama_cpp

        batch, n = self.batch, 0
        fed: list[tuple[Slot, list[int]]] = []
        outputs: list[tuple[Slot, int]] = []
        active = self._active()
        for slot in active:
            if slot.last is not None:
                self._put(n, slot.last, len(slot.tokens), slot.seq, True)
                fed.append((slot, [slot.last]))
                outputs.append((slot, n))
                n += 1
        generating = n
        for slot in sorted((s for s in active if s.todo), key=lambda s: s.used):
            take = min(len(slot.todo), self.chunk - n)
            if take <= 0:
                break
            part = slot.todo[:take]
            base = len(slot.tokens)
            for j, token in enumerate(part):
                last = j == take - 1 and take == len(slot.todo)
                self._put(n, token, base + j, slot.seq, last)
                if last:
                    outputs.append((slot, n))
                n += 1
            fed.append((slot, part))
        batch.n_tokens = n
        started = time.perf_counter()
        code = llama_cpp.llama_decode(self.ctx.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        if self.cache is not None and generating == 0:  # a step of prompt work only: the prefill rate
            self.cache.observe_prefill(n, time.perf_counter() - started)
        self.stats.observe_batch(len(fed))
        for slot, part in fed:
            slot.tokens.extend(part)
            if slot.last is None:
                slot.todo = slot.todo[len(part):]
        for slot, index in outputs:
            self._sample(slot, index)

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _sample(self, slot: Slot, index: int) -> None:
        import llama_cpp

        request = slot.request
        token = slot.sampler.sample(self.ctx, index)
        top = request.params.logprobs
        logprob = None
        if top is not None:
            logprob = token_logprob(self.llm, llama_cpp.llama_get_logits_ith(self.ctx.ctx, index), token, top)
        request.out.put((token, logprob))
        slot.generated += 1
        slot.last = token
        if slot.generated == 1 and self.cache is not None:  # the prefill just ended: the sequence holds the prompt
            llama_cache.checkpoint(self.ctx.ctx, slot.seq, slot.tokens, request.prefill.cached_tokens, self.cache)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token) or slot.generated >= request.budget:
            self._release(slot)


class BatchedLlamaBackend(LlamaBackend):
    """`LlamaBackend` whose tokens come from a shared `BatchEngine` instead of `Llama.generate`."""

    def __init__(self, spec: ModelSpec, path: Path, llm: Any, engine: BatchEngine):
        super().__init__(spec, path, llm)
        self.engine = engine

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "BatchedLlamaBackend":
        path = gguf_file(path)
        chunk = int(spec.options.get("n_batch", DEFAULT_CHUNK))
        # the Llama object only tokenizes and holds the model; the engine's context is the batched one
        llm = open_llama(path, llama_kwargs(spec, path, generation_defaults(spec), n_ctx=32, n_batch=32, n_ubatch=32))
        opened = llama_cache.open_cache(spec, path, llm)
        try:
            engine = BatchEngine(llm, spec.parallel, spec.nctx, chunk, cache=opened[1] if opened else None,
                                 save_finished=spec.replicas > 1)
        except BaseException:
            llama_cache.close_cache(opened)
            llm.close()
            raise
        backend = cls(spec, path, llm, engine)
        if opened is not None:
            backend._cache_key, backend.cache = opened
        return backend

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()  # the context goes before its model
        super().close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "n_ctx": self.engine.n_ctx_seq, "parallel": len(self.engine.slots)}

    def context_size(self) -> int:
        return self.engine.n_ctx_seq

    def batch_stats(self) -> BatchStats:
        return self.engine.stats

    def kv_cells(self) -> tuple[int, int]:
        engine = self.engine
        return engine.kv_cells() if engine is not None else (0, 0)

    def sample_tokens(self, prompt_tokens: list[int], params: SamplingParams, grammar: Any, budget: int,
                      cancelled: Cancelled, prefill: Prefill) -> Iterator[tuple[int, TokenLogprob | None]]:
        engine = self.engine
        request = SeqRequest(list(prompt_tokens), params, grammar, budget, cancelled, prefill=prefill)
        engine.submit(request)
        try:
            while True:
                try:
                    item = request.out.get(timeout=1.0)
                except queue.Empty:
                    if cancelled() or not engine.alive():
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.abandoned = True
            engine.poke()
