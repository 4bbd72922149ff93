"""The OpenAI Responses API end to end: the official `openai` SDK (and the OpenAI Agents SDK)
against a real gateway on loopback with SmolLM2. Assertions are about behaviour and shapes
(never which words the model says)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KEY, OTHER_KEY = "sk-responses-one", "sk-responses-two"
WEATHER = {
    "type": "function", "name": "get_weather", "description": "Current weather for one city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False},
    "strict": True,
}
QUESTION = "What is the weather in Oslo, in celsius?"


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("responses")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "aliases": ["gpt-5-codex"], "source": "smollm2", "nctx": 2048, "preload": True},
    ], server={"api_keys": [KEY, OTHER_KEY]})
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def other(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=60)


def assert_usage(response) -> None:
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens >= 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def question_alone(client) -> int:
    """Prompt tokens of QUESTION with tool_choice "none" (no tool descriptions): the baseline a
    follow-up turn with the call and its result must exceed."""
    return client.responses.create(model="smollm2", input=QUESTION, tools=[WEATHER], tool_choice="none",
                                   max_output_tokens=1).usage.input_tokens


def function_calls(response) -> list:
    return [item for item in response.output if item.type == "function_call"]


# -- create ---------------------------------------------------------------------------------


def test_create_with_a_string(client):
    response = client.responses.create(model="smollm2", input="Say hello.", max_output_tokens=40,
                                       extra_body={"seed": 1})
    assert response.id.startswith("resp_") and response.object == "response" and response.model == "smollm2"
    assert response.status in ("completed", "incomplete")
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"]
    assert response.output_text == message.content[0].text and response.output_text
    assert_usage(response)


def test_create_with_items_and_instructions(client):
    items = [
        {"role": "developer", "content": "Answer in one short sentence."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
        {"role": "user", "content": "Another one?"},
    ]
    plain = client.responses.create(model="smollm2", input=items, max_output_tokens=20, extra_body={"seed": 2})
    instructed = client.responses.create(model="smollm2", input=items, max_output_tokens=20, extra_body={"seed": 2},
                                         instructions="You are a terse assistant.", metadata={"run": "t1"}, user="u1")
    assert plain.output[0].type == "message" and instructed.output[0].type == "message"
    assert instructed.usage.input_tokens > plain.usage.input_tokens  # the instructions reached the prompt
    assert instructed.instructions == "You are a terse assistant."
    assert instructed.metadata == {"run": "t1"} and instructed.user == "u1"
    single = client.responses.create(model="smollm2", input="Another one?", max_output_tokens=5)
    assert plain.usage.input_tokens > single.usage.input_tokens  # the whole history was rendered


def test_incomplete_on_max_output_tokens(client):
    response = client.responses.create(model="smollm2", input="Write a long story about a cat.",
                                       max_output_tokens=3, temperature=0.0)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    assert response.output[0].status == "incomplete"


def test_json_schema_text_format_is_valid(client):
    # Bounded strings: the whole object fits the budget, so it always completes.
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = client.responses.create(model="smollm2", input="Describe a cat as JSON.", max_output_tokens=200,
                                       text={"format": {"type": "json_schema", "name": "cat", "schema": schema,
                                                        "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"
    obj = client.responses.create(model="smollm2", input="A JSON object please.", max_output_tokens=200,
                                  text={"format": {"type": "json_object"}})
    if obj.status == "completed":  # any object may outgrow any budget
        assert isinstance(json.loads(obj.output_text), dict)
    assert obj.output_text.lstrip().startswith("{")


# -- streaming --------------------------------------------------------------------------------


def test_stream_accumulates_into_the_final_object(client):
    # A stop sequence (an extension) ends it well within the budget: `completed`, not `incomplete`.
    kwargs = dict(model="smollm2", input="Tell me about the sea.", max_output_tokens=300, temperature=0.7,
                  extra_body={"seed": 3, "stop": [".", "!", "?", "\n"]})
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    message_events = ["response.output_item.added", "response.content_part.added", "response.output_text.delta"]
    assert types[2:5] == message_events
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas
    assert next(e for e in events if e.type == "response.output_text.done").text == deltas
    assert events[-1].response.id == final.id == events[0].response.id
    assert_usage(final)
    # The same request without streaming: the same kind of object.
    plain = client.responses.create(**kwargs)
    assert [item.type for item in plain.output] == [item.type for item in final.output]
    assert plain.usage.input_tokens == final.usage.input_tokens
    assert set(plain.model_dump()) == set(final.model_dump())
    assert client.responses.retrieve(final.id).output_text == deltas  # a streamed response is stored too


def test_stream_ends_incomplete_on_max_output_tokens(client):
    events = list(client.responses.create(model="smollm2", input="Write a long story.", max_output_tokens=2,
                                          stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_streamed_function_calls(client):
    with client.responses.stream(model="smollm2", input=QUESTION, tools=[WEATHER], tool_choice="required") as stream:
        events = list(stream)
        final = stream.get_final_response()
    calls = function_calls(final)
    assert calls and final.status == "completed"
    for call in calls:
        added = [e for e in events if e.type == "response.output_item.added" and e.item.id == call.id]
        done = [e for e in events if e.type == "response.function_call_arguments.done" and e.item_id == call.id]
        delta = "".join(e.delta for e in events
                        if e.type == "response.function_call_arguments.delta" and e.item_id == call.id)
        assert len(added) == 1 and len(done) == 1 and done[0].arguments == delta == call.arguments
        jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert events[-1].type == "response.completed"


# -- tools ----------------------------------------------------------------------------------


def test_function_call_round_trip_through_function_call_output(client):
    first = client.responses.create(model="smollm2", input=QUESTION, tools=[WEATHER], tool_choice="required")
    calls = function_calls(first)
    assert calls and first.status == "completed"
    assert len({c.call_id for c in calls}) == len(calls)
    for call in calls:
        assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    history = [{"role": "user", "content": QUESTION}, *[item.model_dump(exclude_none=True) for item in first.output]]
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": json.dumps({"temp_c": -3})}
               for c in calls]
    second = client.responses.create(model="smollm2", input=history + outputs, tools=[WEATHER], tool_choice="none",
                                     max_output_tokens=30)
    assert second.output[0].type == "message" and not function_calls(second)
    assert second.usage.input_tokens > question_alone(client)  # the call and its result were rendered


def test_function_call_round_trip_through_previous_response_id(client):
    first = client.responses.create(model="smollm2", input=QUESTION, tools=[WEATHER], tool_choice="required")
    call = function_calls(first)[0]
    second = client.responses.create(model="smollm2", previous_response_id=first.id, tools=[WEATHER],
                                     tool_choice="none", max_output_tokens=30,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "-3 C"}])
    assert second.previous_response_id == first.id and second.output[0].type == "message"
    assert second.usage.input_tokens > question_alone(client)  # the stored turn was rendered
    items = client.responses.input_items.list(second.id, order="asc")
    types = [item.type for item in items.data]
    assert types[0] == "message" and "function_call" in types and types[-1] == "function_call_output"
    assert items.data[-1].call_id == call.call_id


def test_parallel_tool_calls_false_gives_at_most_one_call(client):
    for seed in (1, 2, 3):
        response = client.responses.create(
            model="smollm2", input="Weather in Paris and in Tokyo, in celsius? One call per city.", tools=[WEATHER],
            tool_choice="required", parallel_tool_calls=False, temperature=0.8, extra_body={"seed": seed})
        assert len(function_calls(response)) == 1 and response.parallel_tool_calls is False


def test_a_named_tool_choice(client):
    other_tool = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 24}}, "required": ["city"]}}
    response = client.responses.create(model="smollm2", input=QUESTION, tools=[WEATHER, other_tool],
                                       tool_choice={"type": "function", "name": "get_time"})
    assert {c.name for c in function_calls(response)} == {"get_time"}


def test_functions_inside_a_namespace_tool(client):
    """Codex groups some of its function tools in a `namespace` tool; a call names its namespace."""
    grouped = {"type": "namespace", "name": "weather_v1", "description": "Weather tools",
               "tools": [{k: v for k, v in WEATHER.items() if k != "strict"}]}
    response = client.responses.create(model="smollm2", input=QUESTION, tools=[grouped], tool_choice="required")
    calls = function_calls(response)
    assert calls and all(c.name == "get_weather" and c.namespace == "weather_v1" for c in calls)
    flat = client.responses.create(model="smollm2", input=QUESTION, tools=[WEATHER], tool_choice="required")
    assert all(c.namespace is None for c in function_calls(flat))
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input="Hi", tools=[{"type": "namespace", "name": "n", "description": "",
                                                                     "tools": [{"type": "web_search"}]}])
    assert info.value.response.json()["error"]["param"] == "tools[0].tools[0].type"


# -- stored responses --------------------------------------------------------------------------


def test_retrieve_delete_and_input_items(client):
    created = client.responses.create(model="smollm2", input=[{"role": "user", "content": "Hi!"}],
                                      max_output_tokens=10)
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    items = client.responses.input_items.list(created.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]
    assert items.data[0].content[0].text == "Hi!"
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_input_items_pages(client, server):
    created = client.responses.create(model="smollm2", max_output_tokens=5,
                                      input=[{"role": "user", "content": str(n)} for n in range(5)])
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/responses/{created.id}/input_items"
    page = httpx.get(url, params={"limit": 2, "order": "asc"}, headers=headers).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["0", "1"] and page["has_more"]
    page = httpx.get(url, params={"limit": 10, "order": "asc", "after": page["last_id"]}, headers=headers).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["2", "3", "4"] and not page["has_more"]
    newest = httpx.get(url, headers=headers).json()  # desc by default, as OpenAI
    assert newest["data"][0]["content"][0]["text"] == "4"


def test_store_false_keeps_nothing(client):
    response = client.responses.create(model="smollm2", input="Hi", max_output_tokens=5, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_unknown_ids_are_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve("resp_nope")
    assert info.value.response.json()["error"]["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="smollm2", input="Hi", previous_response_id="resp_nope")
    assert info.value.response.json()["error"]["param"] == "previous_response_id"


def test_another_keys_responses_are_invisible(client, other):
    mine = client.responses.create(model="smollm2", input="Hi", max_output_tokens=5)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="smollm2", input="Hi", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id  # the other key's delete did nothing


# -- refusals and bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("tool", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
                                  {"type": "code_interpreter", "container": {"type": "auto"}},
                                  {"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                                   "environment": "linux"},
                                  {"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:1"}])
def test_hosted_tools_are_refused(client, tool):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input="Hi", tools=[tool])
    error = info.value.response.json()["error"]
    assert "hosted tool" in error["message"] and error["param"] == "tools[0].type"


def test_background_without_store_is_refused_and_reasoning_ignored(client):
    with pytest.raises(openai.BadRequestError) as info:  # background mode itself: tests/test_e2e_background.py
        client.responses.create(model="smollm2", input="Hi", background=True, store=False)
    assert info.value.response.json()["error"]["param"] == "background"
    response = client.responses.create(model="smollm2", input="Hi", max_output_tokens=5, reasoning={"effort": "low"})
    assert response.status in ("completed", "incomplete")


@pytest.mark.parametrize("body", [
    {"input": [{"type": "item_reference", "id": "x"}]},
    {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
    {"input": [{"type": "message", "content": "no role"}]},
    {"input": [{"type": "function_call_output", "output": "x"}]},
    {"input": []},
    {"input": "Hi", "max_output_tokens": 100000},
    {"input": "Hi", "tool_choice": "required"},
    {"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
    {"input": "Hi", "temperature": 5},
    {"input": 42},
])
def test_bad_input_is_a_400_in_the_openai_envelope(server, body):
    answer = httpx.post(server.url + "/v1/responses", json={"model": "smollm2", **body},
                        headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_a_model_alias_serves_clients_that_send_their_own_model_name(client):
    response = client.responses.create(model="gpt-5-codex", input="Hi", max_output_tokens=5)
    assert response.model == "smollm2"


# -- the OpenAI Agents SDK ----------------------------------------------------------------------


def test_an_agents_sdk_agent_calls_a_function_tool(server):
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0),
                                     use_for_tracing=False)
    agents.set_default_openai_api("responses")
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"It is 21 degrees in {city}."

    agent = agents.Agent(name="weather", instructions="Answer weather questions with the get_weather tool.",
                         model="smollm2", tools=[get_weather],
                         # openai-agents >= 0.24 raises on an `incomplete` response (the answer cut by max_tokens):
                         # room for the final answer after the tool's result
                         model_settings=agents.ModelSettings(tool_choice="required", max_tokens=400, temperature=0))
    result = agents.Runner.run_sync(agent, "What is the weather in Oslo?", max_turns=4)
    assert calls and all(isinstance(city, str) for city in calls)
    assert isinstance(result.final_output, str) and result.final_output


# -- images ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_client(tmp_path_factory):
    """A synthetic LLaVA-style pair (random weights, llama.cpp's real multimodal path)."""
    from tests.synth.vlm import vlm_pair

    tmp = tmp_path_factory.mktemp("responses-vision")
    model, mmproj = vlm_pair()
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "vlm", "source": str(model), "type": "MULTIMODAL", "mmproj": str(mmproj), "nctx": 512,
         "preload": True}])
    server = Server(["-c", str(manifest)], tmp)
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    server.stop()


def test_input_image_reaches_a_vision_model(vision_client):
    from tests.synth.vlm import TOKENS_PER_IMAGE, png
    from tests.test_e2e_vision import data_url

    def ask(*images: bytes):
        parts = [{"type": "input_text", "text": "What is in this picture?"},
                 *({"type": "input_image", "image_url": data_url(image)} for image in images)]
        return vision_client.responses.create(model="vlm", input=[{"role": "user", "content": parts}],
                                              max_output_tokens=2, temperature=0)

    none, one = ask(), ask(png("black"))
    assert one.usage.input_tokens - none.usage.input_tokens == TOKENS_PER_IMAGE
    assert one.output[0].type == "message" and one.model == "vlm"


def test_input_image_to_a_text_model_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="smollm2", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}])
    assert info.value.response.json()["error"]["code"] == "images_not_supported"


# -- failures mid-stream (the fake engine: the test is about the route) ---------------------------


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("responses-failing")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "fails", "source": "/dev/null", "backend": "tests.fakes:FakeBackend", "options": {"fail_after": 2}}])
    server = Server(["-c", str(manifest)], tmp)
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    server.stop()


def test_a_failure_mid_stream_ends_with_response_failed(failing):
    events = list(failing.responses.create(model="fails", input="Hi", max_output_tokens=10, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types.count("response.output_text.delta") == 2
    assert types[-1] == "response.failed" and types.count("response.failed") == 1
    assert "fake failure" in events[-1].response.error.message and events[-1].response.status == "failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        failing.responses.retrieve(events[-1].response.id)
    with pytest.raises(openai.BadRequestError):  # without streaming: a 400 in the envelope
        failing.responses.create(model="fails", input="Hi", max_output_tokens=10)
