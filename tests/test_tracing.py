"""OpenTelemetry traces (gateway/observability/tracing.py) from a real gateway to a real OTLP/HTTP
receiver (tests/otlp.py): one span per request with the GenAI attributes, the caller's trace
continued, phase child spans, no text or credentials unless the manifest opts in, and nothing at
all when tracing is off."""

from __future__ import annotations

import json
import os
import secrets
import time

import httpx
import openai
import pytest

from tests.conftest import wait_for, write_manifest
from tests.otlp import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = {"name": "smollm2", "source": "smollm2", "nctx": 512, "n_threads": 1, "preload": True}
SECRET_WORD = "Zanzibarquokka"  # in the prompt: must never reach the collector unless content capture is on
API_KEY = "sk-never-in-a-span-123"
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # the SDK's standard batch delay, shortened for the test


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch):
    """The servers get exactly the OTEL_* variables a test gives them."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def chat(url: str, *, stream: bool = False, headers: dict | None = None) -> dict:
    client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": f"Say hello to {SECRET_WORD}."}]
    if not stream:
        done = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=12, temperature=0,
                                              extra_headers=headers or {})
        return {"usage": done.usage, "finish": done.choices[0].finish_reason}
    usage, finish = None, None
    for chunk in client.chat.completions.create(model="smollm2", messages=messages, max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_headers=headers or {}):
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage:
            usage = chunk.usage
    return {"usage": usage, "finish": finish}


def one_trace(receiver: Receiver, trace_id: str) -> tuple:
    """The server span of that trace and its children, once the request span has arrived."""
    wait_for(lambda: any(s.trace_id == trace_id and s.kind == SERVER_KIND for s in receiver.spans), timeout=30)
    time.sleep(0.3)  # children of the same request come in the same export
    spans = [s for s in receiver.spans if s.trace_id == trace_id]
    servers = [s for s in spans if s.kind == SERVER_KIND]
    assert len(servers) == 1, [s.name for s in spans]
    root = servers[0]
    return root, [s for s in spans if s is not root]


def test_a_chat_request_exports_one_trace_with_genai_attributes(tmp_path, start_server):
    with Receiver() as receiver:
        server = start_server(["-c", str(write_manifest(tmp_path / "nexa.yaml", [MODEL]))],
                              env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                   "OTEL_SERVICE_NAME": "nexa-under-test", **FAST_EXPORT})
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        answer = chat(server.url, headers={"traceparent": f"00-{trace_id}-{parent_id}-01",
                                           "x-request-id": "trace-me-1"})
        root, children = one_trace(receiver, trace_id)
        assert "tracing on" in server.log()  # the startup line the off-test looks for

        assert root.parent_span_id == parent_id  # the caller's W3C traceparent is continued
        assert root.name == "chat smollm2" and root.resource["service.name"] == "nexa-under-test"
        a = root.attributes
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "smollm2"
        assert a["gen_ai.usage.input_tokens"] == answer["usage"].prompt_tokens
        assert a["gen_ai.usage.output_tokens"] == answer["usage"].completion_tokens
        assert a["gen_ai.response.finish_reasons"] == [answer["finish"]]
        assert a["nexa.request.id"] == "trace-me-1" and a["http.response.status_code"] == 200
        assert 0 < a["gen_ai.latency.time_to_first_token"] <= a["gen_ai.latency.e2e"]
        assert a["gen_ai.request.max_tokens"] == 12
        # phases as child spans, inside the request's span and in order
        by_name = {s.name: s for s in children}
        assert {"queue wait", "prefill", "decode"} <= set(by_name), sorted(by_name)
        for child in children:
            assert child.parent_span_id == root.span_id
            assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns
        assert by_name["queue wait"].end_ns <= by_name["prefill"].start_ns + 1000
        assert by_name["prefill"].end_ns <= by_name["decode"].start_ns + 1000
        # no prompt or completion text, no credentials, anywhere in what was exported
        raw = b"".join(receiver.raw)
        assert SECRET_WORD.encode() not in raw and API_KEY.encode() not in raw
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a

        # a stream: its span ends with the stream, with the usage counted at the end
        trace_id = secrets.token_hex(16)
        streamed = chat(server.url, stream=True, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        root, children = one_trace(receiver, trace_id)
        assert root.attributes["gen_ai.usage.output_tokens"] == streamed["usage"].completion_tokens
        assert root.attributes["gen_ai.response.finish_reasons"] == [streamed["finish"]]
        assert "decode" in {c.name for c in children}

        # without a traceparent: a new trace of its own
        before = {s.trace_id for s in receiver.spans}
        chat(server.url)
        wait_for(lambda: {s.trace_id for s in receiver.spans if s.kind == SERVER_KIND} - before, timeout=30)


def test_the_manifest_configures_tracing_and_may_opt_into_content(tmp_path, start_server):
    with Receiver() as receiver:
        # preload off: the first request waits for the model to load, which its trace shows
        manifest = write_manifest(tmp_path / "nexa.yaml", [{**MODEL, "preload": False}], server={"tracing": {
            "endpoint": receiver.endpoint, "service_name": "from-manifest", "capture_content": True}})
        server = start_server(["-c", str(manifest)], env=FAST_EXPORT)
        trace_id = secrets.token_hex(16)
        chat(server.url, headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
        root, children = one_trace(receiver, trace_id)
        load = next(c for c in children if c.name == "model load")
        queued = next(c for c in children if c.name == "queue wait")
        assert root.start_ns <= load.start_ns < load.end_ns <= queued.start_ns + 1000  # loaded, then queued
        assert root.resource["service.name"] == "from-manifest"
        assert SECRET_WORD in root.attributes["gen_ai.input.messages"]  # opted in: the prompt is there
        assert root.attributes["gen_ai.output.messages"]
        assert API_KEY.encode() not in b"".join(receiver.raw)  # credentials never


def test_no_trace_is_exported_when_tracing_is_off(tmp_path, start_server):
    with Receiver() as receiver:
        # off by default: no OTEL_* environment, no server.tracing
        quiet = start_server(["-c", str(write_manifest(tmp_path / "a.yaml", [MODEL]))], env=FAST_EXPORT)
        chat(quiet.url)
        # off by the manifest, even with the environment pointing at a collector
        manifest = write_manifest(tmp_path / "b.yaml", [MODEL], server={"tracing": {"enabled": False}})
        refused = start_server(["-c", str(manifest)], env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                           **FAST_EXPORT})
        chat(refused.url)
        assert quiet.stop() == 0 and refused.stop() == 0  # a clean shutdown flushes whatever was buffered
        assert receiver.requests == 0 and receiver.spans == []
        assert "tracing on" not in quiet.log() and "tracing on" not in refused.log()


def test_tracing_is_on_only_when_configured():
    from gateway.observability.tracing import wanted
    from schemas.observability import TracingSettings

    assert not wanted(TracingSettings(), {})
    assert wanted(TracingSettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert wanted(TracingSettings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert wanted(TracingSettings(), {"OTEL_SERVICE_NAME": "nexa"})
    assert wanted(TracingSettings(endpoint="http://collector:4318"), {})
    assert wanted(TracingSettings(enabled=True), {})
    assert not wanted(TracingSettings(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})


# -- requests the client abandons ---------------------------------------------------------------------------

SLOW = {"name": "slow", "source": "/dev/null", "backend": "tests.fakes:FakeBackend", "preload": True,
        "options": {"delay": 0.01}}  # a word per 10 ms: 4000 of them would take 40 s if nobody stopped it
LONG = {"model": "slow", "messages": [{"role": "user", "content": "p"}], "max_tokens": 4000}


def traced_server(start_server, tmp_path, receiver: Receiver, engine: str, **server):
    broken = {**SLOW, "name": "broken", "options": {"fail_after": 3}}  # an engine error after 3 words
    manifest = write_manifest(tmp_path / f"{engine}.yaml", [SLOW, broken], server=server)
    return start_server(["-c", str(manifest), "--server", engine],
                        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **FAST_EXPORT})


def generation_line(server, request_id: str) -> dict:
    """The JSON log's `generation` line of that request."""
    def find():
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return next((line for line in lines if line.get("event") == "generation"
                     and line.get("request_id") == request_id), None)
    return wait_for(find, timeout=15)


@pytest.mark.parametrize("engine", ["granian", "robyn"])
def test_a_stream_the_client_leaves_exports_its_span_as_abandoned(engine, tmp_path, start_server):
    with Receiver() as receiver:
        server = traced_server(start_server, tmp_path, receiver, engine)
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "x-request-id": f"left-{engine}"}
        received = 0
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**LONG, "stream": True},
                          headers=headers, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                received += line.startswith("data: {")
                if received >= 10:
                    break  # leaving the block closes the connection mid-generation
        left = time.time_ns()
        root, children = one_trace(receiver, trace_id)
        a = root.attributes
        assert a["gen_ai.response.finish_reasons"] == ["abandoned"] and a["error.type"] == "client_disconnected"
        assert a["http.response.status_code"] == 200  # the stream's headers had gone out
        assert root.status_code != 2  # a client leaving is not the server's error (STATUS_CODE_ERROR)
        assert 5 <= a["nexa.response.streamed_deltas"] < 2000, a  # as far as it got, not the 4000 asked for
        assert root.end_ns >= left  # it ended with the disconnect, not when the stream began
        assert "decode" in {c.name for c in children}
        logged = generation_line(server, f"left-{engine}")  # the span says what the log line says
        assert logged["finish_reason"] == "abandoned"
        assert logged["streamed_deltas"] == a["nexa.response.streamed_deltas"]

        # a stream the engine breaks is abandoned too, but error.type names the failure, not the client
        trace_id = secrets.token_hex(16)
        broken = httpx.post(server.url + "/v1/chat/completions", json={**LONG, "model": "broken", "stream": True},
                            headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}, timeout=30)
        assert broken.status_code == 200 and '"error"' in broken.text
        a = one_trace(receiver, trace_id)[0].attributes
        assert a["gen_ai.response.finish_reasons"] == ["abandoned"] and a["error.type"] == "BackendError", a
        assert a["nexa.response.streamed_deltas"] == 3


def test_a_request_the_client_leaves_before_its_answer_exports_its_span_as_abandoned(tmp_path, start_server):
    """Granian only: Robyn cannot tell that a non-streamed request's client left (README "Servers")."""
    with Receiver() as receiver:
        server = traced_server(start_server, tmp_path, receiver, "granian")
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "x-request-id": "left-waiting"}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", json=LONG, headers=headers, timeout=1.0)
        left = time.time_ns()
        root, _ = one_trace(receiver, trace_id)
        a = root.attributes
        assert a["gen_ai.response.finish_reasons"] == ["abandoned"] and a["error.type"] == "client_disconnected"
        assert "http.response.status_code" not in a  # no answer was sent
        assert a["gen_ai.request.model"] == "slow" and a["gen_ai.latency.e2e"] >= 0.9
        assert root.end_ns >= left - 200_000_000  # ended when the gateway saw the client go, not at 40 s
        assert root.end_ns - root.start_ns < 10e9
        assert generation_line(server, "left-waiting")["finish_reason"] == "abandoned"


# -- background responses: a span of their own, and their metrics -------------------------------------------

BACKGROUND = {"model": "slow", "input": "p", "background": True}


def create_background(server, trace_id: str, parent_id: str, **body) -> str:
    created = httpx.post(server.url + "/v1/responses", json={**BACKGROUND, **body}, timeout=30,
                         headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert created.status_code == 200, created.text
    return created.json()["id"]


def settled(server, response_id: str, timeout: float = 30) -> dict:
    def done():
        response = httpx.get(f"{server.url}/v1/responses/{response_id}", timeout=10).json()
        return response if response["status"] in ("completed", "incomplete", "failed", "cancelled") else None
    return wait_for(done, timeout=timeout)


def job_span(receiver: Receiver, response_id: str):
    """The span of the background job that generated that response, and its children."""
    root = wait_for(lambda: next((s for s in receiver.spans
                                  if s.attributes.get("gen_ai.response.id") == response_id), None), timeout=30)
    time.sleep(0.3)
    return root, [s for s in receiver.spans if s.parent_span_id == root.span_id]


def metric(server, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when it is not there yet)."""
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_background_response_gets_a_span_of_its_own_linked_to_its_request(tmp_path, start_server):
    with Receiver() as receiver:
        server = traced_server(start_server, tmp_path, receiver, "granian")
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        response_id = create_background(server, trace_id, parent_id, max_output_tokens=20)
        done = settled(server, response_id)
        assert done["status"] == "incomplete"  # the fake engine stops at max_output_tokens: finish reason length
        root, children = job_span(receiver, response_id)
        creator, _ = one_trace(receiver, trace_id)  # the create request's own (server) span
        assert root is not creator and creator.end_ns <= root.end_ns
        # in the caller's trace, beside the request that created it, and linked to that request's span
        assert root.trace_id == trace_id and root.parent_span_id == parent_id
        assert root.links == [(creator.trace_id, creator.span_id)]
        a = root.attributes
        assert root.name == "chat slow" and a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "slow"
        assert a["gen_ai.usage.output_tokens"] == done["usage"]["output_tokens"] == 20
        assert a["gen_ai.usage.input_tokens"] == done["usage"]["input_tokens"]
        assert a["gen_ai.response.finish_reasons"] == ["length"] and a["nexa.response.status"] == "incomplete"
        assert a["nexa.request.id"] == creator.attributes["nexa.request.id"]
        assert "error.type" not in a and root.status_code != 2 and "http.response.status_code" not in a
        assert 0 < a["gen_ai.latency.time_to_first_token"] <= a["gen_ai.latency.e2e"]
        by_name = {s.name: s for s in children}
        assert {"queue wait", "prefill", "decode"} <= set(by_name), sorted(by_name)
        for child in children:
            assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns
        assert by_name["decode"].end_ns - by_name["decode"].start_ns >= 0.1e9  # 19 words of 10 ms after the first

        # a failure the engine finds mid-generation: the span names it, and is the server's error
        response_id = create_background(server, secrets.token_hex(16), parent_id, model="broken", max_output_tokens=50)
        assert settled(server, response_id)["status"] == "failed"
        a = (failed := job_span(receiver, response_id)[0]).attributes
        assert a["error.type"] == "BackendError" and a["nexa.response.status"] == "failed" and failed.status_code == 2


def test_a_cancelled_background_response_says_so_and_the_metrics_count_the_jobs(tmp_path, start_server):
    with Receiver() as receiver:
        server = traced_server(start_server, tmp_path, receiver, "granian")
        assert metric(server, "nexa_background_responses_running", model="slow") == 0
        response_id = create_background(server, secrets.token_hex(16), secrets.token_hex(8), max_output_tokens=4000)
        wait_for(lambda: httpx.get(f"{server.url}/v1/responses/{response_id}", timeout=10).json()["status"]
                 == "in_progress")
        time.sleep(0.3)  # some 30 words in
        assert metric(server, "nexa_background_responses_running", model="slow") == 1
        cancelled = httpx.post(f"{server.url}/v1/responses/{response_id}/cancel", timeout=30)
        assert cancelled.json()["status"] == "cancelled"
        root, children = job_span(receiver, response_id)
        a = root.attributes
        # what a stream its client left says, but error.type says a cancel, not a client gone
        assert a["gen_ai.response.finish_reasons"] == ["abandoned"] and a["error.type"] == "cancelled", a
        assert 5 <= a["nexa.response.streamed_deltas"] < 2000 and a["nexa.response.status"] == "cancelled"
        assert root.status_code != 2  # a cancel is not the server's error
        assert "decode" in {c.name for c in children}
        assert metric(server, "nexa_background_responses_running", model="slow") == 0
        assert metric(server, "nexa_background_responses_total", model="slow", outcome="cancelled") == 1

        finished = create_background(server, secrets.token_hex(16), secrets.token_hex(8), max_output_tokens=5)
        assert settled(server, finished)["status"] == "incomplete"
        wait_for(lambda: metric(server, "nexa_background_responses_total", model="slow", outcome="incomplete") == 1)
        broken = create_background(server, secrets.token_hex(16), secrets.token_hex(8), model="broken")
        assert settled(server, broken)["status"] == "failed"
        wait_for(lambda: metric(server, "nexa_background_responses_total", model="broken", outcome="failed") == 1)
        assert metric(server, "nexa_background_responses_total", model="slow", outcome="cancelled") == 1
        assert metric(server, "nexa_background_responses_running", model="slow") == 0
        assert metric(server, "nexa_background_responses_running", model="broken") == 0


def test_a_background_response_a_shutdown_stops_says_so(tmp_path, start_server):
    with Receiver() as receiver:
        # a grace of 2 s: the job (40 s) gets 1 s to finish, then is stopped
        server = traced_server(start_server, tmp_path, receiver, "granian", shutdown_grace_s=2)
        response_id = create_background(server, secrets.token_hex(16), secrets.token_hex(8), max_output_tokens=4000)
        wait_for(lambda: httpx.get(f"{server.url}/v1/responses/{response_id}", timeout=10).json()["status"]
                 == "in_progress")
        assert server.stop() == 0  # a clean shutdown exports the job's span after stopping it
        root, _ = job_span(receiver, response_id)
        a = root.attributes
        assert a["error.type"] == "shutdown" and a["nexa.response.status"] == "failed" and root.status_code == 2, a
        assert a["gen_ai.response.finish_reasons"] == ["abandoned"]
