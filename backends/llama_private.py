"""Every use of llama-cpp-python's private attributes, in one place.

Checked against llama-cpp-python 0.3.36 (`llama_cpp.__version__`). These names are not public
API and may change in any release: after upgrading llama-cpp-python, read this module against
the new source first (tests/test_llama_private.py checks that each name still exists).
Each function says what it reaches into and why the public API does not do.

Outside this module, backends/vision.py's `_GatewayHandler` overrides hooks of llama-cpp-python's
multimodal chat handlers (`_init_mtmd_context`, `_create_bitmap_from_bytes`, `load_image`,
`_get_chat_template`, `_get_template_messages`); subclassing is their only way in, and the module
docstring there says why each is overridden. The libmtmd handles those hooks read go through here.
"""

from __future__ import annotations

from typing import Any, Callable

CHECKED_VERSION = "0.3.36"


# -- the model (`Llama._model`, a `_internals.LlamaModel`) ------------------------------------

def token_text(llm: Any, token: int) -> str:
    """A special token's text as the chat template writes it (BOS/EOS). `Llama.detokenize`
    drops special tokens' text; `Llama.token_bos()` gives only the id."""
    return llm._model.token_get_text(token)


def token_piece(llm: Any, token: int) -> bytes:
    """One token's bytes, special tokens written out (llama-server's /tokenize pieces and /detokenize).
    `Llama.detokenize` drops a leading space after BOS and asserts pieces fit 32 bytes."""
    import ctypes

    import llama_cpp

    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, llama_cpp.llama_token(token), buffer, size, 0, True)
        if n >= 0:
            return buffer.raw[:n]
        size = -n  # too small: llama.cpp answers minus the length it needs


def vocab(llm: Any) -> Any:
    """The `llama_vocab*` pointer that `llama_cpp.llama_vocab_is_eog` takes; `Llama` does not expose it
    (its `token_eos()` is one token, while a model may have several end-of-generation tokens)."""
    return llm._model.vocab


def n_ctx_train(llm: Any) -> int:
    """The context the model was trained for; `Llama` gives only the context it was opened with."""
    return int(llm._model.n_ctx_train())


def new_context(llm: Any, params: Any) -> Any:
    """A second llama.cpp context over the same loaded weights (continuous batching: one context of
    N sequences). `Llama` owns exactly one context and builds it in its constructor."""
    from llama_cpp._internals import LlamaContext

    return LlamaContext(model=llm._model, params=params, verbose=llm.verbose)


# -- the context (`Llama._ctx`, a `_internals.LlamaContext`) ----------------------------------

def last_logits(llm: Any) -> Any:
    """The logits row of the step `Llama.generate` just sampled, for logprobs. `Llama.scores` holds
    them only when the model was opened with logits_all=True (n_ctx × n_vocab floats of memory)."""
    return llm._ctx.get_logits()


def raw_context(llm: Any) -> Any:
    """The `llama_context*` the low-level calls take (`llama_get_embeddings*`)."""
    return llm._ctx.ctx


def clear_kv(llm: Any) -> None:
    """Forget every sequence in the KV cache. `Llama.reset()` only rewinds its token counter."""
    llm._ctx.kv_cache_clear()


def decode_sequences(llm: Any, sequences: list[list[int]]) -> None:
    """One `llama_decode` of several sequences, each under its own sequence id, every token
    returning its output (embeddings). `Llama.eval` decodes one sequence at a time."""
    batch = llm._batch
    batch.reset()
    try:
        for seq_id, tokens in enumerate(sequences):
            batch.add_sequence(tokens, seq_id, True)
        llm._ctx.decode(batch)
    finally:
        batch.reset()


# -- sampling and lifecycle -------------------------------------------------------------------

def sampler_chain(llm: Any, **sampling: Any) -> Any:
    """The sampler chain `Llama.generate` builds for these parameters (penalties, grammar, then greedy
    or top-k/typical/top-p/min-p/temperature/dist), as its own object: the batched engine samples each
    sequence with its own chain, so a request gets the same sampling alone or batched. Called on the
    class, so a `sample_with` in force on this `Llama` does not answer it."""
    return type(llm)._init_sampler(llm, **sampling)


def grammar_sampler(llm: Any, grammar: Any) -> Any:
    """A `LlamaSampler` holding only `grammar`'s sampler (its `.sampler` is what `llama_sampler_apply`
    and `llama_sampler_accept` take), for checking one candidate token at a time
    (backends/grammar_sampling.py). `LlamaSampler.add_grammar` reads the model and the grammar's text
    from `Llama._model` and `LlamaGrammar._grammar`/`_root`, which have no public getters."""
    from llama_cpp._internals import LlamaSampler

    sampler = LlamaSampler()
    sampler.add_grammar(llm._model, grammar)
    return sampler


def sample_with(llm: Any, build: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
    """Make this `Llama`'s next `generate` sample with `build(sampling)` (an object with
    `sample(ctx, idx)`, like `LlamaSampler`) instead of the chain it would build from the same
    arguments; returns the undo. `Llama.generate` calls `self._init_sampler(**sampling)` once and
    then `self._sampler.sample(self._ctx, idx)` each step, and takes no sampler of its own; keeping
    `generate` as the token loop keeps its prompt-prefix reuse, which the prompt cache relies on."""
    llm._init_sampler = lambda **sampling: build(sampling)
    return lambda: llm.__dict__.pop("_init_sampler", None)


def on_close(llm: Any, callback: Callable[[], None]) -> None:
    """Run `callback` when the model closes, before its weights are freed (a libmtmd context
    that points into the model must go first). `Llama` keeps its resources on this exit stack."""
    llm._stack.callback(callback)


def needs_eval(llm: Any) -> bool:
    """True when the context holds no fresh logits for its last token (after a reset, or when a chat
    handler's prefill ended with an image chunk): `Llama` exposes no way to ask."""
    return bool(llm._requires_eval)


def adopt_tokens(llm: Any, tokens: Any) -> None:
    """Tell a `Llama` its context now holds `tokens` (positions 0..n-1) after the prompt cache restored
    a sequence state into it; its next `generate` reuses their common prefix with the prompt and
    re-evaluates at least the last token (logits are not part of a restored state). `Llama` keeps
    these in `input_ids`/`n_tokens` and `_requires_eval`, with no public setter."""
    n = len(tokens)
    if n:
        llm.input_ids[:n] = tokens
    llm.n_tokens = n
    llm._requires_eval = True


# -- libmtmd (vision) -------------------------------------------------------------------------

def mtmd_lib(handler: Any) -> Any:
    """The ctypes libmtmd bindings a multimodal chat handler was built with."""
    return handler._mtmd_cpp


def mtmd_function(name: str) -> Any:
    """A libmtmd C function the bindings do not wrap (`mtmd_log_set`), or None if the library lacks it."""
    from llama_cpp import mtmd_cpp

    return getattr(mtmd_cpp._libmtmd, name, None)


def decode_packed(llm: Any, sequences: list[list[int]], n_batch: int, n_seq_max: int,
                  decode: Callable[[list[tuple[int, list[int]]]], None]) -> None:
    """Evaluate whole sequences packed into batches of at most `n_batch` tokens and `n_seq_max`
    sequences (`decode` gets each batch as `(row, tokens)` pairs), then clear the context: the one
    packing loop of the pooled engines (GGUF embeddings, GGUF rerankers)."""
    pending: list[tuple[int, list[int]]] = []
    used = 0
    try:
        for row, tokens in enumerate(sequences):
            if pending and (used + len(tokens) > n_batch or len(pending) >= n_seq_max):
                decode(pending)
                pending, used = [], 0
            pending.append((row, tokens))
            used += len(tokens)
        if pending:
            decode(pending)
    finally:
        clear_kv(llm)
        llm.reset()

