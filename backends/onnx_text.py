"""ONNX text generation: our own token loop over an onnxruntime session.

Serves decoder-only models in optimum's "text-generation-with-past" layout (also
used by onnx-community repos): `input_ids`, `attention_mask`, optional
`position_ids` / `use_cache_branch`, `past_key_values.N.key/value` in; `logits`,
`present.N.key/value` out. An export without a KV cache also works (the whole
sequence is recomputed each step). Tokens come from `tokenizer.json`; the chat
template from `tokenizer_config.json` or `chat_template.jinja`, rendered with
jinja2 as transformers renders it.

Why not optimum or onnxruntime-genai: optimum needs torch and transformers, which
stay out of the default install; onnxruntime-genai loads only folders with its own
`genai_config.json`, not optimum exports. This loop needs only onnxruntime,
`tokenizers`, numpy and jinja2, and gives a gateway what it needs: cancellation
between tokens, exact token counts, streaming that never splits a UTF-8
character or leaks a partial stop sequence, and seeded sampling. Tool calling and
JSON `response_format` need constrained decoding, which only the GGUF backend has.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from backends import textloop
from backends import tools as tools_mod
from backends.base import Backend, Cancelled, ChatOptions, Delta, SamplingParams
from backends.chat_template import CHATML_TEMPLATE, environment, rendering
from backends.errors import BackendError, LoadError
from backends.sampling import IncrementalDecoder, sample
from schemas.manifest import Device, ModelSpec

log = logging.getLogger("nexa.backends.onnx_text")

# Looked for in this order when the source is a folder and `file:` names none.
MODEL_FILES = ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx", "onnx/model.onnx",
               "onnx/decoder_model_merged.onnx", "onnx/decoder_with_past_model.onnx")
PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
KNOWN_INPUTS = {"input_ids", "attention_mask", "position_ids", "use_cache_branch"}
OPTIONS = {"chat_template", "add_special_tokens", "log_severity_level"}  # the manifest's `options:` for this backend
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path.name} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def find_model(path: Path) -> tuple[Path, Path]:
    """(the .onnx file, the folder holding tokenizer.json). onnx-community repos keep the model
    under onnx/ and the tokenizer at the top, so the tokenizer is looked for upwards too."""
    if path.is_file():
        model = path
    else:
        model = next((path / name for name in MODEL_FILES if (path / name).is_file()), None)
        if model is None:
            found = sorted(str(p.relative_to(path)) for p in [*path.glob("*.onnx"), *path.glob("onnx/*.onnx")])
            if len(found) != 1:
                what = f"{len(found)} .onnx files ({', '.join(found[:6])})" if found else "no .onnx file"
                raise LoadError(f"{path} has {what}; name the decoder with `file:`")
            model = path / found[0]
    for folder in (model.parent, model.parent.parent):
        if (folder / "tokenizer.json").is_file():
            return model, folder
    raise LoadError(f"no tokenizer.json beside {model.name} (or in the folder above it)")


def _providers(device: Device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = [p for p in ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider") if p in available]
    if device == Device.cpu:
        return ["CPUExecutionProvider"]
    if device in (Device.cuda, Device.gpu):
        if not gpu:
            raise LoadError(f"device {device.value} was asked for, but onnxruntime has only {', '.join(available)}")
        return [gpu[0], "CPUExecutionProvider"]
    if device == Device.auto:
        return [*gpu[:1], "CPUExecutionProvider"]
    raise LoadError(f"device {device.value} is not available for ONNX models; use auto, cpu, gpu or cuda")


class _Layout:
    """What the graph wants fed, read from its inputs and outputs (and config.json where dims are symbolic)."""

    def __init__(self, session: Any, config: dict[str, Any]):
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if "input_ids" not in inputs or "logits" not in outputs:
            raise LoadError("not a text-generation export: it needs an `input_ids` input and a `logits` output "
                            f"(inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)})")
        unknown = [n for n in inputs if n not in KNOWN_INPUTS and not PAST.match(n)]
        if unknown:
            raise LoadError(f"unsupported model inputs: {', '.join(unknown)} (expected the optimum decoder layout)")
        self.ids_dtype = _NUMPY.get(inputs["input_ids"].type, np.int64)
        self.mask, self.positions = inputs.get("attention_mask"), inputs.get("position_ids")
        self.cache_branch = "use_cache_branch" in inputs
        self.past: list[tuple[str, str]] = []  # (input, output) pairs
        self.past_shapes: dict[str, tuple[int, int]] = {}
        self.past_dtype: Any = np.float32
        for name, meta in inputs.items():
            match = PAST.match(name)
            if not match:
                continue
            present = f"present.{match.group(1)}.{match.group(2)}"
            if present not in outputs:
                raise LoadError(f"input {name} has no matching output {present}")
            if meta.type not in ("tensor(float)", "tensor(float16)"):
                raise LoadError(f"{name} is {meta.type}; only float32 and float16 caches are supported")
            self.past_dtype = _NUMPY[meta.type]
            self.past.append((name, present))
            self.past_shapes[name] = self._heads_and_dim(name, meta.shape, config)
        self.outputs = ["logits", *(present for _, present in self.past)]

    @staticmethod
    def _heads_and_dim(name: str, shape: list[Any], config: dict[str, Any]) -> tuple[int, int]:
        if len(shape) != 4:
            raise LoadError(f"{name} has shape {shape}; expected [batch, heads, past_length, head_dim]")
        heads, dim = shape[1], shape[3]
        attention_heads = config.get("num_attention_heads") or config.get("n_head")
        if not isinstance(heads, int):
            heads = config.get("num_key_value_heads") or attention_heads
        if not isinstance(dim, int):
            hidden = config.get("hidden_size") or config.get("n_embd")
            dim = config.get("head_dim") or (hidden // attention_heads if hidden and attention_heads else None)
        if not isinstance(heads, int) or not isinstance(dim, int):
            raise LoadError(f"cannot tell the shape of {name}: its dims are symbolic and config.json does not say")
        return heads, dim


class OnnxTextBackend(Backend):
    capabilities = frozenset({"complete", "chat"})

    def __init__(self, spec: ModelSpec, path: Path, session: Any, tokenizer: Any, layout: _Layout, *,
                 eos: set[int], template: str, specials: dict[str, str | None], n_ctx: int, add_special: bool):
        super().__init__(spec, path)
        self.session, self.tokenizer, self.layout = session, tokenizer, layout
        self.eos, self.template, self.specials = eos, template, specials
        self.n_ctx, self.add_special = n_ctx, add_special
        self._compiled: Any = None

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "OnnxTextBackend":
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise LoadError(f"onnxruntime and tokenizers are needed for ONNX text models: {exc}") from exc
        model_file, folder = find_model(path)
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
            raise LoadError(f"cannot read {folder / 'tokenizer.json'}: {exc}") from exc
        config = _read_json(model_file.parent / "config.json") or _read_json(folder / "config.json")
        tok_config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        options = dict(spec.options)
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise LoadError(f"unknown options for an ONNX text model: {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(OPTIONS))})")
        sess_options = ort.SessionOptions()
        sess_options.log_severity_level = int(options.get("log_severity_level", 3))
        if spec.n_threads:
            sess_options.intra_op_num_threads = spec.n_threads
        providers = _providers(spec.device)
        try:
            session = ort.InferenceSession(str(model_file), sess_options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise LoadError(f"onnxruntime could not load {model_file.name}: {str(exc).strip()[:500]}") from exc
        layout = _Layout(session, config)
        specials = {key: _token_text(tok_config.get(key)) for key in ("bos_token", "eos_token")}
        eos = _eos_ids(tokenizer, config, generation, specials["eos_token"])
        if not eos:
            log.warning("model %s names no end-of-sequence token: answers end only at max_tokens or a stop sequence",
                        spec.name, extra={"event": "onnx_text_no_eos", "model": spec.name})
        template = options.get("chat_template") or _chat_template(folder, tok_config) or CHATML_TEMPLATE
        limits = [spec.nctx, config.get("max_position_embeddings"), config.get("n_positions")]
        n_ctx = min(v for v in limits if isinstance(v, int) and v > 0)
        backend = cls(spec, model_file, session, tokenizer, layout, eos=eos, template=template, specials=specials,
                      n_ctx=n_ctx, add_special=bool(options.get("add_special_tokens", True)))
        log.info("loaded ONNX text model %s (%d cache tensors, providers %s)", model_file, len(layout.past),
                 ",".join(session.get_providers()), extra={"event": "onnx_text_model", "model": spec.name})
        return backend

    def close(self) -> None:
        self.session = None

    def info(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "providers": self.session.get_providers() if self.session else [],
                "kv_cache": bool(self.layout.past), "file": self.path.name}

    # -- prompts -------------------------------------------------------------

    def render_chat(self, messages: list[dict], **template_vars: Any) -> str:
        with rendering():
            if self._compiled is None:
                self._compiled = environment().from_string(self.template)
            return self._compiled.render(messages=messages, add_generation_prompt=True,
                                         **{k: v or "" for k, v in self.specials.items()}, **template_vars)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=special).ids

    def complete(self, prompt: str | list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        tokens = list(prompt) if isinstance(prompt, list) else self.tokenize(prompt, special=self.add_special)
        if not tokens:
            raise BackendError("the prompt is empty")
        vocab = self.tokenizer.get_vocab_size()
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in tokens):
            raise BackendError(f"prompt token ids must be integers in [0, {vocab})", param="prompt")
        return self.generate(tokens, params, cancelled)

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled,
             options: ChatOptions | None = None) -> Iterator[Delta]:
        return self.generate(self._chat_prompt(messages, options or ChatOptions()), params, cancelled)

    def count_chat(self, messages: list[dict], options: ChatOptions | None = None) -> int:
        return len(self._chat_prompt(messages, options or ChatOptions()))

    def _chat_prompt(self, messages: list[dict], options: ChatOptions) -> list[int]:
        """The prompt tokens of a chat request (shared by `chat` and `count_chat`); what ONNX cannot do is a 400."""
        tools, response_format = options.tools, options.response_format
        mode, _ = tools_mod.choose(tools, options.tool_choice)
        if mode != "none":
            raise BackendError(f"model {self.spec.name!r} (ONNX) does not support tool calling; "
                               "serve a GGUF model for tools, or send tool_choice \"none\"")
        if tools:
            messages = tools_mod.without_tools(messages)
        if response_format and response_format.get("type") not in (None, "text"):
            raise BackendError(f"model {self.spec.name!r} (ONNX) supports only response_format type \"text\"")
        return self.tokenize(self.render_chat(messages), special=False)  # the template wrote BOS

    # -- generation ----------------------------------------------------------

    def _empty_past(self) -> dict[str, np.ndarray]:
        dtype = self.layout.past_dtype
        return {name: np.zeros((1, heads, 0, dim), dtype) for name, (heads, dim) in self.layout.past_shapes.items()}

    def _forward(self, tokens: list[int], new: int, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        """Run the last `new` tokens of `tokens` (all of them without a cache); return the last logits and the cache."""
        layout = self.layout
        start = len(tokens) - new if layout.past else 0
        feeds: dict[str, np.ndarray] = {"input_ids": np.asarray([tokens[start:]], dtype=layout.ids_dtype)}
        if layout.mask is not None:
            feeds["attention_mask"] = np.ones((1, len(tokens)), dtype=_NUMPY.get(layout.mask.type, np.int64))
        if layout.positions is not None:
            dtype = _NUMPY.get(layout.positions.type, np.int64)
            feeds["position_ids"] = np.arange(start, len(tokens), dtype=dtype)[None]
        if layout.cache_branch:
            feeds["use_cache_branch"] = np.asarray([start > 0])
        feeds.update(past)
        outputs = self.session.run(layout.outputs, feeds)
        cache = {name: outputs[i + 1] for i, (name, _) in enumerate(layout.past)}
        return np.asarray(outputs[0][0, -1], dtype=np.float32), cache

    def generate(self, prompt_tokens: list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        """The shared token loop (backends/textloop.py) over `_sample_tokens`."""
        budget = textloop.token_budget(prompt_tokens, params.max_tokens, self.n_ctx)
        if params.grammar:
            raise BackendError("grammars are not supported by ONNX models")
        prompt = list(prompt_tokens)
        return textloop.run(prompt, self._sample_tokens(prompt, params), is_end=self.eos.__contains__,
                            detokenizer=IncrementalDecoder(self.tokenizer, prompt), stop=params.stop, budget=budget,
                            cancelled=cancelled)

    def _sample_tokens(self, prompt: list[int], params: SamplingParams) -> Iterator[textloop.Sampled]:
        """One forward pass and one draw per token (the shared loop asks `cancelled()` before each)."""
        rng = np.random.default_rng(params.seed)
        tokens, past, new = list(prompt), self._empty_past(), len(prompt)
        while True:
            logits, past = self._forward(tokens, new, past)
            token = sample(logits, params, tokens, rng)
            yield token, None
            tokens.append(token)
            new = 1


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _eos_ids(tokenizer: Any, config: dict, generation: dict, eos_text: str | None) -> set[int]:
    ids: set[int] = set()
    for source in (generation.get("eos_token_id"), config.get("eos_token_id")):
        for value in source if isinstance(source, list) else [source]:
            if isinstance(value, int):
                ids.add(value)
    if eos_text and tokenizer.token_to_id(eos_text) is not None:
        ids.add(tokenizer.token_to_id(eos_text))
    return ids


def _chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
    """Newer transformers write chat_template.jinja; older ones put it in tokenizer_config.json,
    sometimes as a list of named templates ("default", "tool_use", ...)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = tok_config.get("chat_template") or _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None
