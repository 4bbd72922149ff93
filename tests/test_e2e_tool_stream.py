"""End to end: tool calls stream while they are generated (a real `nexa server`, SmolLM2), in every
protocol: Chat Completions `delta.tool_calls[i].function.arguments` fragments (id, type and name in
the first), Responses `response.function_call_arguments.delta` events, Messages `input_json_delta`
events. The fragments concatenate to the final arguments, and the first comes early."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import anthropic
import jsonschema
import openai
import pytest

from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NOTE = {"type": "function", "function": {
    "name": "write_note", "description": "Save a note with a title, a body and tags.",
    "parameters": {"type": "object", "properties": {
        "title": {"type": "string"}, "body": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["title", "body", "tags"]}}}
FORCED = {"type": "function", "function": {"name": "write_note"}}
ASK = [{"role": "user", "content": "Write a note about the planets of the solar system, with three tags."}]
SCHEMA = NOTE["function"]["parameters"]
MAX_TOKENS = 160


@pytest.fixture(scope="module", params=[1, 2], ids=["parallel-1", "parallel-2"])
def server(request, tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tool-stream")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "source": str(smollm2_path), "nctx": 2048, "parallel": request.param, "preload": True}])
    started = Server(["-c", str(manifest)], tmp)
    yield started
    started.stop()


def test_chat_streams_the_arguments_as_they_are_generated(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=240)
    # The same request unstreamed first: its arguments to compare with, and its prompt cached (an agent's
    # prompt usually is), so the streamed request's time is generation time
    whole = client.chat.completions.create(model="smollm2", messages=ASK, tools=[NOTE], tool_choice=FORCED,
                                           temperature=0, max_tokens=MAX_TOKENS)
    started = time.monotonic()
    stream = client.chat.completions.create(model="smollm2", messages=ASK, tools=[NOTE], tool_choice=FORCED,
                                            temperature=0, max_tokens=MAX_TOKENS, stream=True)
    fragments: list[tuple[float, str]] = []
    heads = []
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls if chunk.choices else None) or []:
            if call.id is not None:
                heads.append(call)
            elif call.function and call.function.arguments:
                assert call.index == 0
                fragments.append((time.monotonic(), call.function.arguments))
    ended = time.monotonic()
    assert len(heads) == 1 and heads[0].type == "function" and heads[0].function.name == "write_note"
    assert heads[0].function.arguments == "" and heads[0].index == 0
    assert len(fragments) >= 3
    assert fragments[0][0] - started < 0.5 * (ended - started)  # the first fragment came early, not at the end
    streamed = "".join(text for _, text in fragments)
    call = whole.choices[0].message.tool_calls[0]
    if whole.choices[0].finish_reason == "tool_calls":
        jsonschema.validate(json.loads(streamed), SCHEMA)
    assert streamed == call.function.arguments  # greedy: the same call, and the fragments are all of it


def test_responses_streams_function_call_argument_deltas(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=240)
    tool = {"type": "function", "name": "write_note", "parameters": SCHEMA}
    deltas, done, items = [], [], []
    with client.responses.stream(model="smollm2", input=ASK, tools=[tool],
                                 tool_choice={"type": "function", "name": "write_note"},
                                 max_output_tokens=MAX_TOKENS, temperature=0) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                deltas.append(event.delta)
            elif event.type == "response.function_call_arguments.done":
                done.append(event.arguments)
            elif event.type == "response.output_item.added":
                items.append(event.item)
            elif event.type in ("response.completed", "response.incomplete"):  # incomplete: the budget cut it
                final = event.response
    assert len(deltas) >= 3
    assert items and items[0].type == "function_call" and items[0].name == "write_note"
    call = next(item for item in final.output if item.type == "function_call")
    assert "".join(deltas) == done[0] == call.arguments


def test_messages_streams_input_json_deltas(server):
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=240)
    tool = {"name": "write_note", "description": "Save a note.", "input_schema": SCHEMA}
    fragments = []
    with client.messages.stream(model="smollm2", max_tokens=MAX_TOKENS, messages=ASK, tools=[tool],
                                tool_choice={"type": "tool", "name": "write_note"},
                                extra_body={"temperature": 0}) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert len(fragments) >= 3
    use = next(block for block in final.content if block.type == "tool_use")
    assert use.name == "write_note" and use.id.startswith("toolu_")
    if final.stop_reason == "tool_use":  # a call the budget cut is partial JSON
        assert json.loads("".join(fragments)) == use.input
