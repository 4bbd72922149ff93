"""Remote models: an OpenAI-compatible upstream (another nexa gateway, llama.cpp's
server, vLLM, OpenAI itself) served as one model of this gateway.

Why a backend and not a proxy route: a remote model then gets everything a
local one has -- names and aliases, API keys and per-key model lists, queues,
timeouts, metrics, reload -- and clients cannot tell the difference.

The upstream is always asked for a stream (also when the client wants one JSON
answer), so that one code path maps upstream chunks to `Delta`s and a client
that leaves closes the upstream connection at the next chunk, which stops the
upstream's generation too. The I/O is synchronous httpx: the backend runs on its
model's own thread, never on the event loop. Each replica is one connection, so
`replicas: N` is the number of requests in flight upstream at once.

Failures: the upstream rejecting the request itself (400, 413, 422) is the
client's fault and becomes `BackendError` (a 400 here, with the upstream's
message); an upstream that cannot be reached, refuses this gateway's key, lacks
the model or fails is `UpstreamError` (502; 503 or 429 with Retry-After when the
upstream says so; 504 on a read timeout).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterator

import httpx
import numpy as np

from backends.base import Backend, Cancelled, ChatOptions, Delta, SamplingParams, Usage
from backends.embeddings import EmbedResult, l2_normalize
from backends.errors import BackendError, LoadError, UpstreamError
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.remote")

OPTIONS = {"timeout_s", "connect_timeout_s", "headers", "normalize"}
_DEFAULTS = SamplingParams()


class RemoteBackend(Backend):
    """The connection to one upstream; subclasses say what they call there."""

    def __init__(self, spec: ModelSpec, path: Any, client: httpx.Client):
        super().__init__(spec, path)
        self.client = client
        self.model = spec.remote_model or spec.name

    @classmethod
    def load(cls, spec: ModelSpec, path: Any) -> "RemoteBackend":
        """Builds the client; it does not call the upstream, so a gateway starts (and a
        preloaded remote model is ready) while the upstream is still coming up."""
        unknown = set(spec.options) - OPTIONS
        if unknown:
            raise LoadError(f"unknown option(s) for a remote model: {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(OPTIONS))})")
        options = spec.options
        headers = {"user-agent": "nexa-gateway", **{str(k): str(v) for k, v in (options.get("headers") or {}).items()}}
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        try:
            timeout = httpx.Timeout(float(options.get("timeout_s", 600)),
                                    connect=float(options.get("connect_timeout_s", 10)))
        except (TypeError, ValueError) as exc:
            raise LoadError(f"bad timeout option for a remote model: {exc}") from None
        client = httpx.Client(base_url=spec.base_url.rstrip("/") + "/", headers=headers, timeout=timeout,
                              follow_redirects=False)
        return cls(spec, path, client)

    def close(self) -> None:
        self.client.close()

    def info(self) -> dict[str, Any]:
        return {"base_url": self.spec.base_url, "remote_model": self.model}

    # -- HTTP ------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._refused(response.status_code, response.headers, response.text)
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"upstream {self.spec.base_url} answered {path} with something that is not JSON") from None

    def _events(self, path: str, body: dict[str, Any], cancelled: Cancelled) -> Iterator[dict[str, Any] | None]:
        """The upstream's SSE events as dicts; None once when `cancelled()` turned true (the
        connection is closed on the way out, which cancels the upstream's work)."""
        try:
            with self.client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._refused(response.status_code, response.headers, response.text)
                for line in response.iter_lines():
                    if cancelled():
                        yield None
                        return
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise UpstreamError(f"upstream {self.spec.base_url} sent a stream event that is not JSON: "
                                            f"{data[:120]!r}") from None
                    if isinstance(event, dict) and event.get("error"):
                        raise UpstreamError(f"upstream {self.spec.base_url} failed: {_message(event)}")
                    yield event
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        raise UpstreamError(f"upstream {self.spec.base_url} closed the stream before it finished")

    def _unreachable(self, exc: httpx.HTTPError) -> UpstreamError:
        where = self.spec.base_url
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            error = UpstreamError(f"upstream {where} did not answer in time ({type(exc).__name__})", status=504,
                                  code="upstream_timeout")
        else:
            error = UpstreamError(f"cannot reach upstream {where}: {type(exc).__name__}: {exc}".rstrip(": "))
        log.warning("%s", error, extra={"event": "upstream_error", "model": self.spec.name, "base_url": where})
        return error

    def _refused(self, status: int, headers: httpx.Headers, text: str) -> Exception:
        message = _message(_json_or_none(text)) or text[:300].strip() or f"HTTP {status}"
        where = self.spec.base_url
        if status in (400, 413, 422):
            return BackendError(f"the upstream model rejected the request: {message}")
        retry = _retry_after(headers)
        if status in (401, 403):
            error = UpstreamError(f"upstream {where} refused this gateway's API key ({status}): {message}")
        elif status == 404:
            error = UpstreamError(f"upstream {where} has no model {self.model!r} or route ({status}): {message}")
        elif status == 429:
            error = UpstreamError(f"upstream {where} is rate limiting: {message}", status=429,
                                  retry_after=retry or 1, code="upstream_rate_limited")
        elif status in (503, 504):
            error = UpstreamError(f"upstream {where} is unavailable ({status}): {message}", status=status,
                                  retry_after=retry)
        else:
            error = UpstreamError(f"upstream {where} failed ({status}): {message}")
        log.warning("%s", error, extra={"event": "upstream_error", "model": self.spec.name, "status": status})
        return error


class RemoteTextBackend(RemoteBackend):
    capabilities = frozenset({"complete", "chat"})

    def complete(self, prompt: Any, params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        body = {"model": self.model, "prompt": prompt, **_sampling(params), **_STREAM}
        return self._generate("completions", body, cancelled)

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled,
             options: ChatOptions | None = None) -> Iterator[Delta]:
        options = options or ChatOptions()
        body: dict[str, Any] = {"model": self.model, "messages": messages, **_sampling(params), **_STREAM}
        if options.tools:
            body["tools"] = options.tools
            if not options.parallel_tool_calls:
                body["parallel_tool_calls"] = False
            if options.tool_choice is not None:
                body["tool_choice"] = options.tool_choice
        if options.response_format:
            body["response_format"] = options.response_format
        return self._generate("chat/completions", body, cancelled)

    def _generate(self, path: str, body: dict[str, Any], cancelled: Cancelled) -> Iterator[Delta]:
        """Upstream chunks -> Deltas: text as it comes; finish_reason, usage and whole
        tool calls (assembled from their fragments) in the last one."""
        finish: str | None = None
        usage: Usage | None = None
        calls: dict[int, dict[str, Any]] = {}
        events = self._events(path, body, cancelled)
        try:
            for event in events:
                if event is None:
                    yield Delta(finish_reason="cancelled", usage=usage)
                    return
                if event.get("usage"):
                    u = event["usage"]
                    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")  # the upstream's cache
                    usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                                  cached_tokens=int(cached or 0))
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content") if "delta" in choice else choice.get("text")
                    if text:
                        yield Delta(text=text)
                    for fragment in delta.get("tool_calls") or []:
                        _merge_call(calls, fragment)
                    finish = choice.get("finish_reason") or finish
        finally:
            events.close()  # closes the upstream connection when the client left early
        tool_calls = [calls[i] for i in sorted(calls)] or None
        yield Delta(finish_reason=finish or "stop", usage=usage, tool_calls=tool_calls)


class RemoteEmbedBackend(RemoteBackend):
    capabilities = frozenset({"embed"})

    def __init__(self, spec: ModelSpec, path: Any, client: httpx.Client):
        super().__init__(spec, path, client)
        self.default_normalize = bool(spec.options.get("normalize", False))

    def embed(self, inputs: list, normalize: bool = False, truncate: bool = True) -> EmbedResult:
        body: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "float"}
        if not truncate:
            body["truncate"] = False  # a nexa extension; sent only when asked for
        data = self._post("embeddings", body)
        try:
            rows = sorted(data["data"], key=lambda item: item.get("index", 0))
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
            tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"upstream {self.spec.base_url} answered embeddings in an unexpected shape: "
                                f"{type(exc).__name__}: {exc}") from None
        if len(vectors) != len(inputs) or vectors.ndim != 2:
            raise UpstreamError(f"upstream {self.spec.base_url} returned {len(vectors)} vectors for {len(inputs)} inputs")
        return EmbedResult(l2_normalize(vectors) if normalize else vectors, tokens)


_STREAM = {"stream": True, "stream_options": {"include_usage": True}}


def _sampling(params: SamplingParams) -> dict[str, Any]:
    """OpenAI's sampling fields; llama.cpp's extras (top_k, min_p, repeat_penalty) only
    when a client set them, since strict upstreams reject fields they do not know."""
    body: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(params, name):
            body[name] = getattr(params, name)
    for name in ("top_k", "min_p", "repeat_penalty"):
        if getattr(params, name) != getattr(_DEFAULTS, name):
            body[name] = getattr(params, name)
    return body


def _merge_call(calls: dict[int, dict[str, Any]], fragment: dict[str, Any]) -> None:
    """Tool calls stream as fragments keyed by index: id, type and name first, then
    pieces of the arguments string."""
    index = int(fragment.get("index", 0))
    call = calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if fragment.get("id"):
        call["id"] = fragment["id"]
    function = fragment.get("function") or {}
    if function.get("name"):
        call["function"]["name"] = function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _message(data: Any) -> str:
    """The message of an OpenAI error envelope (or of FastAPI's `detail`), if there is one."""
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "")
    if isinstance(error, str):
        return error
    detail = data.get("detail")
    return str(detail) if detail else ""


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
