"""Ollama bodies -> the OpenAI-shaped `ChatRequest` every chat protocol goes through.

Translation only, no generation: `/api/chat` and `/api/generate` become the same request
`/v1/chat/completions` would make, so prompting, sampling, stop sequences, tool grammars,
JSON-constrained output, images and usage are one implementation (gateway/routes/text.py's
`open_chat`). What Ollama has and this gateway does not is refused or ignored here, in one place:

- `options`: `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `num_predict` (-1 and -2: up to
  the model's limit), `stop`, `repeat_penalty`, `presence_penalty`, `frequency_penalty` map to
  sampling; runner settings (`num_ctx`, `num_gpu`, `num_thread`, `mirostat`, ...) are ignored, the
  manifest decides them (`nctx`, `device`, `n_threads`).
- `format`: "json" is `response_format: json_object`, a JSON Schema is `json_schema`: the
  grammar-constrained decoding of /v1.
- `think: true` (or a level) is refused with a 400: no served engine separates reasoning.
- `keep_alive`: 0 unloads the model after the request (an empty prompt with it unloads at once,
  as in Ollama); any other duration is accepted and has no effect: residency is the manifest's
  (`ttl_s`, `pinned`, `max_loaded`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from gateway.api.common import validate
from gateway.http.core import HTTPError
from schemas.ollama import OllamaChatRequest as OllamaChat
from schemas.ollama import OllamaGenerateRequest as GenerateRequest
from schemas.ollama import OllamaMessage as Message
from schemas.openai import ChatRequest, CompletionRequest

if TYPE_CHECKING:
    from gateway.api.context import Gateway

# Ollama option -> the OpenAI sampling field it sets.
SAMPLING_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

# A field of the translated request -> the Ollama field a client should fix, for error `param`s.
PARAMS = {field: f"options.{option}" for option, field in SAMPLING_OPTIONS.items()}
PARAMS.update(response_format="format", prompt="prompt")

# A Go duration ("5m", "1h30m", "-1s") or a number of seconds.
_DURATION = re.compile(r"^-?(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def model_name(gw: "Gateway", name: str) -> str:
    """The manifest name or alias an Ollama model name means: as given, else without `:latest`
    (Ollama's default tag), so `smollm2` and `smollm2:latest` are the same model."""
    if gw.pool.get(name) is not None:
        return name
    base, sep, tag = name.rpartition(":")
    if sep and tag == "latest" and gw.pool.get(base) is not None:
        return base
    return name


def listed_name(name: str) -> str:
    """How /api/tags and /api/ps name a model: with a tag, as Ollama does (`smollm2:latest`)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def keep_alive_seconds(value: Any) -> float | None:
    """`keep_alive` in seconds (negative: forever), or None when not given; a 400 when unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if not _DURATION.match(text):
        raise HTTPError(400, f"keep_alive {value!r} is not a duration (e.g. \"5m\", \"1h\", 300, 0 or -1).",
                        param="keep_alive", code="invalid_value")
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)", text))


def check_think(think: Any, model: str) -> None:
    if think not in (False, None):
        raise HTTPError(400, f"{model!r} does not support thinking: no model of this gateway separates its "
                             "reasoning; send think: false or leave it out.", param="think", code="unsupported_parameter")


def sampling_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI sampling fields Ollama's `options` set (others are ignored: see the module docstring)."""
    fields: dict[str, Any] = {}
    for option, field in SAMPLING_OPTIONS.items():
        value = options.get(option)
        if value is None:
            continue
        if option == "num_predict" and isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            continue  # -1 (no limit) and -2 (fill the context): the model's own max_tokens_limit
        if option == "stop" and isinstance(value, str):
            value = [value]
        fields[field] = value
    return fields


def response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt:
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    return None


def chat_request(model: str, body: OllamaChat) -> ChatRequest:
    check_think(body.think, body.model)
    fields: dict[str, Any] = {"model": model, "messages": openai_messages(body.messages),
                              "stream": body.stream, **sampling_fields(body.options)}
    if body.tools:
        fields["tools"] = body.tools
    fmt = response_format(body.format)
    if fmt:
        fields["response_format"] = fmt
    return checked(ChatRequest, fields)


def generate_request(model: str, body: GenerateRequest) -> ChatRequest:
    """`/api/generate` (not raw): the prompt is one user turn under the model's chat template,
    after `system` if given, as Ollama's own template does."""
    refuse_generate_extras(body)
    message = Message(role="user", content=body.prompt, images=body.images)
    chat = OllamaChat(model=body.model, stream=body.stream, format=body.format, options=body.options,
                      think=body.think, messages=[*([Message(role="system", content=body.system)] if body.system else []),
                                                  message])
    return chat_request(model, chat)


def completion_request(model: str, body: GenerateRequest) -> CompletionRequest:
    """`/api/generate` with `raw: true`: the prompt as it is, no template (a text completion)."""
    refuse_generate_extras(body)
    if body.images:
        raise HTTPError(400, "images need the chat template; send them without raw: true.", param="images",
                        code="invalid_value")
    if response_format(body.format):
        raise HTTPError(400, "format (constrained JSON) is not available with raw: true.", param="format",
                        code="unsupported_parameter")
    return checked(CompletionRequest, {"model": model, "prompt": body.prompt, "stream": body.stream,
                                       **sampling_fields(body.options)})


def refuse_generate_extras(body: GenerateRequest) -> None:
    check_think(body.think, body.model)
    if body.template:
        raise HTTPError(400, "template (a Go template replacing the model's) is not supported: this gateway "
                             "renders the model's own chat template; use raw: true to send a finished prompt.",
                        param="template", code="unsupported_parameter")
    if body.suffix:
        raise HTTPError(400, "suffix (fill-in-the-middle) is not supported by this gateway.", param="suffix",
                        code="unsupported_parameter")
    if body.context:
        raise HTTPError(400, "context (token ids of an earlier answer) is not supported: this gateway does not "
                             "return it; send the conversation to /api/chat instead.", param="context",
                        code="unsupported_parameter")


def checked(model: type, fields: dict[str, Any]) -> Any:
    """Validate the translated request; an error names the Ollama field the client sent."""
    try:
        return validate(model, fields)
    except HTTPError as exc:
        raise renamed(exc) from None


def renamed(exc: HTTPError) -> HTTPError:
    """`exc` with its `param` (and message) in Ollama's field names: `options.num_predict`, not `max_tokens`."""
    if exc.param:
        head = re.split(r"[.\[]", exc.param, maxsplit=1)[0]
        if head in PARAMS:
            param = PARAMS[head] + exc.param[len(head):]
            exc.message = exc.message.replace(f"'{exc.param}'", f"'{param}'").replace(exc.param, param)
            exc.param = param
    return exc


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI's: images become image parts, tool calls get ids (Ollama's have
    none, or their own), and a tool result is linked to the call of its `tool_name`."""
    out: list[dict[str, Any]] = []
    open_calls: list[tuple[str, str]] = []  # (function name, call id) not answered yet
    for index, message in enumerate(messages):
        if message.role == "assistant":
            item: dict[str, Any] = {"role": "assistant", "content": message.content}
            if message.tool_calls:
                calls = []
                for number, call in enumerate(message.tool_calls):
                    call_id = call.id or f"call_{index}_{number}"
                    open_calls.append((call.function.name, call_id))
                    calls.append({"id": call_id, "type": "function", "function": {
                        "name": call.function.name,
                        "arguments": json.dumps(call.function.arguments, ensure_ascii=False)}})
                item["tool_calls"] = calls
        elif message.role == "tool":
            item = {"role": "tool", "content": message.content}
            match = next((c for c in open_calls if message.tool_name in (None, c[0])), None)
            if match is not None:
                open_calls.remove(match)
                item["tool_call_id"] = match[1]
            if message.tool_name:
                item["name"] = message.tool_name
        elif message.images:
            item = {"role": message.role, "content": [
                *({"type": "image_url", "image_url": {"url": image}} for image in message.images),
                {"type": "text", "text": message.content}]}
        else:
            item = {"role": message.role, "content": message.content}
        out.append(item)
    return out


def ollama_tool_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI tool calls (arguments as a JSON string) as Ollama's (arguments as an object)."""
    if not calls:
        return None
    out = []
    for index, call in enumerate(calls):
        try:
            arguments = json.loads(call["function"].get("arguments") or "{}")
        except json.JSONDecodeError:
            arguments = {}
        out.append({"id": call.get("id"), "function": {
            "index": index, "name": call["function"]["name"],
            "arguments": arguments if isinstance(arguments, dict) else {}}})
    return out
