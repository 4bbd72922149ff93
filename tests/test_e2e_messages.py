"""End to end: the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`) of a real
`nexa server` with SmolLM2, spoken to with the official `anthropic` SDK and httpx.

The route only translates: the same request through `/v1/chat/completions` must give the same
greedy text and the same prompt token count, which is how these tests check that it reaches the
engine intact without asserting what the model says."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Iterator

import anthropic
import httpx
import jsonschema
import openai
import pytest

from backends.base import Delta, Usage
from backends.errors import BackendError
from gateway.api.anthropic.messages import _events, to_chat
from gateway.api.table import ERROR_STYLES
from schemas.anthropic import MessagesRequest
from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY = "anthropic-test-key-0001"
LIMITED = "limited-to-busy-0001"  # may use the model "busy" only
ALIAS = "claude-sonnet-4-6"  # what an unmodified client asks for; the manifest makes it SmolLM2
BODY_LIMIT = 200_000

WEATHER = {"name": "get_weather", "description": "Current weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                             "unit": {"enum": ["celsius", "fahrenheit"]}},
                            "required": ["city"]}}
TIME = {"name": "get_time", "description": "The local time in a timezone.",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 24}}, "required": ["tz"]}}
HELLO = [{"role": "user", "content": "Say hello to Ada in one short sentence."}]


def prompt_of(usage) -> int:
    """The whole prompt, as Anthropic splits it: evaluated input tokens plus those read from the cache."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path, closed_port: int) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("messages")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "aliases": [ALIAS, "claude-haiku-4-5"], "source": str(smollm2_path), "nctx": 2048,
         "preload": True},
        {"name": "busy", "source": str(smollm2_path), "nctx": 512, "max_queue": 0, "preload": True},
        {"name": "nowhere", "format": "remote", "base_url": f"http://127.0.0.1:{closed_port}/v1"},
    ], server={"api_keys": [{"key": KEY}, {"key": LIMITED, "models": ["busy"]}], "max_body_bytes": BODY_LIMIT})
    started = Server(["-c", str(manifest)], tmp)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


# Greedy decoding, so two calls can be compared. Today's SDK has no `temperature` argument any more
# (older ones and raw clients send it): it goes in the body as it always did.
GREEDY = {"temperature": 0}


def create(client: anthropic.Anthropic, max_tokens: int = 12, **kwargs):
    kwargs.setdefault("messages", HELLO)
    return client.messages.create(model=ALIAS, max_tokens=max_tokens, extra_body=GREEDY, **kwargs)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) pairs of an Anthropic event stream."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


# -- answers ----------------------------------------------------------------------------


def test_create_is_an_anthropic_message_from_the_same_engine_path_as_chat(client, server):
    system = "You are terse."
    answer = client.messages.create(model=ALIAS, max_tokens=12, messages=HELLO, system=system,
                                    metadata={"user_id": "u-1"}, thinking={"type": "enabled", "budget_tokens": 1024},
                                    extra_body={**GREEDY, "top_k": 40, "top_p": 1.0},
                                    extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    assert answer.type == "message" and answer.role == "assistant" and answer.model == "smollm2"
    assert answer.id.startswith("msg_")
    assert [block.type for block in answer.content] == ["text"] and answer.content[0].text
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.stop_sequence is None
    assert 0 < answer.usage.output_tokens <= 12 and answer.usage.input_tokens > 0

    chat = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
        model="smollm2", max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": system}, *HELLO])
    assert chat.choices[0].message.content == answer.content[0].text
    # Anthropic counts the prompt as input_tokens (evaluated) plus cache_read_input_tokens
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (prompt_of(answer.usage),
                                                                        answer.usage.output_tokens)


def test_the_beta_route_claude_code_calls_answers_too(client):
    # Claude Code calls /v1/messages?beta=true through the SDK's beta namespace.
    answer = client.beta.messages.create(model=ALIAS, max_tokens=4, messages=HELLO, extra_body=GREEDY)
    assert answer.type == "message" and answer.content[0].type == "text"


def test_max_tokens_is_stop_reason_max_tokens(client):
    answer = create(client, max_tokens=3, messages=[{"role": "user", "content": "Count from one to fifty."}])
    assert answer.stop_reason == "max_tokens" and answer.usage.output_tokens == 3


def test_a_stop_sequence_is_reported_with_the_sequence(client):
    full = create(client, max_tokens=24).content[0].text
    cut = next(i for i in range(4, len(full) - 3) if full[i:i + 3].strip() == full[i:i + 3])
    sequence = full[cut:cut + 3]
    expected = full[:full.find(sequence)]
    answer = create(client, max_tokens=24, stop_sequences=["@@never@@", sequence])
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", sequence)
    assert answer.content[0].text == expected
    with client.messages.stream(model=ALIAS, max_tokens=24, extra_body=GREEDY, messages=HELLO,
                                stop_sequences=[sequence]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence, final.content[0].text) == ("stop_sequence", sequence, expected)


# -- streaming --------------------------------------------------------------------------


def test_stream_text_is_the_deltas_and_the_final_message_matches_create(client):
    whole = create(client)
    with client.messages.stream(model=ALIAS, max_tokens=12, extra_body=GREEDY, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == final.content[0].text == whole.content[0].text
    assert len(pieces) > 1
    assert final.stop_reason == whole.stop_reason and final.id.startswith("msg_")
    assert (prompt_of(final.usage), final.usage.output_tokens) == (prompt_of(whole.usage),
                                                                   whole.usage.output_tokens)


def test_the_raw_event_stream_is_in_anthropic_order(server):
    with httpx.stream("POST", server.url + "/v1/messages", timeout=120, headers={
            "x-api-key": KEY, "anthropic-version": "2023-06-01"}, json={
            "model": ALIAS, "max_tokens": 5, "stream": True, "messages": HELLO}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    names = [name for name, _ in events]
    assert all(data["type"] == name for name, data in events)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5 and delta["usage"]["input_tokens"] > 0


# -- tools ------------------------------------------------------------------------------


def test_a_named_tool_is_called_with_schema_valid_input(client):
    answer = create(client, max_tokens=128, tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_weather"},
                    messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    assert answer.stop_reason == "tool_use"
    uses = [block for block in answer.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])


def test_a_property_with_only_a_description_takes_any_value(client):
    """Claude Code's tools have such properties (`{"description": ...}`: any JSON value in JSON Schema);
    the grammar converter used to refuse them, so every call with its tool set was a 400."""
    run = {"name": "run_script", "description": "Run a script.", "input_schema": {
        "type": "object", "properties": {"script": {"type": "string", "maxLength": 24},
                                         "args": {"description": "Any JSON value, passed to the script."}},
        "required": ["script", "args"]}}
    answer = create(client, max_tokens=128, tools=[run], tool_choice={"type": "tool", "name": "run_script"},
                    messages=[{"role": "user", "content": "Run hello.py with the numbers 1 and 2."}])
    (use,) = [block for block in answer.content if block.type == "tool_use"]
    assert answer.stop_reason == "tool_use" and isinstance(use.input["script"], str) and "args" in use.input


def test_any_picks_one_of_the_tools_and_streams_input_json(client):
    kwargs = dict(model=ALIAS, max_tokens=128, extra_body=GREEDY, tools=[WEATHER, TIME],
                  tool_choice={"type": "any", "disable_parallel_tool_use": True},
                  messages=[{"role": "user", "content": "What time is it in Tokyo?"}])
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    for answer in (whole, final):
        assert answer.stop_reason == "tool_use"
        (use,) = [block for block in answer.content if block.type == "tool_use"]
        schema = {"get_weather": WEATHER, "get_time": TIME}[use.name]["input_schema"]
        jsonschema.validate(use.input, schema)
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == \
           [(b.name, b.input) for b in whole.content if b.type == "tool_use"]


def test_a_tool_use_tool_result_round_trip(client):
    question = {"role": "user", "content": "What's the weather in Paris?"}
    call = create(client, max_tokens=128, tools=[WEATHER], tool_choice={"type": "any"}, messages=[question])
    (use,) = [block for block in call.content if block.type == "tool_use"]
    history = [question, {"role": "assistant", "content": [block.model_dump() for block in call.content]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "Sunny, 21 C"}]},
                   {"type": "text", "text": "Answer in one sentence."}]}]
    answer = create(client, max_tokens=16, tools=[WEATHER], tool_choice={"type": "none"}, messages=history)
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in answer.content] == ["text"] and answer.content[0].text
    # The tool's result is in the prompt: an error result (is_error) is a different, longer prompt.
    failed = [*history[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C", "is_error": True},
        {"type": "text", "text": "Answer in one sentence."}]}]
    counted = client.messages.count_tokens(model=ALIAS, tools=[WEATHER], tool_choice={"type": "none"}, messages=failed)
    assert counted.input_tokens > prompt_of(answer.usage)


# -- count_tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    {},
    {"system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}]},
    {"tools": [WEATHER, TIME]},
    {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}},
], ids=["plain", "system-blocks", "tools-auto", "tool-named"])
def test_count_tokens_is_the_input_tokens_of_the_same_call(client, extra):
    messages = [*HELLO, {"role": "assistant", "content": "Hello Ada!"},
                {"role": "user", "content": [{"type": "text", "text": "Again,"}, {"type": "text", "text": "louder."}]}]
    counted = client.messages.count_tokens(model=ALIAS, messages=messages, **extra)
    budget = 64 if "tool_choice" in extra else 1  # a forced call needs room for its arguments
    used = prompt_of(client.messages.create(model=ALIAS, max_tokens=budget, messages=messages, **extra).usage)
    assert counted.input_tokens == used > 0


def test_a_mid_conversation_system_message_joins_the_system_prompt(client):
    """Claude Code sends `system` messages inside `messages`; they count (and prompt) as part of the system."""
    inline = client.messages.count_tokens(model=ALIAS, system="Be brief.", messages=[
        *HELLO, {"role": "system", "content": "Agents: none."}])
    joined = client.messages.count_tokens(model=ALIAS, system="Be brief.\n\nAgents: none.", messages=HELLO)
    alone = client.messages.count_tokens(model=ALIAS, system="Be brief.", messages=HELLO)
    assert inline.input_tokens == joined.input_tokens > alone.input_tokens
    assert create(client, max_tokens=2, messages=[*HELLO, {"role": "system", "content": "Agents: none."}]).type == \
        "message"


# -- errors -----------------------------------------------------------------------------


def error_of(caught: pytest.ExceptionInfo) -> dict:
    body = caught.value.body
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"} and body["error"]["message"]
    return body["error"]


def test_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, max_tokens=100_000)  # over the model's max_tokens_limit
    assert error_of(caught)["type"] == "invalid_request_error"


def test_authentication(server):
    for key in ("wrong-key-0000000",):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            create(anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0))
        assert error_of(caught)["type"] == "authentication_error"
    missing = httpx.post(server.url + "/v1/messages", json={"model": ALIAS, "max_tokens": 1, "messages": HELLO})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    # ANTHROPIC_AUTH_TOKEN sends the key as a bearer token: accepted like x-api-key.
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=KEY, api_key=None, max_retries=0)
    assert create(bearer, max_tokens=1).type == "message"


def test_permission(server):
    limited = anthropic.Anthropic(base_url=server.url, api_key=LIMITED, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        create(limited)
    assert error_of(caught)["type"] == "permission_error"
    assert limited.messages.create(model="busy", max_tokens=1, messages=HELLO).type == "message"


def test_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-opus-9", max_tokens=4, messages=HELLO)
    assert error_of(caught)["type"] == "not_found_error" and "claude-opus-9" in error_of(caught)["message"]


def test_rate_limit(server, client):
    """`busy` admits one request at a time (max_queue 0): while a long stream runs, the next is a 429."""
    opened, release = threading.Event(), threading.Event()

    def long_stream() -> None:
        with httpx.stream("POST", server.url + "/v1/messages", timeout=120, headers={"x-api-key": KEY}, json={
                "model": "busy", "max_tokens": 400, "stream": True, "messages": HELLO}) as response:
            for _ in response.iter_lines():
                opened.set()
                if release.is_set():
                    break

    worker = threading.Thread(target=long_stream, daemon=True)
    worker.start()
    try:
        assert opened.wait(60)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model="busy", max_tokens=2, messages=HELLO)
        assert error_of(caught)["type"] == "rate_limit_error"
        assert caught.value.response.headers.get("retry-after")
    finally:
        release.set()
        worker.join(60)


def test_api_error_for_an_unreachable_upstream(client):
    for stream in (False, True):
        with pytest.raises(anthropic.InternalServerError) as caught:
            client.messages.create(model="nowhere", max_tokens=2, messages=HELLO, stream=stream)
        assert caught.value.status_code == 502 and error_of(caught)["type"] == "api_error"


def test_errors_before_the_handler_use_the_anthropic_envelope(server):
    headers = {"x-api-key": KEY}
    big = httpx.post(server.url + "/v1/messages", headers=headers, timeout=30, content=b"x" * (BODY_LIMIT + 1))
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"
    wrong_method = httpx.get(server.url + "/v1/messages", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
    # The OpenAI routes keep the OpenAI envelope.
    chat = httpx.post(server.url + "/v1/chat/completions", json={"model": "x", "messages": HELLO})
    assert chat.status_code == 401 and chat.json()["error"]["code"] == "missing_api_key"


BAD_BODIES = {
    "not-json": b"{",
    "no-max-tokens": {"model": ALIAS, "messages": HELLO},
    "zero-max-tokens": {"model": ALIAS, "max_tokens": 0, "messages": HELLO},
    "no-messages": {"model": ALIAS, "max_tokens": 4, "messages": []},
    "developer-role": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "developer", "content": "hi"}]},
    "system-message-image": {"model": ALIAS, "max_tokens": 4, "messages": [*HELLO, {"role": "system", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
    "content-number": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": 7}]},
    "unknown-block": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "video", "url": "x"}]}]},
    "document-block": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
    "text-without-text": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text"}]}]},
    "image-file-source": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
    "image-to-text-model": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
    "tool-use-from-user": {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}]},
    "tool-result-from-assistant": {"model": ALIAS, "max_tokens": 4, "messages": [*HELLO, {
        "role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]},
    "tool-use-input-not-object": {"model": ALIAS, "max_tokens": 4, "messages": [*HELLO, {
        "role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": "x"}]}]},
    "tool-without-schema": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "tools": [{"name": "f"}]},
    "tool-schema-not-object": {"model": ALIAS, "max_tokens": 4, "messages": HELLO,
                               "tools": [{"name": "f", "input_schema": {"type": "string"}}]},
    "tool-bad-name": {"model": ALIAS, "max_tokens": 4, "messages": HELLO,
                      "tools": [{"name": "f g", "input_schema": {"type": "object"}}]},
    "hosted-tool": {"model": ALIAS, "max_tokens": 4, "messages": HELLO,
                    "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    "tools-not-a-list": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "tools": {"name": "f"}},
    "tool-choice-tool-without-name": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "tools": [WEATHER],
                                      "tool_choice": {"type": "tool"}},
    "tool-choice-unknown-tool": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "tools": [WEATHER],
                                 "tool_choice": {"type": "tool", "name": "nope"}},
    "tool-choice-any-without-tools": {"model": ALIAS, "max_tokens": 4, "messages": HELLO,
                                      "tool_choice": {"type": "any"}},
    "tool-choice-bad-type": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "tools": [WEATHER],
                             "tool_choice": {"type": "required"}},
    "temperature-too-high": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "temperature": 1.5},
    "stop-sequences-string": {"model": ALIAS, "max_tokens": 4, "messages": HELLO, "stop_sequences": "x"},
    "image-in-tool-result": {"model": ALIAS, "max_tokens": 4, "messages": [*HELLO, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}]},
}


SAMPLING_ONLY = ("no-max-tokens", "zero-max-tokens", "temperature-too-high", "stop-sequences-string")


@pytest.mark.parametrize("path, name", [("/v1/messages", name) for name in BAD_BODIES] + [
    ("/v1/messages/count_tokens", name) for name in BAD_BODIES if name not in SAMPLING_ONLY])  # it takes no sampling
def test_bad_input_is_a_400_in_the_anthropic_envelope(server, name, path):
    body = BAD_BODIES[name]
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    answer = httpx.post(server.url + path, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                        timeout=60, **kwargs)
    assert answer.status_code == 400, answer.text
    data = answer.json()
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error", data
    assert data["error"]["message"] and "Traceback" not in data["error"]["message"]


# -- in-process: translation and the stream's error event ---------------------------------


def test_every_messages_route_has_the_anthropic_error_style():
    anthropic = {path for path, style in ERROR_STYLES.items() if style == "anthropic"}
    assert anthropic == {"/v1/messages", "/v1/messages/count_tokens"}


def test_translation_to_the_shared_chat_request():
    body = MessagesRequest.model_validate({
        "model": ALIAS, "max_tokens": 9, "stop_sequences": ["END"], "temperature": 0.5, "top_k": 3,
        "system": [{"type": "text", "text": "A."}, {"type": "text", "text": "B."}],
        "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "system", "content": [{"type": "text", "text": "C."}]},  # mid-conversation (Claude Code)
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True},
                {"type": "text", "text": "And"}, {"type": "text", "text": "now?"}]}]})
    chat = to_chat(body)
    assert (chat.model, chat.max_tokens, chat.stop, chat.temperature, chat.top_k) == (ALIAS, 9, ["END"], 0.5, 3)
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert chat.parallel_tool_calls is False
    assert chat.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}}]
    roles = [(m.role, m.content, m.tool_call_id) for m in chat.messages]
    assert roles == [("system", "A.\n\nB.\n\nC.", None), ("user", "Weather?", None), ("assistant", "Checking.", None),
                     ("tool", "Error: boom", "toolu_1"), ("user", "And\nnow?", None)]
    assert chat.messages[2].tool_calls == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    image = to_chat(MessagesRequest.model_validate({"max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}))
    parts = [p.model_dump(exclude_none=True) for p in image.messages[0].content]
    assert parts == [{"type": "text", "text": "What?"},
                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event():
    async def failing():
        yield Delta(text="Hel")
        raise BackendError("the model produced an incomplete tool call")

    async def collect() -> list[bytes]:
        return [chunk async for chunk in _events("msg_1", "m", [], Delta(text="x"), failing())]

    raw = b"".join(asyncio.run(collect())).decode()
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in raw.strip().split("\n\n")]
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                            "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "invalid_request_error",
                                                        "message": "the model produced an incomplete tool call"}}


def test_a_one_delta_answer_reports_its_usage_in_message_start():
    async def nothing():
        return
        yield  # pragma: no cover

    async def collect() -> list[bytes]:
        final = Delta(finish_reason="stop", usage=Usage(7, 0))
        return [chunk async for chunk in _events("msg_1", "m", [], final, nothing())]

    raw = b"".join(asyncio.run(collect())).decode()
    start = json.loads(raw.split("\n")[1].removeprefix("data: "))
    assert start["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0, "cache_creation_input_tokens": 0,
                                         "cache_read_input_tokens": 0}
    assert raw.rstrip().endswith('data: {"type":"message_stop"}')


# -- vision -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision(tmp_path_factory) -> Iterator[anthropic.Anthropic]:
    """A gateway with the synthetic vision-language pair of tests/synth/vlm.py (real libmtmd path)."""
    from tests.synth.vlm import vlm_pair

    tmp = tmp_path_factory.mktemp("messages-vision")
    model, mmproj = vlm_pair()
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "vlm", "source": str(model), "type": "MULTIMODAL", "mmproj": str(mmproj), "nctx": 512,
         "preload": True}])
    started = Server(["-c", str(manifest)], tmp)
    yield anthropic.Anthropic(base_url=started.url, api_key="unused", max_retries=0, timeout=120)
    started.stop()


def look(*images: bytes) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, *(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(image).decode()}} for image in images)]}]


def test_an_image_block_reaches_the_vision_model(vision):
    from tests.synth.vlm import TOKENS_PER_IMAGE, png

    def ask(*images: bytes, max_tokens: int = 1):
        return vision.messages.create(model="vlm", max_tokens=max_tokens, extra_body=GREEDY, messages=look(*images))

    black, white = png("black"), png("white")
    none, one, two = (ask(*images).usage.input_tokens for images in ((), (black,), (black, black)))
    assert (one - none, two - one) == (TOKENS_PER_IMAGE, TOKENS_PER_IMAGE)
    assert vision.messages.count_tokens(model="vlm", messages=look(black, black)).input_tokens == two
    assert ask(black, max_tokens=8).content[0].text != ask(white, max_tokens=8).content[0].text


def test_an_image_url_outside_the_allowed_hosts_is_a_400(vision):
    with pytest.raises(anthropic.BadRequestError) as caught:
        vision.messages.create(model="vlm", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What?"},
            {"type": "image", "source": {"type": "url", "url": "http://203.0.113.9/cat.png"}}]}])
    assert error_of(caught)["type"] == "invalid_request_error"


def test_output_config_format_is_schema_valid_json(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    answer = client.messages.create(model=ALIAS, max_tokens=160, extra_body=GREEDY, messages=[
        {"role": "user", "content": "Invent a person; answer as JSON."}],
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}})
    assert answer.stop_reason == "end_turn"
    jsonschema.validate(json.loads(answer.content[0].text), schema)
