"""Function calling end to end with the real SmolLM2: /v1/chat/completions with tools and
the original /v1/function-calling route. Arguments must validate against the schema."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USER_DETAIL = {
    "type": "function",
    "function": {
        "name": "UserDetail",
        "parameters": {
            "properties": {"name": {"description": "The user's name", "type": "string", "maxLength": 24},
                           "age": {"description": "The user's age", "type": "integer"}},
            "required": ["name", "age"],
            "type": "object",
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]},
    },
}
TOOLS = [USER_DETAIL, WEATHER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
EXTRACT = [{"role": "user", "content": "Extract Jason is 25 years old"}]
# The tools' strings are bounded (maxLength), as pydantic's Field(max_length=...) bounds them: SmolLM2 135M
# sometimes derails inside a free string and loops there until the budget runs out (about 1 call in 30 at
# temperature 1.0, 1 in 40 at 0.8, measured in-process). A bound makes every call finish on any CPU.


@pytest.fixture(scope="module")
def client(text_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=text_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def assert_valid_call(call, allowed=SCHEMAS):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in allowed
    jsonschema.validate(json.loads(call.function.arguments), allowed[call.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_forced_call_returns_arguments_that_validate(client, seed):
    answer = client.chat.completions.create(
        model="smollm2", messages=EXTRACT, tools=TOOLS, temperature=0.8, seed=seed,
        tool_choice={"type": "function", "function": {"name": "UserDetail"}},
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    assert choice.message.tool_calls[0].function.name == "UserDetail"
    assert_valid_call(choice.message.tool_calls[0])
    assert answer.usage.completion_tokens > 0


def test_required_picks_one_of_the_tools(client):
    answer = client.chat.completions.create(model="smollm2", tool_choice="required", tools=TOOLS,
                                            messages=[{"role": "user", "content": "Weather in Paris, in celsius?"}])
    assert answer.choices[0].finish_reason == "tool_calls"
    call = answer.choices[0].message.tool_calls[0]
    assert_valid_call(call)
    if call.function.name == "get_weather":
        assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")


@pytest.mark.parametrize("content", ["Extract Jason is 25 years old", "Hello! How are you today?",
                                     "What's the weather like in Berlin? Use celsius."])
def test_auto_returns_a_valid_call_or_plain_content(client, content):
    answer = client.chat.completions.create(model="smollm2", tools=TOOLS, tool_choice="auto", max_tokens=120,
                                            messages=[{"role": "user", "content": content}])
    message = answer.choices[0].message
    if message.tool_calls:
        assert answer.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            assert_valid_call(call)
    else:
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert message.content and "<tool_call>" not in message.content


@pytest.mark.parametrize("seed", [1, 2])
def test_none_never_calls(client, seed):
    answer = client.chat.completions.create(model="smollm2", tools=TOOLS, tool_choice="none", messages=EXTRACT,
                                            max_tokens=30, seed=seed, temperature=0.8)
    assert not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason != "tool_calls"
    assert answer.choices[0].message.content


def test_streamed_tool_call_deltas(client):
    # greedy: sampled at the default temperature 1.0, SmolLM2 135M derails inside the first string value
    # (`"name": "}}</tool_call> 25 25 ...`) about once in 30 runs and loops there to the grammar's budget
    stream = client.chat.completions.create(
        model="smollm2", messages=EXTRACT, tools=TOOLS, stream=True, temperature=0,
        tool_choice={"type": "function", "function": {"name": "UserDetail"}},
    )
    name, arguments, ids, finish = "", "", set(), None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                name += call.function.name
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and name == "UserDetail" and len(ids) == 1
    jsonschema.validate(json.loads(arguments), SCHEMAS["UserDetail"])


def test_the_original_function_calling_route(text_server):
    """The request body exactly as SERVER-API.md shows it ("auto" calls a function on this route)."""
    body = {"messages": EXTRACT, "tools": [USER_DETAIL], "tool_choice": "auto"}
    answer = httpx.post(text_server.url + "/v1/function-calling", json=body, timeout=120).json()
    assert answer["object"] == "chat.completion" and answer["model"] == "smollm2"
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["index"] == 0
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "UserDetail"
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["UserDetail"])
    assert message["function_call"]["arguments"] == call["function"]["arguments"]
    assert set(answer["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}


def test_a_tool_result_round_trip(client):
    first = client.chat.completions.create(model="smollm2", messages=[
        {"role": "user", "content": "Weather in Oslo in celsius?"}], tools=TOOLS, tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    follow_up = client.chat.completions.create(model="smollm2", tools=TOOLS, tool_choice="none", max_tokens=20, seed=1, messages=[
        {"role": "user", "content": "Weather in Oslo in celsius?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": -3})},
    ])
    assert follow_up.choices[0].message.content
    assert follow_up.usage.prompt_tokens > first.usage.prompt_tokens - 200  # the history was rendered


def test_json_response_format(client):
    answer = client.chat.completions.create(model="smollm2", max_tokens=160, response_format={
        "type": "json_schema", "json_schema": {"name": "cat", "schema": {
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
            "required": ["name", "age"]}}},
        messages=[{"role": "user", "content": "Describe a cat as JSON."}])
    data = json.loads(answer.choices[0].message.content)
    assert isinstance(data["name"], str) and len(data["name"]) <= 24 and isinstance(data["age"], int)


def test_bad_tool_choice_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=EXTRACT, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smollm2", messages=EXTRACT, tool_choice="required")


def test_tools_with_nested_models_and_refs(client):
    """What openai.pydantic_function_tool and LangChain emit: `$defs` with `$ref`s."""
    from enum import Enum

    from pydantic import BaseModel, Field

    class Unit(str, Enum):
        celsius = "celsius"
        fahrenheit = "fahrenheit"

    class Place(BaseModel):
        city: str = Field(max_length=24)
        country: str = Field(max_length=24)

    class GetWeather(BaseModel):
        place: Place
        unit: Unit

    tool = openai.pydantic_function_tool(GetWeather)
    assert "$defs" in tool["function"]["parameters"]
    answer = client.chat.completions.create(model="smollm2", tools=[tool, WEATHER], tool_choice="required",
                                            messages=[{"role": "user", "content": "Weather in Paris, France?"}])
    call = answer.choices[0].message.tool_calls[0]
    schemas = {"GetWeather": tool["function"]["parameters"], "get_weather": WEATHER["function"]["parameters"]}
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_a_schema_the_grammar_cannot_express_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
                "u": {"type": "string", "pattern": "\\d+"}}}}})
    assert "grammar" in info.value.response.json()["error"]["message"]


def test_suffix_is_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smollm2", prompt="def add(a, b):", suffix="return c", max_tokens=3)
    assert info.value.response.json()["error"]["param"] == "suffix"


# -- strict JSON under grammars (issue 13 §2) and their default budget (§5) ------------------------

EXPLORE = {"temperature": 1.0, "top_p": 1.0, "extra_body": {"top_k": 0, "min_p": 0.0}}
NOTE = {"type": "object", "required": ["title", "poem"], "properties": {
    "title": {"type": "string", "maxLength": 24}, "poem": {"type": "string", "maxLength": 60}}}
SAVE_NOTE = {"type": "function", "function": {"name": "save_poem", "parameters": NOTE}}
# Line breaks and a tab to copy: the model then wants raw control characters inside a JSON string.
POEM_ASK = [{"role": "user", "content": "Save this poem, titled Sea, exactly as written:\n"
                                        "Roses are red,\nthe sea is blue,\n\tand I am here."}]


@pytest.mark.timeout(900)
def test_a_seed_sweep_of_calls_and_json_answers_is_strict_json(client):
    """Through the server and the SDK: every call's arguments and every json_schema answer
    parses with strict parsers (json.loads, and the SDK's pydantic `.parse()`)."""
    from pydantic import BaseModel, Field

    class Note(BaseModel):
        title: str = Field(max_length=24)
        poem: str = Field(max_length=60)

    for seed in range(4):  # the in-process sweep (tests/test_json_grammar.py) does 50
        answer = client.chat.completions.create(model="smollm2", messages=POEM_ASK, tools=[SAVE_NOTE], seed=seed,
                                                tool_choice="required", max_tokens=400, **EXPLORE)
        assert answer.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(answer.choices[0].message.tool_calls[0].function.arguments), NOTE)
        parsed = client.chat.completions.parse(model="smollm2", messages=POEM_ASK, response_format=Note, seed=seed,
                                               max_tokens=400, **EXPLORE)
        assert parsed.choices[0].finish_reason == "stop"
        note = parsed.choices[0].message.parsed
        assert isinstance(note, Note)
        jsonschema.validate(json.loads(parsed.choices[0].message.content), Note.model_json_schema())


def test_grammar_generation_has_a_default_budget(start_server, smollm2_path, tmp_path):
    """Without max_tokens a tool call or JSON answer gets `grammar_max_tokens` tokens (here 6), and
    running out is finish_reason "length" (never a 400); max_tokens overrides it; plain text is not capped."""
    manifest = write_manifest(tmp_path / "nexa.yaml", [
        {"name": "smollm2", "source": str(smollm2_path), "nctx": 2048, "preload": True, "grammar_max_tokens": 6}])
    server = start_server(["-c", str(manifest)])
    small = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    cut = small.chat.completions.create(model="smollm2", messages=EXTRACT, tools=[USER_DETAIL], tool_choice="required",
                                        temperature=0)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 6
    for call in cut.choices[0].message.tool_calls or []:  # the name once complete, the arguments as far as they got
        assert call.function.name == "UserDetail"
    text = small.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "A cat as JSON."}],
                                         response_format={"type": "json_object"}, temperature=0)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 6
    whole = small.chat.completions.create(model="smollm2", messages=EXTRACT, tools=[USER_DETAIL], max_tokens=200,
                                          tool_choice="required", temperature=0)
    assert whole.choices[0].finish_reason == "tool_calls" and whole.usage.completion_tokens > 6
    plain = small.completions.create(model="smollm2", prompt="1, 2, 3, 4, 5,", temperature=0)
    assert plain.usage.completion_tokens > 6
