"""GGUF text generation through llama-cpp-python.

The token loop is ours (on top of `Llama.generate`), not `create_completion`,
because a gateway needs three things llama-cpp-python's loop does not give in
streaming mode: exact token counts, a cancellation check between tokens, and
stop sequences that never leak a partial match to the client.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import random
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from backends import json_grammar, tools as tools_mod
from backends.base import Backend, BackendError, Cancelled, Delta, LoadError, SamplingParams, TokenLogprob, Usage
from backends.stops import StopScanner
from schemas.manifest import Device, ModelSpec

# Used when a GGUF carries no chat template (e.g. base models such as Gemma 3 270M).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


LOAD_LOCK = threading.Lock()


def gguf_file(path: Path) -> Path:
    """A folder stands for the one .gguf it holds."""
    if not path.is_dir():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) != 1:
        raise LoadError(f"{path} is a folder with {len(ggufs)} .gguf files; name one with `file:`")
    return ggufs[0]


def open_llama(path: Path, kwargs: dict[str, Any]) -> Any:
    """Create a `llama_cpp.Llama`, turning its failures into one clear LoadError."""
    import llama_cpp

    try:
        with LOAD_LOCK:  # verbose=False redirects the process's stdout/stderr while it loads
            return llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise LoadError(f"llama.cpp could not load {path.name}: {exc}") from exc
    except TypeError as exc:
        raise LoadError(f"bad engine option for llama.cpp: {exc}") from exc


def gpu_layers(spec: ModelSpec) -> int:
    """Layers to offload: the manifest's number, else all on a GPU device, none on the CPU."""
    if spec.n_gpu_layers is not None:
        return spec.n_gpu_layers
    if spec.device == Device.cpu:
        return 0
    if spec.device == Device.auto:
        import llama_cpp

        return -1 if llama_cpp.llama_supports_gpu_offload() else 0
    return -1


class LlamaBackend(Backend):
    capabilities = frozenset({"complete", "chat"})

    def __init__(self, spec: ModelSpec, path: Path, llm: Any):
        super().__init__(spec, path)
        self.llm = llm
        self._formatter = None

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "LlamaBackend":
        if importlib.util.find_spec("llama_cpp") is None:
            raise LoadError("llama-cpp-python is not installed")
        path = gguf_file(path)
        options = dict(spec.options)
        options.pop("chat_template", None)
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": spec.nctx,
            "n_gpu_layers": gpu_layers(spec),
            "verbose": bool(options.pop("verbose", False)),
        }
        if spec.n_threads:  # prompt processing too, unless options.n_threads_batch says otherwise
            kwargs["n_threads"] = kwargs["n_threads_batch"] = spec.n_threads
        kwargs.update(options)
        return cls(spec, path, open_llama(path, kwargs))

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def info(self) -> dict[str, Any]:
        return {
            "n_ctx": self.llm.n_ctx(),
            "chat_template": "tokenizer.chat_template" in self.llm.metadata,
            "architecture": self.llm.metadata.get("general.architecture"),
        }

    # -- prompts -------------------------------------------------------------

    def _chat_formatter(self):
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self.llm
            template = self.spec.options.get("chat_template") or llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
            eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return self._formatter

    def render_chat(self, messages: list[dict], **template_vars: Any) -> str:
        try:
            return self._chat_formatter()(messages=messages, **template_vars).prompt
        except Exception as exc:  # jinja raises many kinds; all mean "these messages do not fit the template"
            raise BackendError(f"the model's chat template rejected these messages: {exc}") from exc

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

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled, *, tools: list[dict] | None = None,
             tool_choice: Any = None, response_format: dict | None = None, **template_vars: Any) -> Iterator[Delta]:
        mode, functions = tools_mod.choose(tools, tool_choice)
        if mode == "none":
            if tools:
                messages = tools_mod.without_tools(messages)
            grammar = _response_grammar(response_format)
            if grammar:
                params = replace(params, grammar=grammar)
                return json_grammar.checked_json(self.generate(self._chat_tokens(messages, **template_vars), params,
                                                               cancelled))
            return self.generate(self._chat_tokens(messages, **template_vars), params, cancelled)
        prompt = self._chat_tokens(tools_mod.with_tool_prompt(messages, functions), **template_vars)
        if mode == "required":
            return self._tool_call(prompt, functions, params, cancelled, spent=0)
        return self._auto(prompt, functions, params, cancelled)

    def _chat_tokens(self, messages: list[dict], **template_vars: Any) -> list[int]:
        # The template already wrote BOS where the model wants it.
        return self.tokenize(self.render_chat(messages, **template_vars), add_bos=False, special=True)

    def _tool_call(self, prompt: list[int], functions: list[dict], params: SamplingParams, cancelled: Cancelled,
                   spent: int) -> Iterator[Delta]:
        """Generate one call under a grammar of the tools' schemas, after the call marker."""
        marker = self.tokenize(tools_mod.MARKER, add_bos=False, special=False)
        grammar = _json_grammar(tools_mod.call_schema(functions))
        text, last = "", None
        call_params = replace(params, grammar=grammar, stop=[], max_tokens=max(params.max_tokens - spent, 1))
        for delta in self.generate(prompt + marker, call_params, cancelled):
            text += delta.text
            last = delta
        usage = Usage(len(prompt), spent + (last.usage.completion_tokens if last and last.usage else 0))
        if last is not None and last.finish_reason == "cancelled":
            yield Delta(finish_reason="cancelled", usage=usage)
            return
        if last is not None and last.finish_reason == "length":  # the budget ran out inside the call
            yield Delta(finish_reason="length", usage=usage, tool_calls=tools_mod.partial_calls(text) or None)
            return
        yield Delta(finish_reason="tool_calls", usage=usage, tool_calls=[tools_mod.parse_call(text)])

    def _auto(self, prompt: list[int], functions: list[dict], params: SamplingParams,
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
        for delta in self._tool_call(prompt + before, functions, params, cancelled, spent=spent):
            if delta.usage:
                delta.usage.prompt_tokens = len(prompt)
            yield delta


    def _logprob(self, token: int, top: int) -> "TokenLogprob":
        """The model's own distribution at this step (before grammar or penalties), as log-probabilities."""
        llm = self.llm
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
        logprobs = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=int)
        best = best[np.argsort(-logprobs[best])]
        piece = lambda i: llm.detokenize([int(i)]).decode("utf-8", errors="replace")  # noqa: E731
        return TokenLogprob(piece(token), float(logprobs[token]), [(piece(i), float(logprobs[i])) for i in best])

    def generate(self, prompt_tokens: list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        import llama_cpp

        llm = self.llm
        n_ctx = llm.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise BackendError(
                f"the prompt is {len(prompt_tokens)} tokens, which does not fit this model's context of {n_ctx} tokens"
            )
        budget = min(params.max_tokens, n_ctx - len(prompt_tokens))
        if params.grammar and params.grammar_max_tokens:
            budget = min(budget, params.grammar_max_tokens)
        llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
        grammar = None
        if params.grammar:
            grammar = llama_cpp.LlamaGrammar.from_string(params.grammar, verbose=False)
        scanner = StopScanner(params.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        completion: list[int] = []
        finish = "length"
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not sent yet
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
        try:
            for token in tokens:
                if cancelled():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                completion.append(token)
                if params.logprobs is not None:
                    pending.append(self._logprob(token, params.logprobs))
                piece = scanner.feed(decoder.decode(llm.detokenize([token], prev_tokens=prompt_tokens + completion[:-1])))
                if piece:
                    yield Delta(text=piece, logprobs=pending or None)
                    pending = []
                if scanner.matched is not None:
                    finish = "stop"
                    break
                if len(completion) >= budget:
                    finish = "length"
                    break
        finally:
            tokens.close()
        rest = scanner.rest(decoder.decode(b"", final=True))
        if rest or pending:
            yield Delta(text=rest, logprobs=pending or None)
        yield Delta(finish_reason=finish, usage=Usage(len(prompt_tokens), len(completion)),
                    stop_sequence=scanner.matched)



# Every JSON grammar comes from backends/json_grammar.py (strict JSON only); these names stay for callers.
_json_grammar = json_grammar.json_grammar
_response_grammar = json_grammar.response_grammar
