"""Stateful agent APIs end to end (issue 20): item references, conversations, truncation,
metadata limits, key isolation, and the state store behind them on its three backends,
with the official `openai` SDK against real gateways on loopback (SmolLM2). A real
redis-server backs the shared-store tests (tests/redis_server.py). Assertions are about
behaviour and shapes, never which words the model says."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import httpx
import openai
import pytest
from pydantic import Field

from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

KEY, OTHER_KEY = "sk-state-one", "sk-state-two"
SHORT = {"max_output_tokens": 8, "extra_body": {"seed": 1}}


def smollm2(path, nctx: int = 2048) -> dict:
    """SmolLM2 from its file (no hub lookup), so a gateway may have its own cache root."""
    return {"name": "smollm2", "source": str(path), "nctx": nctx, "preload": True}


def client_of(server: Server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path):
    """One gateway with the default store (SQLite under its own cache root) and two keys."""
    tmp = tmp_path_factory.mktemp("state")
    manifest = write_manifest(tmp / "nexa.yaml", [smollm2(smollm2_path, nctx=1024)],
                              server={"api_keys": [KEY, OTHER_KEY]})
    server = Server(["-c", str(manifest)], tmp, env={"NEXA_CACHE_ROOT": str(tmp / "cache")})
    server.cache = tmp / "cache"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return client_of(server)


@pytest.fixture(scope="module")
def other(server) -> openai.OpenAI:
    return client_of(server, OTHER_KEY)


def error_of(info) -> dict:
    return info.value.response.json()["error"]


# -- item_reference ----------------------------------------------------------------------------


def test_a_vercel_style_multi_turn_exchange_with_item_references(client):
    """The Vercel AI SDK's OpenAI provider (store: true) sends earlier output items back as
    `item_reference`s, with the whole conversation as `input` and no previous_response_id."""
    first_input = [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}]
    first = client.responses.create(model="smollm2", input=first_input, **SHORT)
    reference = {"type": "item_reference", "id": first.output[0].id}
    second = client.responses.create(model="smollm2", **SHORT, input=[
        *first_input, reference, {"role": "user", "content": [{"type": "input_text", "text": "And another?"}]}])
    assert second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens  # the referenced answer was in the prompt
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [item.type for item in items] == ["message"] * 3
    assert items[1].id == first.output[0].id and items[1].role == "assistant"
    assert items[1].content[0].text == first.output[0].content[0].text
    third = client.responses.create(model="smollm2", **SHORT, input=[
        *first_input, reference, {"type": "item_reference", "id": second.output[0].id},
        {"role": "user", "content": "Thanks."}])
    assert third.usage.input_tokens > second.usage.input_tokens


def test_an_unknown_item_reference_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input=[{"role": "user", "content": "Hi"},
                                                        {"type": "item_reference", "id": "msg_nope"}])
    error = error_of(info)
    assert "msg_nope" in error["message"] and error["param"] == "input[1]"


# -- conversations --------------------------------------------------------------------------------


def test_a_conversation_used_by_three_responses_listed_trimmed_and_deleted(client):
    conversation = client.conversations.create(
        metadata={"topic": "colours"}, items=[{"type": "message", "role": "user", "content": "Let us talk."}])
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "colours"}
    usages = []
    for question in ("Name a colour.", "Another one?", "And a third?"):
        response = client.responses.create(model="smollm2", input=question, conversation=conversation.id, **SHORT)
        assert response.conversation.id == conversation.id
        usages.append(response.usage.input_tokens)
    assert usages[0] < usages[1] < usages[2]  # each saw the ones before
    items = client.conversations.items.list(conversation.id, order="asc", limit=100).data
    assert len(items) == 7 and [item.role for item in items] == ["user"] + ["user", "assistant"] * 3
    assert items[1].content[0].text == "Name a colour."
    newest = client.conversations.items.list(conversation.id, limit=2)  # desc by default
    assert [item.id for item in newest.data] == [items[6].id, items[5].id] and newest.has_more
    page = client.conversations.items.list(conversation.id, order="asc", limit=3, after=items[2].id)
    assert [item.id for item in page.data] == [items[3].id, items[4].id, items[5].id]
    assert client.conversations.items.retrieve(items[3].id, conversation_id=conversation.id).id == items[3].id
    # trimmed: the first exchange goes; the next response sees less
    for item in items[1:3]:
        client.conversations.items.delete(item.id, conversation_id=conversation.id)
    assert len(client.conversations.items.list(conversation.id, limit=100).data) == 5
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(items[1].id, conversation_id=conversation.id)
    added = client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "One more."}]}])
    assert len(added.data) == 1 and added.data[0].id.startswith("msg_")
    updated = client.conversations.update(conversation.id, metadata={"topic": "paint"})
    assert updated.metadata == {"topic": "paint"}
    assert client.conversations.retrieve(conversation.id).metadata == {"topic": "paint"}
    deleted = client.conversations.delete(conversation.id)
    assert deleted.deleted and deleted.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="smollm2", input="Hi", conversation=conversation.id, **SHORT)
    assert error_of(info)["param"] == "conversation"


def test_truncation_auto_drops_the_oldest_items_and_disabled_refuses(client):
    paragraph = "The quick brown fox jumps over the lazy dog near the quiet river bank. " * 20  # ~300 tokens
    conversation = client.conversations.create(items=[
        {"type": "message", "role": "system", "content": "You are terse."},
        *[{"type": "message", "role": "user", "content": f"Note {n}: {paragraph}"} for n in range(4)]])
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input="Summarise.", conversation=conversation.id,
                                truncation="disabled", **SHORT)
    assert error_of(info)["code"] == "context_length_exceeded"
    response = client.responses.create(model="smollm2", input="Summarise.", conversation=conversation.id,
                                       truncation="auto", **SHORT)
    assert response.status in ("completed", "incomplete") and response.truncation == "auto"
    assert 300 < response.usage.input_tokens <= 1024 - 8
    # the conversation itself keeps every item: truncation shapes the prompt only
    assert len(client.conversations.items.list(conversation.id, limit=100).data) == 5 + 2


# -- metadata limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata, problem", [
    ({f"k{n}": "v" for n in range(17)}, "16"),
    ({"k" * 65: "v"}, "64"),
    ({"key": "v" * 513}, "512"),
])
def test_metadata_limits(client, metadata, problem):
    for call in (lambda: client.responses.create(model="smollm2", input="Hi", metadata=metadata, **SHORT),
                 lambda: client.conversations.create(metadata=metadata)):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        error = error_of(info)
        assert error["param"] == "metadata" and problem in error["message"]
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conversation.id, metadata=metadata)


def test_metadata_at_the_limits_is_kept(client):
    metadata = {f"{n:02d}" + "k" * 62: "v" * 512 for n in range(16)}
    response = client.responses.create(model="smollm2", input="Hi", metadata=metadata, **SHORT)
    assert client.responses.retrieve(response.id).metadata == metadata
    assert client.conversations.create(metadata=metadata).metadata == metadata


# -- keys see only their own objects ---------------------------------------------------------------


def test_a_second_key_gets_404_on_every_object_of_the_first(client, other, server):
    response = client.responses.create(model="smollm2", input="Hi", **SHORT)
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "Hello"}])
    item = client.conversations.items.list(conversation.id).data[0]
    attempts = [
        lambda: other.responses.retrieve(response.id),
        lambda: other.responses.input_items.list(response.id),
        lambda: other.responses.delete(response.id),
        lambda: other.responses.cancel(response.id),
        lambda: other.responses.create(model="smollm2", input="Hi", previous_response_id=response.id),
        lambda: other.responses.create(model="smollm2", input="Hi", conversation=conversation.id),
        lambda: other.conversations.retrieve(conversation.id),
        lambda: other.conversations.update(conversation.id, metadata={"a": "b"}),
        lambda: other.conversations.items.list(conversation.id),
        lambda: other.conversations.items.create(conversation.id, items=[{"role": "user", "content": "x"}]),
        lambda: other.conversations.items.retrieve(item.id, conversation_id=conversation.id),
        lambda: other.conversations.items.delete(item.id, conversation_id=conversation.id),
        lambda: other.conversations.delete(conversation.id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises(openai.BadRequestError) as info:  # a reference to another key's item: unknown
        other.responses.create(model="smollm2", input=[{"type": "item_reference", "id": response.output[0].id}])
    assert response.output[0].id in error_of(info)["message"]
    # nothing of the first key's changed
    assert client.responses.retrieve(response.id).id == response.id
    assert client.conversations.retrieve(conversation.id).metadata == {}
    assert len(client.conversations.items.list(conversation.id).data) == 1


def test_cancel_answers_like_openai_for_a_response_that_is_not_in_the_background(client):
    response = client.responses.create(model="smollm2", input="Hi", **SHORT)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.cancel(response.id)
    assert "background" in error_of(info)["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_nope")


# -- durability: the SQLite default ----------------------------------------------------------------


def test_a_restart_keeps_responses_in_the_default_sqlite_store(start_server, tmp_path, smollm2_path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [smollm2(smollm2_path)], server={"api_keys": [KEY]})
    env = {"NEXA_CACHE_ROOT": str(tmp_path / "cache")}
    first = start_server(["-c", str(manifest)], env=env)
    response = client_of(first).responses.create(model="smollm2", input="Remember the word cobalt.", **SHORT)
    conversation = client_of(first).conversations.create(metadata={"kept": "yes"})
    assert first.stop() == 0
    assert (tmp_path / "cache" / "state.db").is_file()
    second = start_server(["-c", str(manifest)], env=env)
    client = client_of(second)
    assert client.responses.retrieve(response.id).output[0].id == response.output[0].id
    follow = client.responses.create(model="smollm2", input="Which word?", previous_response_id=response.id, **SHORT)
    assert follow.usage.input_tokens > response.usage.input_tokens
    assert client.conversations.retrieve(conversation.id).metadata == {"kept": "yes"}


def test_a_corrupt_state_file_is_a_503_naming_it_and_stateless_requests_still_work(start_server, tmp_path,
                                                                                     smollm2_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database at all " * 200)
    manifest = write_manifest(tmp_path / "nexa.yaml", [smollm2(smollm2_path)],
                              server={"state": f"sqlite:///{path}"})
    server = start_server(["-c", str(manifest)])
    client = client_of(server)
    assert client.responses.create(model="smollm2", input="Hi", store=False, **SHORT).status in ("completed",
                                                                                                  "incomplete")
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="smollm2", input="Hi", **SHORT)
    assert info.value.status_code == 503 and str(path) in error_of(info)["message"]
    assert error_of(info)["code"] == "state_unavailable"
    assert path.read_bytes() == b"not a database at all " * 200
    assert str(path) in server.log()


# -- a shared Redis: two gateways, and outages ------------------------------------------------------


def test_concurrent_item_additions_to_one_conversation_are_all_kept(client, server):
    conversation = client.conversations.create()

    async def add_all() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {KEY}"},
                                     timeout=60) as http:
            answers = await asyncio.gather(*[
                http.post(f"/v1/conversations/{conversation.id}/items",
                          json={"items": [{"type": "message", "role": "user", "content": f"note {n}"}]})
                for n in range(12)])
        assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]

    asyncio.run(add_all())
    items = client.conversations.items.list(conversation.id, limit=100).data
    assert sorted(item.content[0].text for item in items) == sorted(f"note {n}" for n in range(12))


def test_two_gateways_on_one_redis_continue_each_others_responses_and_conversations(start_server, tmp_path,
                                                                                   smollm2_path, redis_server):
    redis_server.flush()
    manifest = write_manifest(tmp_path / "nexa.yaml", [smollm2(smollm2_path)], server={"api_keys": [KEY]})
    env = {"NEXA_STATE": redis_server.url}
    a, b = (client_of(start_server(["-c", str(manifest)], env=env)) for _ in range(2))
    first = a.responses.create(model="smollm2", input="Name a colour.", **SHORT)
    second = b.responses.create(model="smollm2", input="Another?", previous_response_id=first.id, **SHORT)
    assert second.usage.input_tokens > first.usage.input_tokens
    assert a.responses.retrieve(second.id).previous_response_id == first.id
    conversation = b.conversations.create()
    a.responses.create(model="smollm2", input="Hello.", conversation=conversation.id, **SHORT)
    b.responses.create(model="smollm2", input="Again.", conversation=conversation.id, **SHORT)
    assert len(a.conversations.items.list(conversation.id).data) == 4
    third = b.responses.create(model="smollm2", input=[{"type": "item_reference", "id": first.output[0].id},
                                                       {"role": "user", "content": "More."}], **SHORT)
    assert third.status in ("completed", "incomplete")


def test_redis_killed_mid_run_gives_503s_and_recovers(start_server, tmp_path, smollm2_path, redis_server):
    redis_server.flush()
    manifest = write_manifest(tmp_path / "nexa.yaml", [smollm2(smollm2_path)],
                              server={"api_keys": [KEY], "state": redis_server.url})
    server = start_server(["-c", str(manifest)])
    client = client_of(server)
    assert client.responses.create(model="smollm2", input="Hi", **SHORT).status in ("completed", "incomplete")
    redis_server.stop()
    try:
        started = time.monotonic()
        for call in (lambda: client.responses.create(model="smollm2", input="Hi", **SHORT),
                     lambda: client.conversations.create(),
                     lambda: client.responses.retrieve("resp_any")):
            with pytest.raises(openai.InternalServerError) as info:
                call()
            assert info.value.status_code == 503 and error_of(info)["code"] == "state_unavailable"
            assert "nexa-test-redis-password" not in info.value.response.text
        assert time.monotonic() - started < 60
        stateless = client.responses.create(model="smollm2", input="Hi", store=False, **SHORT)
        assert stateless.status in ("completed", "incomplete")
        chat = httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                          json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                          timeout=120)
        assert chat.status_code == 200
    finally:
        redis_server.start()
    response = client.responses.create(model="smollm2", input="Hi", **SHORT)
    assert client.responses.retrieve(response.id).id == response.id
    assert "nexa-test-redis-password" not in server.log()


def test_an_unreachable_store_at_start_still_serves_stateless_requests(start_server, tmp_path, smollm2_path,
                                                                       closed_port):
    manifest = write_manifest(tmp_path / "nexa.yaml", [smollm2(smollm2_path)],
                              server={"state": f"redis://:secret-in-url@127.0.0.1:{closed_port}/0"})
    server = start_server(["-c", str(manifest)])
    client = client_of(server)
    assert client.responses.create(model="smollm2", input="Hi", store=False, **SHORT).status in ("completed",
                                                                                                  "incomplete")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="smollm2", input="Hi", **SHORT)
    assert time.monotonic() - started < 30 and info.value.status_code == 503
    assert "secret-in-url" not in info.value.response.text and "secret-in-url" not in server.log()
    manifest_shown = httpx.get(server.url + "/admin/manifest", timeout=10).text
    assert "secret-in-url" not in manifest_shown


# -- Anthropic message threads ---------------------------------------------------------------------


def test_anthropic_threads_are_refused_so_the_sdks_tool_runner_resends_the_history(server):
    """This gateway keeps no Anthropic threads: it answers them as Anthropic does where threads are
    unavailable, and the SDK's tool runner (which threads by default) then sends the whole history."""
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=180)
    hello = [{"role": "user", "content": "Hi"}]
    for extra in ({"thread": {"type": "create"}},
                  {"thread": {"type": "continue", "previous_message_id": "msg_1"}},
                  {"previous_message_id": "msg_1"}):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model="smollm2", max_tokens=8, messages=hello, extra_body=extra)
        error = info.value.body["error"]
        assert error["type"] == "invalid_request_error"
        assert error["details"]["error_code"] == "thread_unsupported_request"
    counted = client.messages.count_tokens(model="smollm2", messages=hello, extra_body={"thread": {"type": "create"}})
    assert counted.input_tokens > 0  # nothing to resend for a count: never refused
    calls: list[str] = []

    @anthropic.beta_tool
    def get_weather(city: Annotated[str, Field(max_length=24)]) -> str:  # bounded: the call fits max_tokens
        """Current weather for a city.

        Args:
            city: the city
        """
        calls.append(city)
        return f"It is 21 degrees in {city}."

    runner = client.beta.messages.tool_runner(
        model="smollm2", max_tokens=60, tools=[get_weather], max_iterations=2,
        tool_choice={"type": "any"}, messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
    replies = list(runner)
    assert len(replies) == 2 and calls  # the tool ran, and its result went back in a second turn
    assert all(block.type == "tool_use" for block in replies[0].content)


@pytest.mark.parametrize("field, value", [("mcp_servers", [{"type": "url", "url": "http://127.0.0.1:1", "name": "x"}]),
                                          ("container", "container_1")])
def test_anthropic_fields_that_would_change_the_answer_are_refused(server, field, value):
    reply = httpx.post(server.url + "/v1/messages", headers={"x-api-key": KEY}, timeout=60, json={
        "model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}], field: value})
    assert reply.status_code == 400 and field in reply.json()["error"]["message"]


def test_responses_fields_that_would_change_the_answer_are_refused(client):
    for extra, name in (({"prompt": {"id": "pmpt_1"}}, "prompt"), ({"top_logprobs": 2}, "top_logprobs"),
                        ({"include": ["message.output_text.logprobs"]}, "include")):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="smollm2", input="Hi", extra_body=extra)
        assert name in error_of(info)["message"]
    ignored = client.responses.create(model="smollm2", input="Hi", max_output_tokens=4, extra_body={
        "prompt_cache_key": "k", "safety_identifier": "u", "service_tier": "auto",
        "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low"}})
    assert ignored.status in ("completed", "incomplete")


# -- the OpenAI Agents SDK's conversation session ------------------------------------------------------


def test_an_agents_sdk_conversation_session_keeps_the_history_at_the_gateway(server, client):
    import asyncio

    import agents
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    async_client = AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=180)
    agent = agents.Agent(name="terse", instructions="Answer in one word.",
                         model=agents.OpenAIResponsesModel(model="smollm2", openai_client=async_client),
                         # greedy, with room to finish: openai-agents >= 0.24 raises on an `incomplete` response,
                         # and a sampled SmolLM2 answer sometimes ran past 200 tokens
                         model_settings=agents.ModelSettings(max_tokens=400, temperature=0))

    async def main() -> None:
        session = agents.OpenAIConversationsSession(openai_client=async_client)
        first = await agents.Runner.run(agent, "Name a colour.", session=session)
        second = await agents.Runner.run(agent, "Name another colour.", session=session)
        assert first.raw_responses[0].usage.input_tokens < second.raw_responses[0].usage.input_tokens
        items = await session.get_items()
        assert [item["role"] for item in items] == ["user", "assistant", "user", "assistant"]
        conversation_id = await session._get_session_id()
        assert len(client.conversations.items.list(conversation_id).data) == 4  # held by the gateway
        popped = await session.pop_item()
        assert popped["role"] == "assistant" and len(await session.get_items()) == 3
        await session.clear_session()
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conversation_id)

    asyncio.run(main())
