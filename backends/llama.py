"""GGUF text generation through llama-cpp-python.

The token loop is ours (backends/textloop.py, on top of `Llama.generate`), not
`create_completion`, because a gateway needs three things llama-cpp-python's loop
does not give in streaming mode: exact token counts, a cancellation check between
tokens, and stop sequences that never leak a partial match to the client.
Model loading (`llama_kwargs`, `open_llama`) is in backends/llama_load.py, every use
of llama-cpp-python's private attributes in backends/llama_private.py.
"""

from __future__ import annotations

import importlib.util
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from backends import grammar_sampling, json_grammar, llama_cache, textloop
from backends import llama_private as private
from backends import tools as tools_mod
from backends.base import Backend, Cancelled, ChatOptions, Delta, SamplingParams, TokenLogprob, Usage
from backends.chat_template import CHATML_STOPS, CHATML_TEMPLATE, rendering
from backends.errors import BackendError, LoadError
from backends.llama_load import generation_defaults, gguf_file, llama_kwargs, open_llama
from backends.tool_stream import CallStream
from schemas.manifest import ModelSpec


def token_logprob(llm: Any, logits: Any, token: int, top: int) -> TokenLogprob:
    """The model's own distribution at one step (before grammar or penalties), as log-probabilities.
    `logits` points at that step's row of n_vocab floats."""
    values = np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).astype(np.float64)
    logprobs = values - (values.max() + np.log(np.exp(values - values.max()).sum()))
    best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=int)
    best = best[np.argsort(-logprobs[best])]
    piece = lambda i: llm.detokenize([int(i)]).decode("utf-8", errors="replace")  # noqa: E731
    return TokenLogprob(piece(token), float(logprobs[token]), [(piece(i), float(logprobs[i])) for i in best])


class LlamaBackend(Backend):
    capabilities = frozenset({"complete", "chat"})
    # Counting a prompt's tokens (template + tokenizer) needs no decode slot and touches no context:
    # the gateway may run it beside a generation instead of queueing it behind one.
    counts_beside = True
    # False: the grammar sits inside llama-cpp-python's chain and filters the whole vocabulary every step
    # (the old path, kept as the reference the greedy-equality tests compare against; not a user switch).
    candidate_first = True

    def __init__(self, spec: ModelSpec, path: Path, llm: Any):
        super().__init__(spec, path)
        self.llm = llm
        self._formatter = None
        self._generating = False  # a request's tokens hold the context (kv_cells)
        self.cache = None  # the model's prompt cache (backends/prompt_cache.py); text models only
        self._cache_key: tuple | None = None
        self._held_prompt = 0  # the prompt length of the request whose KV the context holds

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "LlamaBackend":
        if importlib.util.find_spec("llama_cpp") is None:
            raise LoadError("llama-cpp-python is not installed")
        path = gguf_file(path)
        backend = cls(spec, path, open_llama(path, llama_kwargs(spec, path, generation_defaults(spec))))
        backend.attach_cache()
        return backend

    def attach_cache(self) -> None:
        opened = llama_cache.open_cache(self.spec, self.path, self.llm)
        if opened is not None:
            self._cache_key, self.cache = opened

    def prompt_cache(self) -> Any:
        """The model's PromptCache (shared by its replicas), for /metrics and /v1/models; None if none."""
        return self.cache

    def persist_prompt_cache(self, directory: str) -> None:
        """`server.prompt_cache_dir`: the gateway calls this after `load`, in the loading thread."""
        llama_cache.persist(self.cache, self.spec, self.path, directory)

    def close(self) -> None:
        llm = self.llm
        if llm is not None and llm.n_tokens:
            llama_cache.save_for_restart(llm.ctx, 0, llm.input_ids[: llm.n_tokens].copy(), self._held_prompt, self.cache)
        key, cache, self._cache_key, self.cache = self._cache_key, self.cache, None, None
        llama_cache.close_cache((key, cache) if key is not None else None)
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def info(self) -> dict[str, Any]:
        info = {
            "n_ctx": self.llm.n_ctx(),
            "chat_template": "tokenizer.chat_template" in self.llm.metadata,
            "architecture": self.llm.metadata.get("general.architecture"),
        }
        if self.cache is not None:
            info["prompt_cache"] = {"capacity_bytes": self.cache.capacity, "bytes": self.cache.bytes,
                                    "entries": len(self.cache)}
        return info

    # -- prompts -------------------------------------------------------------

    def _chat_formatter(self):
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self.llm
            template = self.spec.options.get("chat_template") or llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
            eos = private.token_text(llm, llm.token_eos()) if llm.token_eos() >= 0 else ""
            bos = private.token_text(llm, llm.token_bos()) if llm.token_bos() >= 0 else ""
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return self._formatter

    def _template_stops(self) -> tuple[str, ...]:
        """Where a chat answer ends beyond the model's end-of-generation tokens: the fallback template's
        turn markers when the gateway chose that template (chat_template.CHATML_STOPS)."""
        own = self.spec.options.get("chat_template") or self.llm.metadata.get("tokenizer.chat_template")
        return () if own else CHATML_STOPS

    def render_chat(self, messages: list[dict], **template_vars: Any) -> str:
        with rendering():
            return self._chat_formatter()(messages=messages, **template_vars).prompt

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    # -- generation ----------------------------------------------------------

    def complete(self, prompt: str | list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        tokens = list(prompt) if isinstance(prompt, list) else self.tokenize(prompt, add_bos=True)
        if not tokens:
            raise BackendError("the prompt is empty", param="prompt")
        vocab = self.llm.n_vocab()
        if isinstance(prompt, list) and any(not 0 <= t < vocab for t in tokens):  # llama.cpp would fail in decode
            raise BackendError(f"prompt token ids must be integers in [0, {vocab}) for this model", param="prompt")
        return self.generate(tokens, params, cancelled)

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled,
             options: ChatOptions | None = None) -> Iterator[Delta]:
        options = options or ChatOptions()
        tool_choice = options.tool_choice
        mode, functions, prompt = self._chat_prompt(messages, options.tools, tool_choice)
        if mode == "none":
            grammar = _response_grammar(options.response_format)
            if grammar:
                return json_grammar.checked_json(self.generate(prompt, replace(params, grammar=grammar), cancelled))
        params = replace(params, stop=[*params.stop, *self._template_stops()])  # prose only: not inside JSON
        if mode == "none":
            return self.generate(prompt, params, cancelled)
        grammar = _json_grammar(tools_mod.call_schema(functions))
        if tools_mod.allows_parallel(tool_choice, options.parallel_tool_calls):
            grammar = tools_mod.calls_grammar(grammar)
        if mode == "required":
            return self._tool_call(prompt, grammar, params, cancelled, spent=0)
        return self._auto(prompt, grammar, params, cancelled)

    def count_chat(self, messages: list[dict], options: ChatOptions | None = None) -> int:
        options = options or ChatOptions()
        return len(self._chat_prompt(messages, options.tools, options.tool_choice)[2])

    def _chat_prompt(self, messages: list[dict], tools: list[dict] | None, tool_choice: Any,
                     **template_vars: Any) -> tuple[str, list[dict], list[int]]:
        """(tool mode, functions, prompt tokens): the one prompt both `chat` and `count_chat` see."""
        mode, functions, messages = _templated(messages, tools, tool_choice)
        return mode, functions, self._chat_tokens(messages, **template_vars)

    # -- the tokenizer and template on their own (POST /tokenize, /detokenize, /apply-template) --------

    # llama.cpp's tokenizer reads only the vocabulary (llama-server tokenizes on its HTTP threads too).
    tokenizes_beside_generation = True

    def tokenize_text(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.tokenize(text, add_bos=add_special, special=parse_special)

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        vocab = self.llm.n_vocab()
        for index, token in enumerate(tokens):
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
                raise BackendError(f"tokens[{index}] is {token!r}; token ids of model {self.spec.name!r} are "
                                   f"integers in [0, {vocab})", param=f"tokens[{index}]")
        return [private.token_piece(self.llm, token) for token in tokens]

    def detokenize_tokens(self, tokens: list[int]) -> str:
        # As llama-server's /detokenize: the pieces joined, special tokens written out.
        return b"".join(self.token_pieces(tokens)).decode("utf-8", errors="replace")

    def render_prompt(self, messages: list[dict], options: ChatOptions | None = None) -> str:
        # `_chat_tokens` tokenizes exactly this text (no BOS added: the template wrote it).
        options = options or ChatOptions()
        return self.render_chat(_templated(messages, options.tools, options.tool_choice)[2])

    def _chat_tokens(self, messages: list[dict], **template_vars: Any) -> list[int]:
        # The template already wrote BOS where the model wants it.
        return self.tokenize(self.render_chat(messages, **template_vars), add_bos=False, special=True)

    def _tool_call(self, prompt: list[int], grammar: str, params: SamplingParams, cancelled: Cancelled,
                   spent: int) -> Iterator[Delta]:
        """Generate the call(s) under `grammar` (built from the tools' schemas), after the call marker."""
        marker = self.tokenize(tools_mod.MARKER, add_bos=False, special=False)
        text, last, repeated = "", None, False
        stream, held = CallStream(), []  # held: events of a second or later call, sent once it is complete

        def stop() -> bool:  # a repeated call ends the turn (parse_calls drops the repeat)
            return repeated or cancelled()

        call_params = replace(params, grammar=grammar, stop=[], max_tokens=max(params.max_tokens - spent, 1))
        for delta in self.generate(prompt + marker, call_params, stop):
            text += delta.text
            last = delta
            if "}" in delta.text:  # a call may have just closed
                repeated = tools_mod.repeats_a_call(text)
            events = stream.feed(delta.text)
            ready = [e for e in events if e.index == 0]  # the first call streams as it is written
            held += [e for e in events if e.index > 0]
            if repeated:
                held = []  # the call that just closed repeats an earlier one: it is dropped, never sent
            elif held:
                complete = tools_mod.complete_calls(text)
                ready += [e for e in held if e.index < complete]
                held = [e for e in held if e.index >= complete]
            if ready:
                yield Delta(tool_call_deltas=ready)
        done = last.usage if last and last.usage else Usage()
        usage = Usage(len(prompt), spent + done.completion_tokens, cached_tokens=min(done.cached_tokens, len(prompt)),
                      prefill_seconds=done.prefill_seconds, decode_seconds=done.decode_seconds)
        if last is not None and last.finish_reason == "cancelled" and not repeated:
            yield Delta(finish_reason="cancelled", usage=usage)
            return
        if last is not None and last.finish_reason == "length" and not repeated and not tools_mod.complete_calls(text):
            # The budget ran out inside the only call: OpenAI's "length", with the call as far as it got.
            # (After complete calls, a cut one is dropped and the complete ones are the answer.)
            calls = tools_mod.streamed_calls(text, stream.ids, stream.raw, partial=True)
            yield Delta(finish_reason="length", usage=usage, tool_calls=calls or None)
            return
        yield Delta(finish_reason="tool_calls", usage=usage, tool_calls=tools_mod.streamed_calls(text, stream.ids,
                                                                                                 stream.raw))

    def _auto(self, prompt: list[int], grammar: str, params: SamplingParams,
              cancelled: Cancelled) -> Iterator[Delta]:
        """Let the model choose. Its answer is plain content until it writes the call marker
        (at the start or after some words); from the marker on, the call is generated under
        the tools' grammar."""
        content = ""
        final = None
        for delta in self.generate(prompt, replace(params, stop=[*params.stop, tools_mod.MARKER]), cancelled):
            if delta.finish_reason:
                final = delta
                break
            content += delta.text
            yield delta
        if final is None:
            return
        if final.stop_sequence != tools_mod.MARKER:
            yield final
            return
        spent = final.usage.completion_tokens if final.usage else 0
        before = self.tokenize(content, add_bos=False) if content else []
        for delta in self._tool_call(prompt + before, grammar, params, cancelled, spent=spent):
            if delta.usage and final.usage:  # the prompt's numbers are the first part's; the call's time is decoding
                first, usage = final.usage, delta.usage
                usage.decode_seconds += usage.prefill_seconds + first.decode_seconds
                usage.prompt_tokens, usage.cached_tokens = len(prompt), first.cached_tokens
                usage.prefill_seconds = first.prefill_seconds
            yield delta


    def context_size(self) -> int:
        """Tokens one request may hold (prompt + completion)."""
        return self.llm.n_ctx()

    def sample_tokens(self, prompt_tokens: list[int], params: SamplingParams, grammar: Any, budget: int,
                      cancelled: Cancelled, prefill: textloop.Prefill) -> Iterator[tuple[int, TokenLogprob | None]]:
        """The engine's side of `generate`: sampled tokens, each with its logprob when asked for, and
        in `prefill` the prompt tokens taken from a cache. The batched engine (backends/llama_batch.py)
        overrides only this."""
        llm = self.llm
        if self.cache is not None:
            prefill.cached_tokens = llama_cache.prepare_single(llm, self.cache, prompt_tokens, self._held_prompt)
            self._held_prompt = len(prompt_tokens)
        started = time.perf_counter()
        llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
        undo = None
        if grammar is not None:  # the grammar checks the sampled token first (backends/grammar_sampling.py)
            undo = private.sample_with(llm, lambda sampling: grammar_sampling.make_sampler(
                llm, candidate_first=self.candidate_first, **sampling))
        tokens = llm.generate(
            prompt_tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )
        self._generating = True
        try:
            for i, token in enumerate(tokens):
                if i == 0 and self.cache is not None:
                    self.cache.observe_prefill(len(prompt_tokens) - prefill.cached_tokens,
                                               time.perf_counter() - started)
                top = params.logprobs
                yield token, (token_logprob(llm, private.last_logits(llm), token, top) if top is not None else None)
                if i == 0 and self.cache is not None:  # the context holds the prompt alone until the next step
                    llama_cache.checkpoint(llm.ctx, 0, prompt_tokens, prefill.cached_tokens, self.cache)
        finally:
            self._generating = False
            tokens.close()
            if undo is not None:
                undo()
            if self.cache is not None and self.spec.replicas > 1:  # any replica may get the next turn
                live = llm.input_ids[: llm.n_tokens].copy()
                held = llama_cache.save_finished(llm.ctx, 0, live, len(prompt_tokens), self.cache)
                if len(held) < len(live):
                    private.adopt_tokens(llm, held)

    def kv_cells(self) -> tuple[int, int]:
        """(cells in use, cells) of the context, read by /metrics from another thread.

        In use: the tokens a running generation holds (`Llama.n_tokens`, prompt plus generated).
        Between requests the context still holds the last prompt for prefix reuse, but the next
        request may overwrite it at no cost, so it counts as free (as vLLM counts cached blocks)."""
        llm = self.llm
        if llm is None:
            return 0, 0
        return (int(llm.n_tokens) if self._generating else 0), int(llm.n_ctx())

    def generate(self, prompt_tokens: list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        """The shared token loop (backends/textloop.py) over `sample_tokens`."""
        import llama_cpp

        llm = self.llm
        budget = textloop.token_budget(prompt_tokens, params.max_tokens, self.context_size())
        if params.grammar and params.grammar_max_tokens:  # constrained output without max_tokens: bounded
            budget = min(budget, params.grammar_max_tokens)
        grammar = None
        if params.grammar:
            grammar = llama_cpp.LlamaGrammar.from_string(params.grammar, verbose=False)
        vocab = private.vocab(llm)
        piece = lambda token, before: llm.detokenize([token], prev_tokens=before)  # noqa: E731
        prefill = textloop.Prefill()
        yield from textloop.run(
            prompt_tokens, self.sample_tokens(prompt_tokens, params, grammar, budget, cancelled, prefill),
            is_end=lambda token: llama_cpp.llama_vocab_is_eog(vocab, token),
            detokenizer=textloop.ByteDetokenizer(piece, prompt_tokens), stop=params.stop, budget=budget,
            cancelled=cancelled, prefill=prefill)


def _templated(messages: list[dict], tools: list[dict] | None, tool_choice: Any) -> tuple[str, list[dict], list[dict]]:
    """(tool mode, functions, the messages the chat template renders): with tools to call, the tool
    prompt joins them; with tools that may not be called, earlier tool turns are flattened."""
    mode, functions = tools_mod.choose(tools, tool_choice)
    if mode != "none":
        return mode, functions, tools_mod.with_tool_prompt(messages, functions)
    return mode, functions, tools_mod.without_tools(messages) if tools else messages


# Every JSON grammar comes from backends/json_grammar.py (strict JSON only); these names stay for callers.
_json_grammar = json_grammar.json_grammar
_response_grammar = json_grammar.response_grammar
