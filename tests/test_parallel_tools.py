"""Parallel tool calls: one turn may call several functions (OpenAI's default), or at most
one with `parallel_tool_calls: false`.

What the grammar allows is checked deterministically in-process, token by token, with
llama.cpp's own grammar sampler over SmolLM2's vocabulary; what the real model does with it
is checked end to end through the openai SDK (behaviour, never words)."""

from __future__ import annotations

import ctypes
import json
import math

import jsonschema
import openai
import pytest

from backends import tools as tools_mod
from backends.llama import _json_grammar

pytestmark = [pytest.mark.timeout(600)]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for one city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time in one city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                                "required": ["city"]}},
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
OSLO = '{"name": "get_time", "arguments": {"city": "Oslo"}}'
TWO_CALLS = f"{PARIS}</tool_call>\n<tool_call>{OSLO}</tool_call>"
TWO_CITIES = [{"role": "user", "content": "What is the weather in Paris and in Tokyo, in celsius? "
                                          "Call get_weather once for each city."}]


# -- the grammar, in-process --------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_model(smollm2_path):
    import llama_cpp

    return llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)


def grammar_of(parallel: bool, tools=TOOLS) -> str:
    grammar = _json_grammar(tools_mod.call_schema(tools_mod.functions_of(tools)))
    return tools_mod.calls_grammar(grammar) if parallel else grammar


def accepts(llm, grammar: str, text: str) -> bool:
    """Whether `grammar` lets llama.cpp generate exactly `text` and then stop: each token is
    offered to the grammar sampler before it is accepted, then end-of-generation."""
    import llama_cpp

    vocab = llm._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "the grammar does not parse"
    try:
        for token in [*llm.tokenize(text.encode(), add_bos=False, special=False), llm.token_eos()]:
            data = (llama_cpp.llama_token_data * 1)()
            data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
            candidates = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
            if math.isinf(data[0].logit):
                return False
            if token != llm.token_eos():
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_the_parallel_grammar_allows_one_or_more_calls(vocab_model):
    grammar = grammar_of(parallel=True)
    assert accepts(vocab_model, grammar, PARIS)
    assert accepts(vocab_model, grammar, PARIS + "</tool_call>")
    assert accepts(vocab_model, grammar, TWO_CALLS)
    three = f"{PARIS}</tool_call><tool_call>{OSLO}</tool_call><tool_call>{PARIS}</tool_call>"
    assert accepts(vocab_model, grammar, three)


def test_every_call_must_match_its_schema(vocab_model):
    grammar = grammar_of(parallel=True)
    bad_second = f'{PARIS}</tool_call><tool_call>{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}</tool_call>'
    assert not accepts(vocab_model, grammar, bad_second)  # `unit` is required
    assert not accepts(vocab_model, grammar, f'{PARIS}</tool_call><tool_call>{{"name": "nope", "arguments": {{}}}}')
    assert not accepts(vocab_model, grammar, f"{PARIS}</tool_call><tool_call>")  # a marker without a call


def test_parallel_false_allows_exactly_one_call(vocab_model):
    grammar = grammar_of(parallel=False)
    assert accepts(vocab_model, grammar, PARIS)
    assert not accepts(vocab_model, grammar, TWO_CALLS)
    assert not accepts(vocab_model, grammar, PARIS + "</tool_call>")


def test_the_rename_keeps_literals_and_recursive_references():
    grammar = 'root ::= "{" space "\\"root\\"" space ( root )? "}" [root]\nspace ::= " "?  # root here\n'
    renamed = tools_mod._rename_rule(grammar, "root", "call")
    assert renamed.startswith('call ::= "{" space "\\"root\\"" space ( call )? "}" [root]')
    assert "# root here" in renamed


def test_parse_calls_gives_each_call_its_own_id():
    calls = tools_mod.parse_calls(TWO_CALLS)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Oslo"}
    assert len({c["id"] for c in calls}) == 2
    # A last call cut short by the token budget is dropped; complete ones are kept.
    assert len(tools_mod.parse_calls(f'{PARIS}</tool_call><tool_call>{{"name": "get_ti')) == 1
    assert len(tools_mod.parse_calls(PARIS)) == 1


def test_history_with_several_calls_renders_them_all():
    messages = tools_mod.with_tool_prompt([
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Rome"}'}}]},
    ], tools_mod.functions_of(TOOLS))
    assert messages[2]["content"].count(tools_mod.MARKER) == 2


# -- the real model, end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def client(text_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=text_server.url + "/v1", api_key="unused", max_retries=0, timeout=180)


def assert_valid_calls(calls) -> None:
    assert calls
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.e2e
def test_a_turn_may_call_several_functions(client):
    counts = []
    for seed in range(1, 9):
        answer = client.chat.completions.create(model="smollm2", messages=TWO_CITIES, tools=TOOLS,
                                                tool_choice="required", temperature=0.8, seed=seed, max_tokens=160)
        assert answer.choices[0].finish_reason == "tool_calls"
        assert_valid_calls(answer.choices[0].message.tool_calls)
        counts.append(len(answer.choices[0].message.tool_calls))
        if counts[-1] >= 2:
            break
    assert max(counts) >= 2, counts


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_parallel_false_never_returns_more_than_one_call(client, seed):
    answer = client.chat.completions.create(model="smollm2", messages=TWO_CITIES, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, temperature=0.8, seed=seed, max_tokens=160)
    assert answer.choices[0].finish_reason == "tool_calls"
    assert len(answer.choices[0].message.tool_calls) == 1
    assert_valid_calls(answer.choices[0].message.tool_calls)


@pytest.mark.e2e
def test_streamed_calls_carry_their_index(client):
    """Streams whose calls are 0..n-1, each call's id once, arguments that validate."""
    seen_many = False
    for seed in range(1, 9):
        stream = client.chat.completions.create(model="smollm2", messages=TWO_CITIES, tools=TOOLS, stream=True,
                                                tool_choice="required", temperature=0.8, seed=seed, max_tokens=160)
        calls: dict[int, dict] = {}
        for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                entry = calls.setdefault(call.index, {"ids": [], "name": "", "arguments": ""})
                if call.id:
                    entry["ids"].append(call.id)
                if call.function and call.function.name:
                    entry["name"] += call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
        assert sorted(calls) == list(range(len(calls))) and calls
        assert all(len(c["ids"]) == 1 for c in calls.values())
        assert len({c["ids"][0] for c in calls.values()}) == len(calls)
        for c in calls.values():
            jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])
        if len(calls) >= 2:
            seen_many = True
            break
    assert seen_many


def test_a_repeated_call_is_dropped_and_detected():
    assert [c["function"]["name"] for c in tools_mod.parse_calls(f"{PARIS}</tool_call><tool_call>{PARIS}")] == \
        ["get_weather"]
    assert tools_mod.repeats_a_call(f"{PARIS}</tool_call><tool_call>{PARIS}")
    assert not tools_mod.repeats_a_call(f"{PARIS}</tool_call><tool_call>{PARIS[:-3]}")  # not complete yet
    assert not tools_mod.repeats_a_call(TWO_CALLS)


def test_a_named_tool_choice_forces_exactly_one_call():
    assert not tools_mod.allows_parallel({"type": "function", "function": {"name": "get_time"}}, True)
    assert tools_mod.allows_parallel("required", True) and tools_mod.allows_parallel("auto", True)
    assert not tools_mod.allows_parallel("required", False)
