"""Grammar-constrained sampling that checks the sampled token first (issue 19 §4).

llama-cpp-python puts the grammar inside the sampler chain (penalties, grammar, then greedy or
top-k/…/dist), so every step matches each of the vocabulary's tokens against the grammar: 49k
tokens for SmolLM2, 262k for Gemma 3, most of a step's time on a small model. llama.cpp's own
common sampler (`common/sampling.cpp`, `common_sampler_sample` with grammar_first=false) samples
with the chain alone, then checks only the chosen token against the grammar (the grammar sampler
applied to a one-token array). Most steps the model's choice is allowed and that is all the grammar
work there is; otherwise the step samples again from the candidates with the grammar applied first.

Greedy decoding gives exactly the old tokens (the first maximum over the vocabulary, when allowed, is
the first maximum over the allowed tokens). Plain temperature sampling keeps its distribution
(P(t) = p(t) + (1 − V)·p(t)/V = p(t)/V over the allowed mass V); with top-k/top-p the truncation is
taken before the grammar rather than after, as llama.cpp's server does.

The grammar's accept sees only the token finally chosen. So does the chain's when it has penalties
(their history must not hold a refused token): the candidates are then a preallocated array filled
from the logits with numpy and run through `llama_sampler_apply`. Without penalties (the default) no
sampler of the chain keeps state that an accept changes (greedy, top-k/…/min-p, temperature and dist
accept nothing; the penalties sampler's history is read only when a penalty is set), so the first pick
is `llama_sampler_sample`, which builds the candidates in C: filling 262k candidates with numpy cost
Gemma a few milliseconds a token.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from backends import llama_private as private


class CandidateFirstSampler:
    """A request's sampler under a grammar: `sample(ctx, idx)` as llama-cpp-python's `LlamaSampler`
    (a `LlamaContext` and the output row), so `Llama.generate` and the batched engine both take it."""

    def __init__(self, llm: Any, grammar: Any, **sampling: Any):
        import llama_cpp

        self._lib = llama_cpp
        self.chain = private.sampler_chain(llm, **sampling)  # the same chain, without the grammar
        self.stateless = (sampling.get("repeat_penalty", 1.0) == 1.0 and not sampling.get("frequency_penalty")
                          and not sampling.get("presence_penalty"))
        self.grammar = private.grammar_sampler(llm, grammar)
        self.n_vocab = n = llm.n_vocab()
        self._data = (llama_cpp.llama_token_data * n)()
        self._view = np.ctypeslib.as_array(self._data)  # fields id, logit, p over the same memory
        self._fresh = np.zeros(n, dtype=self._view.dtype)
        self._fresh["id"] = np.arange(n, dtype=np.int32)
        self._candidates = llama_cpp.llama_token_data_array(self._data, n, -1, False)
        self._one = llama_cpp.llama_token_data(0, 1.0, 0.0)
        self._single = llama_cpp.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        lib = self._lib
        if self.stateless:  # llama.cpp builds the candidates; its accept of the chain changes nothing
            token = lib.llama_sampler_sample(self.chain.sampler, ctx.ctx, idx)
            if not self.allows(token):
                token = self._select(lib.llama_get_logits_ith(ctx.ctx, idx), grammar_first=True)
            lib.llama_sampler_accept(self.grammar.sampler, token)
            return token
        logits = lib.llama_get_logits_ith(ctx.ctx, idx)
        token = self._select(logits, grammar_first=False)
        if not self.allows(token):
            token = self._select(logits, grammar_first=True)
        lib.llama_sampler_accept(self.grammar.sampler, token)
        lib.llama_sampler_accept(self.chain.sampler, token)
        return token

    def allows(self, token: int) -> bool:
        """Whether the grammar, in its present state, allows `token` next."""
        one, single = self._one, self._single
        one.id, one.logit, one.p = token, 1.0, 0.0
        single.size, single.selected, single.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self.grammar.sampler, ctypes.byref(single))
        return one.logit != float("-inf")

    def _select(self, logits: Any, grammar_first: bool) -> int:
        """The chain's pick from every token of the vocabulary (after the grammar's filter if asked)."""
        view = self._view
        view[:] = self._fresh
        view["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        candidates = self._candidates
        candidates.data = ctypes.cast(self._data, candidates.data.__class__)  # samplers may shrink size only
        candidates.size, candidates.selected, candidates.sorted = self.n_vocab, -1, False
        if grammar_first:
            self._lib.llama_sampler_apply(self.grammar.sampler, ctypes.byref(candidates))
        self._lib.llama_sampler_apply(self.chain.sampler, ctypes.byref(candidates))
        selected = candidates.selected
        if not 0 <= selected < candidates.size:
            raise RuntimeError("the sampler chain selected no token")
        return int(candidates.data[selected].id)

    def close(self) -> None:
        self.chain.close()
        self.grammar.close()


def make_sampler(llm: Any, grammar: Any, candidate_first: bool = True, **sampling: Any) -> Any:
    """The sampler for one request. Without a grammar, or with `candidate_first=False` (the reference
    the tests compare against), it is the chain `Llama.generate` builds, grammar inside."""
    if grammar is None or not candidate_first:
        return private.sampler_chain(llm, grammar=grammar, **sampling)
    return CandidateFirstSampler(llm, grammar, **sampling)
