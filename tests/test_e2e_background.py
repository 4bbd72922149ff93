"""OpenAI Responses `background: true` end to end: the official `openai` SDK against a real gateway
with SmolLM2 and the default SQLite store. Create, poll, cancel, stream and resume, and a gateway
killed mid-generation. Assertions are about behaviour and shapes, never which words the model says."""

from __future__ import annotations

import json
import signal
import time

import openai
import pytest

from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KEY = "sk-background"
LONG = "Write a very long story about a lighthouse keeper, with many chapters."


def manifest(tmp, smollm2_path, **server):
    return write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "source": str(smollm2_path), "nctx": 2048, "preload": True},
    ], server={"api_keys": [KEY], **server})


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("background")
    server = Server(["-c", str(manifest(tmp, smollm2_path))], tmp, env={"NEXA_CACHE_ROOT": str(tmp / "cache")})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=180)


def wait(client, response_id: str, until=("completed", "incomplete", "failed", "cancelled"), timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.responses.retrieve(response_id)
        if response.status in until:
            return response
        time.sleep(0.1)
    raise AssertionError(f"{response_id} still {response.status} after {timeout}s")


def log_events(server: Server, request_id: str) -> list[dict]:
    lines = []
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("request_id") == request_id:
            lines.append(entry)
    return lines


def test_background_answers_queued_then_completes_like_a_foreground_call(client):
    request = {"model": "smollm2", "input": "Name three colours.", "max_output_tokens": 24, "temperature": 0}
    started = time.monotonic()
    created = client.responses.create(**request, background=True)
    assert time.monotonic() - started < 5  # answered before the generation, not after it
    assert created.status in ("queued", "in_progress") and created.background is True
    assert created.output == [] and created.usage is None
    done = wait(client, created.id)
    foreground = client.responses.create(**request)
    assert done.status == foreground.status and done.status in ("completed", "incomplete")
    assert done.output_text == foreground.output_text and done.output_text
    assert done.usage.output_tokens == foreground.usage.output_tokens
    assert done.usage.input_tokens == foreground.usage.input_tokens
    assert [item.type for item in done.output] == [item.type for item in foreground.output]
    # a finished one is answered unchanged by cancel (OpenAI: cancelling again returns the final response)
    again = client.responses.cancel(created.id)
    assert again.status == done.status and again.output_text == done.output_text


def test_cancel_stops_the_generation(client, server):
    created = client.responses.create(model="smollm2", input=LONG, max_output_tokens=1500, temperature=0,
                                      background=True, extra_headers={"x-request-id": "bg-cancel-1"})
    wait(client, created.id, until=("in_progress",), timeout=120)
    time.sleep(1.0)  # some tokens out, far from 1500
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.id == created.id
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    # the engine stopped: the generation's log line says it was abandoned, well before its budget
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ended = [e for e in log_events(server, "bg-cancel-1") if e.get("event") == "generation"]
        if ended:
            break
        time.sleep(0.2)
    assert [e["finish_reason"] for e in ended] == ["abandoned"]
    assert 0 < ended[0]["streamed_deltas"] < 1500
    time.sleep(2)
    assert client.responses.retrieve(created.id).status == "cancelled"  # and it stays so


def test_stream_and_resume_after_a_sequence_number(client):
    with client.responses.create(model="smollm2", input="Name three colours.", max_output_tokens=32,
                                 temperature=0, background=True, stream=True) as stream:
        events = [event for event in stream]
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(numbers)))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    response_id = events[0].response.id
    assert events[0].response.background is True
    cut = len(events) // 2
    with client.responses.retrieve(response_id, stream=True, starting_after=cut) as resumed:
        rest = [event for event in resumed]
    assert [e.sequence_number for e in rest] == numbers[cut + 1:]
    assert [e.model_dump() for e in rest] == [e.model_dump() for e in events[cut + 1:]]
    final = client.responses.retrieve(response_id)
    assert final.output_text == events[-1].response.output_text


def test_resume_a_running_stream_live(client):
    created = client.responses.create(model="smollm2", input=LONG, max_output_tokens=120, temperature=0,
                                      background=True)
    with client.responses.retrieve(created.id, stream=True, starting_after=1) as live:
        rest = [event for event in live]
    assert rest[0].sequence_number == 2
    assert [e.sequence_number for e in rest] == list(range(2, 2 + len(rest)))
    assert rest[-1].type in ("response.completed", "response.incomplete")
    assert rest[-1].response.output_text == client.responses.retrieve(created.id).output_text


def test_background_without_store_is_a_400(client, server):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input="Hi", background=True, store=False)
    error = info.value.response.json()["error"]
    assert error["param"] == "background" and error["type"] == "invalid_request_error" and error["message"]


def test_a_foreground_response_still_cannot_be_cancelled_or_streamed_again(client):
    response = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(response.id)
    with pytest.raises(openai.BadRequestError):
        with client.responses.retrieve(response.id, stream=True) as stream:
            list(stream)


def test_a_response_left_in_progress_by_a_killed_gateway_ends_failed(tmp_path, smollm2_path):
    cache = {"NEXA_CACHE_ROOT": str(tmp_path / "cache")}
    first = Server(["-c", str(manifest(tmp_path, smollm2_path))], tmp_path, env=cache)
    try:
        sdk = openai.OpenAI(base_url=first.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        created = sdk.responses.create(model="smollm2", input=LONG, max_output_tokens=1500, temperature=0,
                                       background=True)
        wait(sdk, created.id, until=("in_progress",), timeout=120)
    finally:
        first.proc.send_signal(signal.SIGKILL)  # no shutdown: the job's record is left in progress
        first.stop()
    second = Server(["-c", str(manifest(tmp_path, smollm2_path))], tmp_path, env=cache)
    try:
        sdk = openai.OpenAI(base_url=second.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        response = sdk.responses.retrieve(created.id)
        assert response.status == "failed"
        assert response.error.code == "server_error" and "stopped before it finished" in response.error.message
        assert sdk.responses.cancel(created.id).status == "failed"  # finished: answered unchanged
    finally:
        second.stop()


def test_sigterm_ends_a_running_background_response_in_the_store(tmp_path, smollm2_path):
    cache = {"NEXA_CACHE_ROOT": str(tmp_path / "cache")}
    # a 4 s grace: 2 s for the job to finish, far too little for 1500 tokens, then it is stopped
    first = Server(["-c", str(manifest(tmp_path, smollm2_path, shutdown_grace_s=4))], tmp_path, env=cache)
    try:
        sdk = openai.OpenAI(base_url=first.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        created = sdk.responses.create(model="smollm2", input=LONG, max_output_tokens=1500, temperature=0,
                                       background=True)
        wait(sdk, created.id, until=("in_progress",), timeout=120)
    finally:
        assert first.stop(timeout=60) == 0
    assert "background response(s)" in first.log()
    second = Server(["-c", str(manifest(tmp_path, smollm2_path))], tmp_path, env=cache)
    try:
        sdk = openai.OpenAI(base_url=second.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        response = sdk.responses.retrieve(created.id)
        assert response.status == "failed" and "shut down" in response.error.message
    finally:
        second.stop()


def test_two_gateways_on_one_redis_cancel_and_stream_each_others_jobs(start_server, tmp_path, smollm2_path,
                                                                      redis_server):
    redis_server.flush()
    env = {"NEXA_STATE": redis_server.url}
    a_server, b_server = (start_server(["-c", str(manifest(tmp_path, smollm2_path))], env=env) for _ in range(2))
    a, b = (openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=120) for s in (a_server, b_server))
    # a job gateway A runs, streamed from B (which replays it once A has finished it)
    short = a.responses.create(model="smollm2", input="Name three colours.", max_output_tokens=24, temperature=0,
                               background=True)
    with b.responses.retrieve(short.id, stream=True, starting_after=2) as stream:
        rest = [event for event in stream]
    assert [e.sequence_number for e in rest] == list(range(3, 3 + len(rest)))
    assert rest[-1].type in ("response.completed", "response.incomplete")
    assert rest[-1].response.output_text == a.responses.retrieve(short.id).output_text
    # a job gateway A runs, cancelled through B: A stops decoding at its next lease renewal
    long = a.responses.create(model="smollm2", input=LONG, max_output_tokens=1500, temperature=0, background=True,
                              extra_headers={"x-request-id": "bg-cancel-redis"})
    wait(b, long.id, until=("in_progress",), timeout=120)
    assert b.responses.retrieve(long.id).status == "in_progress"  # A is alive: not settled as failed
    assert b.responses.cancel(long.id).status == "cancelled"
    deadline = time.monotonic() + 20
    ended: list[dict] = []
    while time.monotonic() < deadline and not ended:
        ended = [e for e in log_events(a_server, "bg-cancel-redis") if e.get("event") == "generation"]
        time.sleep(0.2)
    assert [e["finish_reason"] for e in ended] == ["abandoned"]
    assert 0 < ended[0]["streamed_deltas"] < 1500
    assert a.responses.retrieve(long.id).status == "cancelled"


def test_an_error_the_engine_finds_ends_the_response_failed(client):
    """What only the engine can find (a prompt longer than nctx) is no 400 once the answer was `queued`:
    the response ends `failed` with the error a foreground call would have answered."""
    long_input = "word " * 3000
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input=long_input, max_output_tokens=8)
    code = info.value.response.json()["error"]["code"]
    created = client.responses.create(model="smollm2", input=long_input, max_output_tokens=8, background=True)
    done = wait(client, created.id)
    assert done.status == "failed" and done.error.code == code and done.error.message


def test_deleting_a_running_background_response_stops_it(client, server):
    created = client.responses.create(model="smollm2", input=LONG, max_output_tokens=1500, temperature=0,
                                      background=True, extra_headers={"x-request-id": "bg-delete-1"})
    wait(client, created.id, until=("in_progress",), timeout=120)
    time.sleep(0.5)
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    deadline = time.monotonic() + 10
    ended: list[dict] = []
    while time.monotonic() < deadline and not ended:
        ended = [e for e in log_events(server, "bg-delete-1") if e.get("event") == "generation"]
        time.sleep(0.2)
    assert [e["finish_reason"] for e in ended] == ["abandoned"]
    time.sleep(1)
    with pytest.raises(openai.NotFoundError):  # its end wrote nothing back
        client.responses.retrieve(created.id)
