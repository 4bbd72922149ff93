"""OpenTelemetry traces: one span per request, exported over OTLP/HTTP, off unless configured.

The span follows the GenAI semantic conventions (`gen_ai.operation.name`, `gen_ai.request.model`,
`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`) plus
the latency attributes vLLM puts on its request spans (`gen_ai.latency.time_to_first_token`,
`...time_in_queue`, `...time_in_model_prefill`, `...time_in_model_decode`, `...e2e`), and continues
the caller's trace when the request carries a W3C `traceparent`. The phases a request went through
(waiting in the model's queue, the model loading, prefill up to the first token, decode) become
child spans, recorded with the timestamps the request path noted in its `Timeline`.

Spans carry no prompt or completion text unless `server.tracing.capture_content` is true, and never
the request's headers (API keys) or the exporter's headers.

Everything here is cheap when tracing is off: `Tracing.start` returns None and the request path
skips every call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from schemas.observability import TracingSettings

log = logging.getLogger("nexa.tracing")

ENVIRONMENT = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME")
DEFAULT_SERVICE = "nexa-gateway"
CLIENT_LEFT = "client_disconnected"  # error.type of a request whose client went away before it ended

# gen_ai.operation.name of the routes that run a model (GenAI semantic conventions' well-known values)
OPERATIONS: dict[str, str] = {
    "/v1/chat/completions": "chat", "/v1/messages": "chat", "/v1/responses": "chat", "/api/chat": "chat",
    "/v1/completions": "text_completion", "/api/generate": "text_completion",
    "/v1/embeddings": "embeddings", "/api/embed": "embeddings", "/api/embeddings": "embeddings",
}


def wanted(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> bool:
    """On when the manifest says so, or (unless it says `enabled: false`) when an endpoint is known."""
    if settings.enabled is not None:
        return settings.enabled
    return settings.endpoint is not None or any(environ.get(name) for name in ENVIRONMENT)


class Tracing:
    """The process's tracer provider and OTLP/HTTP exporter (one per Gateway)."""

    def __init__(self, settings: TracingSettings, environ: Mapping[str, str] = os.environ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.settings = settings
        service = settings.service_name or environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE
        endpoint = settings.endpoint.rstrip("/") + "/v1/traces" if settings.endpoint else None
        # endpoint/headers None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS itself
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=dict(settings.headers) or None,
                                    timeout=settings.timeout_s)
        self.provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}),
                                       sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))  # export off the event loop
        self.tracer = self.provider.get_tracer("nexa.gateway")
        self.propagator = TraceContextTextMapPropagator()
        self.endpoint = endpoint or exporter._endpoint  # noqa: SLF001 - for the startup log line only
        log.info("tracing on: OTLP/HTTP to %s as %s", self.endpoint, service,
                 extra={"event": "tracing", "endpoint": self.endpoint, "service": service})

    @classmethod
    def configure(cls, settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> "Tracing | None":
        return cls(settings, environ) if wanted(settings, environ) else None

    def start(self, headers: Mapping[str, str], method: str, path: str, request_id: str) -> "RequestTrace":
        """The request's span, a child of the caller's `traceparent` when it sent one."""
        from opentelemetry.trace import SpanKind

        parent = self.propagator.extract(carrier=dict(headers))
        span = self.tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method, "url.path": path,
                                                  "nexa.request.id": request_id})
        trace = RequestTrace(self, span, path)
        trace.parent, trace.request_id = parent, request_id
        return trace

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporter thread."""
        self.provider.shutdown()


@dataclass
class Timeline:
    """Monotonic timestamps the request path notes as it goes (gateway.models / the chat core)."""

    started: float = field(default_factory=time.monotonic)
    load: tuple[float, float] | None = None  # waited for the model to load
    submitted: float | None = None  # handed to the model's queue
    job: Any = None  # the queued Job; its `began` is when a replica picked it up
    first_token: float | None = None
    finished: float | None = None


# The running request's timeline, for the model handle (which does not see the request): set by the
# gateway for traced requests only, so an untraced request pays one ContextVar.get per phase.
TIMELINE: contextvars.ContextVar[Timeline | None] = contextvars.ContextVar("nexa_timeline", default=None)


def note_load(began: float | bool) -> None:
    """The request waited for its model to load from `began` (monotonic) until now (False: it did not)."""
    timeline = TIMELINE.get()
    if timeline is not None and began:
        timeline.load = (float(began), time.monotonic())


def note_submitted(job: Any) -> None:
    """The request's job entered the model's queue; its `began` (set by the replica thread that takes
    it) ends the queue wait."""
    timeline = TIMELINE.get()
    if timeline is not None:
        timeline.submitted, timeline.job = job.enqueued, job


class RequestTrace:
    """One request's span: attributes are added as the request goes, the span ends once."""

    def __init__(self, tracing: Tracing, span: Any, path: str):
        self.tracing = tracing
        self.span = span
        self.timeline = Timeline()
        self._wall_offset = time.time_ns() - int(self.timeline.started * 1e9)  # monotonic -> epoch ns
        self.operation = OPERATIONS.get(path)
        self.deferred = False  # a stream: ended by the chat core when the last token went out
        self.detached = False  # a background job's span: the job ends it with its outcome (`end_job`)
        self.ended = False
        self.path = path
        self.parent: Any = None  # the caller's context (its traceparent), which a background job's span continues
        self.request_id = ""
        if self.operation:
            span.set_attribute("gen_ai.operation.name", self.operation)

    @property
    def capture_content(self) -> bool:
        return self.tracing.settings.capture_content

    def _ns(self, t: float) -> int:
        return self._wall_offset + int(t * 1e9)

    def model(self, name: str, params: Any = None) -> None:
        """The model the request asked for and its sampling parameters (no text)."""
        if self.operation:
            self.span.update_name(f"{self.operation} {name}")
        self.span.set_attribute("gen_ai.request.model", name)
        for attribute, key in (("gen_ai.request.max_tokens", "max_tokens"), ("gen_ai.request.temperature",
                               "temperature"), ("gen_ai.request.top_p", "top_p"), ("gen_ai.request.seed", "seed")):
            value = getattr(params, key, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.span.set_attribute(attribute, value)

    def route(self, route: str | None) -> None:
        """The matched route template (`http.route`); a plain path when no route matched."""
        if route:
            self.span.set_attribute("http.route", route)
            if not self.operation:
                self.span.update_name(f"{self.span.attributes.get('http.request.method', '')} {route}".strip())

    def first_token(self) -> None:
        if self.timeline.first_token is None:
            self.timeline.first_token = time.monotonic()

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)

    def finish_reasons(self, reasons: list[str]) -> None:
        self.span.set_attribute("gen_ai.response.finish_reasons", list(reasons))

    def abandoned(self, deltas: int, error: str = CLIENT_LEFT) -> None:
        """A generation that ended before its last token: the span says what the log's `abandoned`
        generation line says (observability/prompt_cache.log_abandoned), and why (`error.type`: the client
        left, or the exception that broke the stream). Its usage never came, so `deltas` is how far it got."""
        self.span.set_attribute("gen_ai.response.finish_reasons", ["abandoned"])
        self.span.set_attribute("nexa.response.streamed_deltas", deltas)
        self.span.set_attribute("error.type", error)

    def detach(self, response_id: str) -> "RequestTrace":
        """The span of the background job this request starts (`background: true`). The request's own span
        ends when its answer goes out, long before the job does, so the job's span is not its child: it
        continues the same caller's trace beside it (sampled as it was) and links to it, as a later request
        of that caller would."""
        from opentelemetry.trace import Link, SpanKind

        span = self.tracing.tracer.start_span(
            f"background {self.path}", context=self.parent, kind=SpanKind.INTERNAL,
            links=[Link(self.span.get_span_context())],
            attributes={"gen_ai.response.id": response_id, "nexa.request.id": self.request_id})
        job = RequestTrace(self.tracing, span, self.path)
        job.detached, job.parent, job.request_id = True, self.parent, self.request_id
        return job

    def end_job(self, status: str, error: str | None) -> None:
        """End a background job's span with how its response ended (`nexa.response.status`). A failed job
        is the server's error; a cancelled one is not (as a client leaving is not), and its `error.type`
        (`cancelled`, `shutdown`) replaces the `client_disconnected` the chat core noted when the
        cancellation closed its generation."""
        self.span.set_attribute("nexa.response.status", status)
        if status == "failed":
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, error))
        self.end(error=error)

    def content(self, messages: Any = None, output: Any = None) -> None:
        """Prompt and completion text: only when the manifest opted in."""
        if not self.capture_content:
            return
        if messages is not None:
            self.span.set_attribute("gen_ai.input.messages", json.dumps(messages, default=str, ensure_ascii=False))
        if output is not None:
            self.span.set_attribute("gen_ai.output.messages", json.dumps(output, default=str, ensure_ascii=False))

    def end(self, status: int | None = None, error: str | None = None) -> None:
        """Close the span (once): latency attributes, phase child spans, HTTP status."""
        if self.ended:
            return
        self.ended = True
        from opentelemetry.trace import Status, StatusCode

        t = self.timeline
        t.finished = t.finished or time.monotonic()
        span = self.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:  # HTTP semantic conventions: the status code is the error type
                error = error or str(status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, error))
        if error:
            span.set_attribute("error.type", error)
        began = getattr(t.job, "began", None)
        phases: list[tuple[str, float, float]] = []
        if t.load is not None:
            phases.append(("model load", *t.load))
        if t.submitted is not None and began is not None:
            phases.append(("queue wait", t.submitted, began))
            span.set_attribute("gen_ai.latency.time_in_queue", began - t.submitted)
        if t.first_token is not None:
            span.set_attribute("gen_ai.latency.time_to_first_token", t.first_token - t.started)
            if began is not None:
                phases.append(("prefill", began, t.first_token))
                span.set_attribute("gen_ai.latency.time_in_model_prefill", t.first_token - began)
            phases.append(("decode", t.first_token, t.finished))
            span.set_attribute("gen_ai.latency.time_in_model_decode", t.finished - t.first_token)
        span.set_attribute("gen_ai.latency.e2e", t.finished - t.started)
        from opentelemetry.trace import set_span_in_context

        context = set_span_in_context(span)
        for name, start, stop in phases:
            child = self.tracing.tracer.start_span(name, context=context, start_time=self._ns(start))
            child.end(end_time=self._ns(max(start, stop)))
        span.end(end_time=self._ns(t.finished))
