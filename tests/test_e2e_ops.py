"""Operating the gateway, end to end over loopback: hot reload under load, residency,
overload, auth, CORS, limits, metrics. The engine is the fake one (tests/fakes.py,
named per model with `backend:`) because these tests are about the gateway."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import metric, models, wait_for, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}


def fake(name: str, **extra) -> dict:
    return {"name": name, **FAKE, **extra}


def complete(url: str, model: str, tokens: int = 3, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": model, "prompt": "p", "max_tokens": tokens},
                      timeout=kwargs.pop("timeout", 60), **kwargs)








def test_reload_under_load_fails_no_request(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", aliases=["x"], preload=True, options={"delay": 0.002})],
                          server={"reload": True, "reload_debounce_ms": 50})
    server = start_server(["-c", str(path)])
    url = server.url
    failures, done, stop = [], [0], threading.Event()

    def client(stream: bool) -> None:
        with httpx.Client(timeout=30) as http:
            for _ in range(400):  # bounded
                if stop.is_set():
                    return
                body = {"model": "a", "prompt": "p", "max_tokens": 5, "stream": stream}
                try:
                    r = http.post(url + "/v1/completions", json=body)
                    ok = r.status_code == 200 and (not stream or r.text.rstrip().endswith("data: [DONE]"))
                except httpx.HTTPError as exc:
                    ok, r = False, exc
                if not ok:
                    failures.append(getattr(r, "text", repr(r)))
                done[0] += 1

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        loads_before = metric(url, "nexa_model_loads_total", model="a", outcome="ok")
        # 1. an alias change is applied in place: no new weights
        write_manifest(path, [fake("a", aliases=["y"], preload=True, options={"delay": 0.002})],
                       server={"reload": True, "reload_debounce_ms": 50})
        wait_for(lambda: models(url)["a"]["aliases"] == ["y"])
        assert metric(url, "nexa_model_loads_total", model="a", outcome="ok") == loads_before
        # 2. a load-relevant change replaces the model while requests keep flowing
        write_manifest(path, [fake("a", aliases=["y"], preload=True, options={"delay": 0.003})],
                       server={"reload": True, "reload_debounce_ms": 50})
        wait_for(lambda: metric(url, "nexa_model_loads_total", model="a", outcome="ok") == loads_before + 1)
        # 3. add a model, then 4. remove it
        write_manifest(path, [fake("a", aliases=["y"], preload=True, options={"delay": 0.003}), fake("b")],
                       server={"reload": True, "reload_debounce_ms": 50})
        wait_for(lambda: "b" in models(url))
        assert complete(url, "b").status_code == 200
        write_manifest(path, [fake("a", aliases=["y"], preload=True, options={"delay": 0.003})],
                       server={"reload": True, "reload_debounce_ms": 50})
        wait_for(lambda: "b" not in models(url))
        assert complete(url, "b").status_code == 404
        # 5. a broken manifest is rejected and the last good one keeps serving
        good_hash = httpx.get(url + "/ready").json()["manifest_hash"]
        path.write_text("models:\n  - {name: a, source: /dev/null, nctx: 0}\n")
        wait_for(lambda: metric(url, "nexa_manifest_reloads_total", outcome="invalid") >= 1)
        assert httpx.get(url + "/ready").json()["manifest_hash"] == good_hash
        assert complete(url, "y").status_code == 200
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert done[0] > 20, "the load did not run"
    assert failures == [], failures[:3]
    assert '"event": "reload"' in server.log() and "models[0].nctx: must be > 0" in server.log()


def test_admin_reload_and_sighup_apply_without_watching(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a")])
    server = start_server(["-c", str(path)])
    write_manifest(path, [fake("a"), fake("c")])
    time.sleep(0.5)
    assert "c" not in models(server.url)  # not watching
    answer = httpx.post(server.url + "/admin/reload", timeout=60).json()
    assert answer["ok"] and answer["plan"]["add"] == ["c"] and answer["plan"]["unchanged"] == ["a"]
    assert "c" in models(server.url)
    path.write_text("models: [{name: a, source: /dev/null, bogus: 1}]")
    bad = httpx.post(server.url + "/admin/reload", timeout=60)
    assert bad.status_code == 400 and "models[0].bogus: unknown key" in bad.json()["error"]["message"]
    write_manifest(path, [fake("a")])
    import signal

    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "c" not in models(server.url))
    assert server.proc.poll() is None


def test_lazy_load_and_ttl_unload(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("lazy", ttl_s=0.5)])
    server = start_server(["-c", str(path)])
    assert models(server.url)["lazy"]["state"] == "unloaded"
    assert httpx.get(server.url + "/ready").json()["ready"] is True  # nothing to preload
    assert complete(server.url, "lazy").status_code == 200
    assert models(server.url)["lazy"]["state"] == "ready"
    wait_for(lambda: models(server.url)["lazy"]["state"] == "unloaded", timeout=10)
    assert complete(server.url, "lazy").status_code == 200  # and loads again


def test_eviction_under_max_loaded_spares_pinned_and_busy_models(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml",
                          [fake("a"), fake("b"), fake("p", pinned=True, options={"delay": 0.05})],
                          server={"max_loaded": 2})
    server = start_server(["-c", str(path)])
    assert complete(server.url, "a").status_code == 200
    assert complete(server.url, "p").status_code == 200
    assert complete(server.url, "b").status_code == 200  # evicts a (LRU), never the pinned p
    states = {k: v["state"] for k, v in models(server.url).items()}
    assert states == {"a": "unloaded", "b": "ready", "p": "ready"}
    # While b is busy and p is pinned, nothing can make room for a: a clear 503, not a hang.
    path2 = write_manifest(tmp_path / "n2.yaml", [fake("a"), fake("b", options={"delay": 0.05}),
                                                  fake("p", pinned=True)], server={"max_loaded": 2})
    server2 = start_server(["-c", str(path2)])
    assert complete(server2.url, "p").status_code == 200
    busy = threading.Thread(target=complete, args=(server2.url, "b", 60))
    busy.start()
    wait_for(lambda: models(server2.url)["b"]["state"] == "ready")
    time.sleep(0.2)
    blocked = complete(server2.url, "a")
    busy.join()
    assert blocked.status_code == 503 and blocked.json()["error"]["code"] == "no_capacity"
    assert int(blocked.headers["retry-after"]) >= 1


def test_full_queue_is_429_with_retry_after(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml",
                          [fake("slow", preload=True, max_queue=1, options={"delay": 0.05})])
    server = start_server(["-c", str(path)])
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(complete(server.url, "slow", 40))) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: metric(server.url, "nexa_requests_running", model="slow") >= 1)
    wait_for(lambda: metric(server.url, "nexa_queue_depth", model="slow") >= 1)
    # One running, one queued: the third is refused at once.
    refused = complete(server.url, "slow", 1)
    started = time.monotonic()
    health = httpx.get(server.url + "/health")
    health_seconds = time.monotonic() - started
    for t in threads:
        t.join()
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error" and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in results] == [200, 200]  # the admitted ones are never interrupted
    assert health.status_code == 200 and health_seconds < 1.0


def test_request_timeout_is_504(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("t", preload=True, timeout_s=0.3, options={"delay": 0.05})])
    server = start_server(["-c", str(path)])
    answer = complete(server.url, "t", 100)
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
    assert answer.json()["error"]["type"] == "server_error"  # as OpenAI types every 5xx
    assert complete(server.url, "t", 2).status_code == 200


def test_api_keys_and_model_allowlists(tmp_path, start_server):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nfile-key-123456 b\n")
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True), fake("b", preload=True)], server={
        "api_keys": ["full-key-123456", {"key": "only-b-123456", "models": ["b"]}],
        "api_keys_file": str(keys_file)})
    server = start_server(["-c", str(path)])
    url = server.url
    assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/ready").status_code == 200
    missing = complete(url, "a")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = complete(url, "a", headers={"authorization": "Bearer nope-nope-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert complete(url, "a", headers={"authorization": "Bearer full-key-123456"}).status_code == 200
    forbidden = complete(url, "a", headers={"authorization": "Bearer only-b-123456"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "model_not_allowed"
    assert complete(url, "b", headers={"authorization": "Bearer only-b-123456"}).status_code == 200
    assert complete(url, "b", headers={"authorization": "Bearer file-key-123456"}).status_code == 200
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="only-b-123456", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["b"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="bad-bad-bad", max_retries=0).models.list()


def test_cors_allowlist(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True)],
                          server={"cors_origins": ["http://app.example"], "cors_allow_credentials": True})
    server = start_server(["-c", str(path)])
    preflight = httpx.options(server.url + "/v1/completions", headers={
        "origin": "http://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    other = complete(server.url, "a", headers={"origin": "http://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    bad = tmp_path / "bad.yaml"
    write_manifest(bad, [fake("a")], server={"cors_origins": ["*"], "cors_allow_credentials": True})
    from gateway.manifest.load import ManifestError, load_file

    with pytest.raises(ManifestError, match="cors_origins cannot contain"):
        load_file(bad)


def test_body_over_the_limit_is_413_also_when_chunked(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True)], server={"max_body_bytes": 2000})
    server = start_server(["-c", str(path)])
    big = {"model": "a", "prompt": "x" * 5000}
    declared = httpx.post(server.url + "/v1/completions", json=big)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks():
        for _ in range(10):
            yield b"x" * 500

    chunked = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert complete(server.url, "a").status_code == 200


def test_metrics_and_request_ids(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True)])
    server = start_server(["-c", str(path)])
    r = httpx.post(server.url + "/v1/completions", headers={"x-request-id": "trace-me-42"},
                   json={"model": "a", "prompt": "p", "max_tokens": 4, "stream": True})
    assert r.headers["x-request-id"] == "trace-me-42"
    assert len(complete(server.url, "a").headers["x-request-id"]) == 32
    # Long or odd ids are replaced, not echoed and logged whole.
    for odd in ("x" * 100_000, "y" * 129, "a b", "<script>"):
        answer = complete(server.url, "a", headers={"x-request-id": odd})
        assert answer.status_code == 200 and len(answer.headers["x-request-id"]) == 32
        assert answer.headers["x-request-id"] != odd
    assert complete(server.url, "a", headers={"x-request-id": "z" * 128}).headers["x-request-id"] == "z" * 128
    assert "x" * 200 not in server.log() and "y" * 129 not in server.log()
    text = httpx.get(server.url + "/metrics").text
    for name in ("nexa_requests_total", "nexa_request_seconds_bucket", "nexa_time_to_first_token_seconds_bucket",
                 "nexa_generated_tokens_total", "nexa_queue_depth", "nexa_loaded_models", "nexa_model_load_seconds"):
        assert name in text, name
    assert metric(server.url, "nexa_generated_tokens_total", model="a") == 4 + 3 * 6
    assert metric(server.url, "nexa_requests_total", route="/v1/completions", model="a", status="200") == 7
    assert '"request_id": "trace-me-42"' in server.log()


def logged(server, event: str, request_id: str) -> dict:
    """The JSON log's line of that event for that request, once it is written."""
    def find():
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return next((x for x in lines if x.get("event") == event and x.get("request_id") == request_id), None)
    return wait_for(find, timeout=15)


def test_a_request_the_client_leaves_is_logged_and_counted_as_499(tmp_path, start_server):
    """Granian cancels the handler of a client that left before its answer; that request still gets its
    `request` line and metrics, under nginx's 499 "client closed request" (Robyn cannot tell: README "Servers")."""
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True, options={"delay": 0.01}),
                                                   fake("lazy", options={"load_delay": 3})])
    server = start_server(["-c", str(path)])
    url = server.url
    with pytest.raises(httpx.ReadTimeout):  # 4000 words at 10 ms: 40 s if nobody stops it; the client leaves at 1 s
        complete(url, "a", 4000, headers={"x-request-id": "left-waiting"}, timeout=1.0)
    line = logged(server, "request", "left-waiting")
    assert line["status"] == 499 and line["client_disconnected"] is True, line
    assert (line["method"], line["path"], line["model"], line["stream"]) == ("POST", "/v1/completions", "a", False)
    assert 900 <= line["ms"] < 10_000, line  # when the gateway saw the client go, not when the words would end
    assert logged(server, "generation", "left-waiting")["finish_reason"] == "abandoned"
    assert metric(url, "nexa_requests_total", route="/v1/completions", model="a", status="499") == 1
    assert metric(url, "nexa_request_seconds_count", route="/v1/completions") == 1  # the same histogram as answers
    assert metric(url, "nexa_request_seconds_bucket", route="/v1/completions", le="0.5") == 0
    assert metric(url, "nexa_request_seconds_bucket", route="/v1/completions", le="10.0") == 1

    # A stream the client leaves had its answer begin: its request line (written when the headers went
    # out) says 200, as the status sent; the `generation` line says the client left, once.
    body = {"model": "a", "prompt": "p", "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers={"x-request-id": "left-streaming"},
                      timeout=30) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i >= 10:
                break
    line = logged(server, "request", "left-streaming")
    assert line["status"] == 200 and line["stream"] is True and "client_disconnected" not in line, line
    assert logged(server, "generation", "left-streaming")["finish_reason"] == "abandoned"
    assert metric(url, "nexa_requests_total", route="/v1/completions", model="a", status="200") == 1
    # A stream the client leaves before its headers (here: while its model loads) is a 499 too, timed once.
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", url + "/v1/completions", json={**body, "model": "lazy"}, timeout=1.0,
                          headers={"x-request-id": "left-loading"}):
            pass
    line = logged(server, "request", "left-loading")
    assert (line["status"], line["stream"], line["model"], line["client_disconnected"]) == (499, True, "lazy", True)
    assert metric(url, "nexa_request_seconds_count", route="/v1/completions") == 3  # with the left stream's

    answered = complete(url, "a")  # an answered request's line carries no such field
    assert answered.status_code == 200
    assert "client_disconnected" not in logged(server, "request", answered.headers["x-request-id"])


def test_replicas_serve_requests_side_by_side(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml",
                          [fake("r", preload=True, replicas=2, options={"delay": 0.03})])
    server = start_server(["-c", str(path)])
    assert models(server.url)["r"]["replicas"] == 2
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(complete(server.url, "r", 30))) for _ in range(2)]
    for t in threads:
        t.start()
    # Two engine instances: both requests run at once instead of queueing.
    wait_for(lambda: metric(server.url, "nexa_requests_running", model="r") == 2)
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]


def test_unknown_request_fields_are_accepted_and_logged_once_per_route_and_field(tmp_path, start_server):
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True)], server={"log_level": "debug"})
    server = start_server(["-c", str(path)])
    body = {"model": "a", "prompt": "p", "max_tokens": 1, "x_vendor_hint": {"a": 1}, "max_new_tokens": 2}
    for _ in range(3):
        assert httpx.post(server.url + "/v1/completions", json=body, timeout=30).status_code == 200
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "x_vendor_hint": 1}
    assert httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200

    def noted() -> list[dict]:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == "unknown_field"]

    wait_for(lambda: len(noted()) >= 2)
    time.sleep(0.2)
    events = noted()
    # once per (route, field); `max_new_tokens` is a known alias, not an unknown field
    assert [(e["route"], e["field"]) for e in events] == [("/v1/completions", "x_vendor_hint"),
                                                         ("/v1/chat/completions", "x_vendor_hint")]
    assert all(e["level"] == "debug" for e in events)
