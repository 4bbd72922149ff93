"""The state store over TLS (`rediss://`): a real redis-server that speaks only TLS, with a
throwaway CA (tests/redis_server.py), first through the store itself, then through real
gateways. What a user meets without the CA is a clear 503 naming the store and the TLS reason,
never a traceback or the password; a misspelt URL option is refused before anything connects."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
import yaml

from gateway.state.base import StateUnavailable
from gateway.state.urls import open_store
from tests.conftest import ROOT, write_manifest
from tests.redis_server import PASSWORD

pytestmark = pytest.mark.timeout(180)

KEY = "sk-tls-one"
FAKE = {"name": "fake", "source": "/dev/null", "backend": "tests.fakes:FakeBackend", "preload": True}


def without_ca(url: str) -> str:
    return url.partition("?")[0]


async def round_trip(url: str) -> dict | None:
    store = open_store(url)
    await store.start()
    try:
        await store.put("alice", "response", "resp_1", {"over": "tls"})
        assert await store.list("alice", "response") == ["resp_1"]
        return await store.get("alice", "response", "resp_1")
    finally:
        await store.close()


def test_the_store_round_trips_over_tls_and_the_server_speaks_nothing_else(rediss_server):
    import redis

    rediss_server.flush()
    assert asyncio.run(round_trip(rediss_server.url)) == {"over": "tls"}
    client = rediss_server.client()
    assert len(client.keys("nexa:state:obj:*")) == 1
    client.close()
    plain = redis.Redis(host="127.0.0.1", port=rediss_server.port, password=PASSWORD, socket_timeout=3)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()  # the same port without TLS: so the round trip above went through TLS
    plain.close()


def test_without_the_ca_a_self_signed_server_is_a_503_naming_the_store_and_the_tls_reason(rediss_server):
    with pytest.raises(StateUnavailable) as caught:
        asyncio.run(round_trip(without_ca(rediss_server.url)))
    message = caught.value.message
    assert caught.value.status == 503 and PASSWORD not in message
    assert f"rediss://<redacted>@127.0.0.1:{rediss_server.port}/0" in message
    assert "TLS" in message and "self-signed certificate" in message and "ssl_ca_certs" in message


def test_a_certificate_for_another_name_is_a_503_saying_so(rediss_server):
    with pytest.raises(StateUnavailable) as caught:
        asyncio.run(round_trip(rediss_server.url.replace("127.0.0.1", "localhost")))
    assert "not valid for 'localhost'" in caught.value.message and "a name the certificate has" in caught.value.message


@pytest.mark.parametrize("url, problem", [
    ("rediss://127.0.0.1:6379/0?ssl_ca_cert=/ca.pem", "no URL option ssl_ca_cert"),
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "need rediss://"),
    ("rediss://127.0.0.1:6379/0?socket_timeout=soon", "Invalid value for .socket_timeout."),
])
def test_a_url_option_redis_py_would_not_take_is_refused_before_connecting(url, problem):
    with pytest.raises(ValueError, match=problem):
        open_store(url)


def test_nexa_check_names_a_misspelt_tls_option(tmp_path):
    manifest = tmp_path / "nexa.yaml"
    manifest.write_text(yaml.safe_dump({"server": {}, "models": [{"name": "m", "source": str(tmp_path / "m.gguf")}]}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "NEXA_STATE": "rediss://:hunter2@127.0.0.1:6379/0?ssl_ca_cert=/ca.pem"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(manifest)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "server.state" in result.stderr and "ssl_ca_cert" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr + result.stdout


# -- real gateways ------------------------------------------------------------------------------


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)


def get(server, path: str) -> httpx.Response:
    return httpx.get(server.url + path, headers={"authorization": f"Bearer {KEY}"}, timeout=60)


@pytest.mark.e2e
def test_responses_and_conversations_outlive_a_gateway_restart_on_tls_redis(start_server, tmp_path, rediss_server):
    rediss_server.flush()
    manifest = write_manifest(tmp_path / "nexa.yaml", [FAKE], server={"api_keys": [KEY], "state": rediss_server.url})
    first = start_server(["-c", str(manifest)])
    response = post(first, "/v1/responses", {"model": "fake", "input": "Hi", "max_output_tokens": 4})
    assert response.status_code == 200, response.text
    conversation = post(first, "/v1/conversations", {"metadata": {"kept": "yes"}})
    assert conversation.status_code == 200, conversation.text
    assert first.stop() == 0
    client = rediss_server.client()
    assert len(client.keys("nexa:state:obj:*")) >= 2  # what the gateway stored is in the TLS-only Redis
    client.close()
    second = start_server(["-c", str(manifest)])
    kept = get(second, f"/v1/responses/{response.json()['id']}")
    assert kept.status_code == 200 and kept.json()["output"] == response.json()["output"]
    assert get(second, f"/v1/conversations/{conversation.json()['id']}").json()["metadata"] == {"kept": "yes"}
    assert "state_ready" in second.log() and PASSWORD not in first.log() + second.log()


@pytest.mark.e2e
def test_a_gateway_without_the_ca_serves_stateless_requests_and_says_why_state_is_unavailable(
        start_server, tmp_path, rediss_server):
    manifest = write_manifest(tmp_path / "nexa.yaml", [FAKE],
                              server={"api_keys": [KEY], "state": without_ca(rediss_server.url)})
    server = start_server(["-c", str(manifest)])
    chat = post(server, "/v1/chat/completions", {"model": "fake", "messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 2})
    assert chat.status_code == 200, chat.text
    stored = post(server, "/v1/responses", {"model": "fake", "input": "Hi", "max_output_tokens": 4})
    assert stored.status_code == 503 and stored.json()["error"]["code"] == "state_unavailable"
    message = stored.json()["error"]["message"]
    assert f"rediss://<redacted>@127.0.0.1:{rediss_server.port}/0" in message and "certificate" in message
    assert "ssl_ca_certs" in message
    log = server.log()
    assert "state_unavailable" in log and "self-signed certificate" in log
    assert "Traceback" not in log and PASSWORD not in log + stored.text
