"""One conformance suite for both HTTP servers: every test runs against a real
`nexa server --server granian` and `--server robyn` over loopback.

Where a server cannot meet a behaviour even with its adapter's workarounds, the
test is a strict xfail for that server only, with the reason (README "Servers").
The engine is the fake one (tests/fakes.py) where the test is about the server;
SmolLM2 and Whisper tiny.en are real models for the chat and upload paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from tests.conftest import NEXA, ROOT, Server, fetch_catalog, metric, models, wait_for, write_manifest
from tests.speech import DETERMINISTIC, ENGLISH, reference, speak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SERVERS = ["granian", "robyn"]
FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}
LIMIT = 1_000_000  # server.max_body_bytes of the fake server: room for a short WAV
TRANSCRIBE = "/v1/audio/transcriptions"
ORIGIN = "http://app.example"


def heard_right(text: str, speech: bytes, **settings) -> bool:
    """The gateway's text is what faster-whisper says in this process about the same bytes."""
    return text.strip() == reference(fetch_catalog("whisper-tiny-en"), speech, options=DETERMINISTIC, **settings)


def only(server: str, reason: str) -> list:
    """The servers, with `server` a strict xfail."""
    return [pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=reason)) if s == server else s
            for s in SERVERS]


# -- servers (one per engine and module) -------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> bytes:
    return speak(ENGLISH, tmp_path_factory.mktemp("speech") / "fox.wav").read_bytes()


@pytest.fixture(scope="module", params=SERVERS)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def fake_server(engine: str, tmp_path_factory) -> Iterator[Server]:
    """The fake engine (for the server-level tests) beside Whisper tiny.en (for uploads)."""
    fetch_catalog("whisper-tiny-en")
    tmp = tmp_path_factory.mktemp(f"conformance-{engine}")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "a", **FAKE, "preload": True, "options": {"delay": 0.01}},
        {"name": "whisper-tiny-en", "source": "whisper-tiny-en", "device": "cpu", "preload": True,
         "options": DETERMINISTIC},
    ], server={"max_body_bytes": LIMIT, "cors_origins": [ORIGIN]})
    server = Server(["-c", str(manifest), "--server", engine], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def smol_server(engine: str, tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"smol-{engine}")
    manifest = write_manifest(tmp / "nexa.yaml", [{"name": "smollm2", "source": "smollm2", "nctx": 1024,
                                                   "preload": True}])
    server = Server(["-c", str(manifest), "--server", engine], tmp)
    yield server
    server.stop()


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.json()["error"]








# -- discovery and operations --------------------------------------------------------


def test_health_ready_models_and_metrics(fake_server):
    url = fake_server.url
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert len(health.headers["x-request-id"]) == 32
    ready = httpx.get(url + "/ready").json()
    assert ready["ready"] is True and ready["models"] == {"a": "ready", "whisper-tiny-en": "ready"}
    listed = models(url)
    assert set(listed) == {"a", "whisper-tiny-en"} and listed["a"]["running"] == 0
    assert [m.id for m in sdk(fake_server).models.list().data] == ["a", "whisper-tiny-en"]
    one = httpx.get(url + "/v1/models/a")
    assert one.status_code == 200 and one.json()["id"] == "a"
    scraped = httpx.get(url + "/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert 'nexa_requests_total{' in scraped.text and 'route="/health"' in scraped.text


# -- text ------------------------------------------------------------------------------


def test_completion_and_chat(fake_server):
    client = sdk(fake_server)
    completion = client.completions.create(model="a", prompt="p", max_tokens=3)
    assert completion.object == "text_completion" and completion.choices[0].text == " w0 w1 w2"
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 3
    chat = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert chat.object == "chat.completion" and chat.choices[0].message.content == " w0 w1"


def test_stream_is_sse_framed(fake_server):
    body = {"model": "a", "prompt": "p", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", fake_server.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"  # every event ends with a blank line
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks) == " w0 w1 w2 w3"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    pieces = [c.choices[0].delta.content or "" for c in sdk(fake_server).chat.completions.create(
        model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True) if c.choices]
    assert "".join(pieces) == " w0 w1 w2"


def test_real_model_chat_and_stream(smol_server):
    client = sdk(smol_server)
    answer = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Name a colour."}],
                                            max_tokens=8, temperature=0)
    assert answer.choices[0].message.content.strip() and answer.usage.prompt_tokens > 5
    kwargs = dict(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole and whole.strip()


# -- errors ----------------------------------------------------------------------------


def test_errors_are_openai_envelopes(fake_server):
    url = fake_server.url
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(fake_server).completions.create(model="no-such-model", prompt="p", max_tokens=1)
    assert missing.value.status_code == 404 and missing.value.body["code"] == "model_not_found"
    bad = httpx.post(url + "/v1/completions", content=b'{"model": "a", "prompt": ',
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and error(bad)["code"] == "invalid_json"
    wrong_method = httpx.delete(url + "/v1/completions")
    assert wrong_method.status_code == 405 and error(wrong_method)["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"
    unknown = httpx.get(url + "/v2/nothing")
    assert unknown.status_code == 404 and error(unknown)["code"] == "route_not_found"


def test_options_answers_real_routes_only(fake_server):
    url = fake_server.url
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    for path in ("/v2/nothing", "/v1/completions/extra"):
        missing = httpx.options(url + path, headers=preflight)
        assert missing.status_code == 404 and error(missing)["code"] == "route_not_found", path
        assert "allow" not in missing.headers and "access-control-allow-methods" not in missing.headers
    unserved = httpx.options(url + "/v1/embeddings", headers=preflight)  # no embedding model declared
    assert unserved.status_code == 404 and error(unserved)["code"] == "route_not_served"
    post_only = httpx.options(url + "/v1/completions", headers=preflight)
    assert post_only.status_code == 204, post_only.text
    assert post_only.headers["allow"] == "OPTIONS, POST"
    assert post_only.headers["access-control-allow-methods"] == "OPTIONS, POST"
    assert post_only.headers["access-control-allow-origin"] == ORIGIN
    get_only = httpx.options(url + "/v1/models/a", headers={**preflight, "access-control-request-method": "GET"})
    assert get_only.status_code == 204
    assert get_only.headers["allow"] == get_only.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
    plain = httpx.options(url + "/health")  # no Origin: no CORS headers, still the route's methods
    assert plain.status_code == 204 and plain.headers["allow"] == "GET, HEAD, OPTIONS"
    assert "access-control-allow-methods" not in plain.headers


def test_model_routes_name_the_model_that_answered(fake_server):
    answer = httpx.post(fake_server.url + "/v1/completions", json={"prompt": "p", "max_tokens": 1})
    assert answer.status_code == 200 and answer.headers["x-nexa-model"] == "a"
    assert "x-nexa-model" not in httpx.get(fake_server.url + "/health").headers
    exposed = httpx.post(fake_server.url + "/v1/completions", json={"model": "a", "prompt": "p", "max_tokens": 1},
                         headers={"origin": ORIGIN})
    assert "x-nexa-model" in exposed.headers["access-control-expose-headers"]


def test_body_over_the_limit_is_413(fake_server):
    url = fake_server.url
    big = {"model": "a", "prompt": "x" * LIMIT}
    before = metric(url, "nexa_requests_total", route="/v1/completions", status="413")
    declared = httpx.post(url + "/v1/completions", json=big, headers={"x-request-id": "too-big-declared"}, timeout=30)
    assert declared.status_code == 413 and error(declared)["code"] == "request_too_large"
    assert declared.headers["x-request-id"] == "too-big-declared"  # the client's own, echoed

    def chunks():  # no content-length: the limit holds on what arrives
        for _ in range(11):
            yield b"x" * 100_000

    chunked = httpx.post(url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                         timeout=30)
    assert chunked.status_code == 413 and error(chunked)["code"] == "request_too_large"
    upload = httpx.post(url + TRANSCRIBE, files={"file": ("big.wav", b"\0" * (LIMIT + 1), "audio/wav")}, timeout=30)
    assert upload.status_code == 413
    # Refused by the server adapter before the gateway reads the request, and still logged and counted.
    for answer, path in ((declared, "/v1/completions"), (chunked, "/v1/completions"), (upload, TRANSCRIBE)):
        line = logged(fake_server, answer.headers["x-request-id"])
        assert (line["method"], line["path"], line["status"]) == ("POST", path, 413), line
    assert metric(url, "nexa_requests_total", route="/v1/completions", status="413") == before + 2
    assert httpx.post(url + "/v1/completions", json={"model": "a", "prompt": "p", "max_tokens": 1}).status_code == 200


def logged(server: Server, request_id: str) -> dict:
    """The JSON log's `request` line of that request, once it is written."""
    def find():
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return next((x for x in lines if x.get("event") == "request" and x.get("request_id") == request_id), None)
    return wait_for(find, timeout=15)


def header(head: bytes, name: str) -> str | None:
    """One header's value from a raw response head."""
    return next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")[1:]
                 if line.split(b":", 1)[0].strip().lower() == name.encode()), None)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response (head, body) from a raw socket, by its content-length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def half_a_body(engine: str, start_server, tmp_path: Path, body_timeout_s: str,
                request_id: str) -> tuple[Server, socket.socket]:
    """A fake-engine server, and a connection whose request declares 100 kB of body and sends 15 bytes."""
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "a", **FAKE, "preload": True}])
    server = start_server(["-c", str(manifest), "--server", engine], env={"NEXA_BODY_TIMEOUT_S": body_timeout_s})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"X-Request-Id: " + request_id.encode() + b"\r\nContent-Length: 100000\r\n\r\n{\"model\": \"a\", ")
    return server, sock


@pytest.mark.parametrize("engine", only("robyn", "Robyn reads the whole body before the adapter sees the request, "
                                                 "so a body that never arrives is never answered"), indirect=True)
def test_a_body_that_never_arrives_is_a_408_after_the_body_timeout(engine, start_server, tmp_path):
    server, sock = half_a_body(engine, start_server, tmp_path, "2", "slow-body")
    with sock:
        started = time.monotonic()
        head, body = read_response(sock)
        waited = time.monotonic() - started
        assert head.startswith(b"HTTP/1.1 408"), head
        assert header(head, "x-request-id") == "slow-body"
        assert 1.5 < waited < 15, waited
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
        assert "server.body_timeout_s" in error["message"]
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # the connection is closed, not left waiting for the rest
    line = logged(server, "slow-body")  # refused by the server adapter, and still logged and counted
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/completions", 408), line
    assert 1500 <= line["ms"] < 15_000, line  # from the request's arrival: the wait for the body counts
    assert metric(server.url, "nexa_requests_total", route="/v1/completions", status="408") == 1
    # A body that does arrive (slowly, within the limit) is served as usual.
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        payload = json.dumps({"model": "a", "prompt": "p", "max_tokens": 2}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload[:10])
        time.sleep(0.5)
        sock.sendall(payload[10:])
        head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(body)["choices"][0]["text"] == " w0 w1"


@pytest.mark.parametrize("engine", only("robyn", "actix reads the whole body before Robyn calls the adapter, so a "
                                                 "client that leaves during its upload never reaches the gateway"),
                         indirect=True)
def test_a_client_that_leaves_while_its_body_uploads_is_logged_and_counted_as_499(engine, start_server, tmp_path):
    server, sock = half_a_body(engine, start_server, tmp_path, "30", "left-uploading")
    with sock:
        time.sleep(0.5)
    line = logged(server, "left-uploading")  # long before the body timeout
    assert (line["path"], line["status"], line.get("client_disconnected")) == ("/v1/completions", 499, True), line
    assert metric(server.url, "nexa_requests_total", route="/v1/completions", status="499") == 1
    # The truncated body was not handed to the route (it would have been answered, to nobody, as bad JSON).
    assert metric(server.url, "nexa_requests_total", route="/v1/completions") == 1


def test_messages_routes_answer_every_error_in_the_anthropic_envelope(fake_server):
    """Also errors raised before the handler: body size (in the adapter), unknown method, unknown model."""
    url = fake_server.url + "/v1/messages"
    hi = [{"role": "user", "content": "hi"}]
    declared = httpx.post(url, json={"model": "a", "max_tokens": 1, "messages": hi, "system": "x" * LIMIT}, timeout=30)
    chunked = httpx.post(url, content=(b"x" * 100_000 for _ in range(11)),
                         headers={"content-type": "application/json"}, timeout=30)
    wrong_method = httpx.get(url)
    unknown = httpx.post(url, json={"model": "no-such-model", "max_tokens": 1, "messages": hi})
    for answer, status, kind in ((declared, 413, "request_too_large"), (chunked, 413, "request_too_large"),
                                 (wrong_method, 405, "invalid_request_error"), (unknown, 404, "not_found_error")):
        assert answer.status_code == status and answer.json()["type"] == "error", answer.text
        assert answer.json()["error"]["type"] == kind and answer.json()["error"]["message"]
    ok = httpx.post(url, json={"model": "a", "max_tokens": 2, "messages": hi}, timeout=30)
    assert ok.status_code == 200 and ok.json()["type"] == "message"


# -- uploads and query strings -----------------------------------------------------------


def test_multipart_upload_reaches_the_route_with_its_fields(fake_server, speech):
    answer = httpx.post(fake_server.url + TRANSCRIBE, timeout=120,
                        files={"file": ("fox.wav", speech, "audio/wav")},
                        data={"model": "whisper-tiny-en", "response_format": "verbose_json", "language": "en"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["task"] == "transcribe" and result["language"] == "english" and result["segments"]
    assert heard_right(result["text"], speech, language="en"), result["text"]
    text = sdk(fake_server).audio.transcriptions.create(model="whisper-tiny-en", file=("fox.wav", speech),
                                                        response_format="text")
    assert heard_right(text, speech)


@pytest.mark.parametrize("engine", only("robyn", "Robyn keys request.files by file name and drops the part's "
                                                 "field name; the adapter can only call every file `file`"),
                         indirect=True)
def test_file_under_another_field_name_is_not_taken_for_the_file(fake_server, speech):
    answer = httpx.post(fake_server.url + TRANSCRIBE, files={"audio": ("fox.wav", speech, "audio/wav")}, timeout=60)
    assert answer.status_code == 400 and error(answer)["code"] == "missing_file"


@pytest.mark.parametrize("engine", only("robyn", "Robyn keeps one value per multipart text field, so the SDK's "
                                                 "repeated timestamp_granularities[] loses all but the last"),
                         indirect=True)
def test_repeated_form_fields_all_arrive(fake_server, speech):
    answer = httpx.post(fake_server.url + TRANSCRIBE, timeout=120, files={"file": ("fox.wav", speech, "audio/wav")},
                        data={"response_format": "verbose_json",
                              "timestamp_granularities[]": ["word", "segment"]})
    assert answer.status_code == 200, answer.text
    assert answer.json().get("words") and answer.json()["segments"]


def test_query_values_and_paths_are_percent_decoded(fake_server, speech):
    url = fake_server.url + TRANSCRIBE
    upload = {"file": ("fox.wav", speech, "audio/wav")}
    decoded = httpx.post(url + "?language=en&response_format=verbose%5Fjson", files=upload, timeout=120)
    assert decoded.status_code == 200, decoded.text
    assert decoded.json()["language"] == "english" and heard_right(decoded.json()["text"], speech, language="en")
    unknown = httpx.post(url + "?language=en&model=no%20such+model", files=upload, timeout=60)
    assert unknown.status_code == 404
    assert "'no such model'" in error(unknown)["message"], error(unknown)["message"]
    in_path = httpx.get(fake_server.url + "/v1/models/no%20such")
    assert in_path.status_code == 404 and "'no such'" in error(in_path)["message"], error(in_path)["message"]


# -- streams: disconnect and shutdown ------------------------------------------------------


def test_client_disconnect_stops_generation(fake_server):
    url = fake_server.url
    produced_before = metric(url, "nexa_generated_tokens_total", model="a")
    body = {"model": "a", "prompt": "p", "max_tokens": 4000, "stream": True}  # ~40 s if nobody stops it
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for i, _ in enumerate(response.iter_lines()):
            if i >= 10:
                assert models(url)["a"]["running"] == 1  # (leaving the loop closes the connection)
                break
    wait_for(lambda: models(url)["a"]["running"] == 0, timeout=15)
    follow_up = httpx.post(url + "/v1/completions", json={"model": "a", "prompt": "p", "max_tokens": 2}, timeout=30)
    assert follow_up.status_code == 200 and follow_up.json()["choices"][0]["text"] == " w0 w1"  # not queued
    assert metric(url, "nexa_generated_tokens_total", model="a") - produced_before < 2000
    logged = [json.loads(line) for line in fake_server.log().splitlines() if line.startswith("{")]
    abandoned = [line for line in logged if line.get("event") == "generation" and line.get("model") == "a"
                 and line.get("finish_reason") == "abandoned"]
    assert abandoned and 5 <= abandoned[-1]["streamed_deltas"] < 2000 and abandoned[-1]["ttft_ms"] > 0


ROBYN_SIGINT = pytest.param(
    "robyn", signal.SIGINT, id="robyn-SIGINT",
    marks=pytest.mark.xfail(strict=False, reason="actix installs its own SIGINT handler (a forced stop that cuts "
                            "streams) from another thread at a moment the adapter cannot observe; the adapter takes "
                            "SIGINT back on every idle-to-busy request, which usually but not always wins. SIGTERM, "
                            "what service managers send, always drains."))


@pytest.mark.parametrize("engine, sig", [("granian", signal.SIGTERM), ("granian", signal.SIGINT),
                                         ("robyn", signal.SIGTERM), ROBYN_SIGINT],
                         ids=["granian-SIGTERM", "granian-SIGINT", "robyn-SIGTERM", "robyn-SIGINT"])
def test_shutdown_signal_lets_the_stream_finish_and_exits_0(engine, sig, start_server, tmp_path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "a", **FAKE, "preload": True,
                                                        "options": {"delay": 0.01}}])
    server = start_server(["-c", str(manifest), "--server", engine])
    lines: list[str] = []
    first = threading.Event()

    def read() -> None:
        body = {"model": "a", "prompt": "p", "max_tokens": 150, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(30)
    server.proc.send_signal(sig)
    reader.join(60)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert sum(1 for line in lines if line.startswith("data: {")) == 151  # 150 tokens and the final chunk
    assert server.proc.wait(60) == 0, server.log(3000)


@pytest.mark.parametrize("holder", ["gateway", "socket"])
@pytest.mark.parametrize("engine", SERVERS, indirect=True)
def test_busy_port_fails_with_one_line(fake_server, engine, holder, tmp_path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "a", **FAKE}])
    with contextlib.ExitStack() as stack:
        if holder == "gateway":  # a running gateway of the same server
            port = fake_server.port
        else:  # any other program
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
        err = tmp_path / "stderr.txt"
        with err.open("w") as sink:  # a file, not a pipe: a leftover child would hold a pipe open
            proc = subprocess.Popen([*NEXA, "server", "-c", str(manifest), "--server", engine, "--host", "127.0.0.1",
                                     "--port", str(port)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=sink, env={**os.environ, "NEXA_LOG_FORMAT": "json"},
                                    start_new_session=True)  # its own process group: nothing may outlive the test
        try:
            try:
                proc.wait(20)  # a start that fails exits within a few seconds
                serving = False
            except subprocess.TimeoutExpired:
                serving = True
            time.sleep(0.5)
            left = _group_alive(proc.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    stderr = err.read_text(errors="replace")
    assert not serving, "a second server started on a port that was already taken"
    assert proc.returncode == 1
    text_lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert text_lines == [f"nexa: port {port} on 127.0.0.1 is already in use"], stderr[-2000:]
    assert not left, "a process of the failed start is still running"
    assert httpx.get(fake_server.url + "/health").status_code == 200  # the running server is untouched


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
