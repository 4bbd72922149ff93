"""Tool-call arguments streamed as generated (backends/tool_stream.py): however the generated text is
cut into pieces, each call starts once with its name and id, its fragments concatenate to its
arguments, and the final calls (backends/tools.streamed_calls) carry the same ids and arguments."""

from __future__ import annotations

import json
import random

import pytest

from backends import tools
from backends.tool_stream import CallStream

ONE = '{"name": "get_weather", "arguments": {"city": "Pa}r\\"is", "n": [1, {"a": 2}], "ok": true}}'
TWO = ONE + '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>'


def pieces(text: str, seed: int) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        k = rng.randint(1, 6)
        out.append(text[i:i + k])
        i += k
    return out


@pytest.mark.parametrize("seed", range(20))
def test_fragments_concatenate_to_the_final_arguments(seed):
    stream, events = CallStream(), []
    for piece in pieces(TWO, seed):
        events += stream.feed(piece)
    starts = [e for e in events if e.name is not None]
    assert [(e.index, e.name) for e in starts] == [(0, "get_weather"), (1, "get_time")]
    assert all(e.id and e.arguments == "" for e in starts)
    streamed = ["".join(e.arguments for e in events if e.index == i) for i in range(2)]
    final = tools.streamed_calls(TWO, stream.ids, stream.raw)
    assert [c["function"]["arguments"] for c in final] == streamed
    assert [c["id"] for c in final] == [e.id for e in starts]
    assert json.loads(streamed[0]) == {"city": 'Pa}r"is', "n": [1, {"a": 2}], "ok": True}
    assert json.loads(streamed[1]) == {"tz": "UTC"}


def test_the_first_fragment_comes_before_the_call_is_complete():
    stream = CallStream()
    head = '{"name": "get_weather", "arguments": {"ci'
    events = stream.feed(head)
    assert [e.name for e in events if e.name] == ["get_weather"]
    assert "".join(e.arguments for e in events) == '{"ci'


def test_a_repeated_call_is_dropped_from_the_final_calls():
    text = ONE + "</tool_call>\n<tool_call>" + ONE
    stream = CallStream()
    stream.feed(text)
    final = tools.streamed_calls(text, stream.ids, stream.raw)
    assert len(final) == 1 and final[0]["id"] == stream.ids[0]


def test_a_cut_call_keeps_its_partial_arguments():
    text = '{"name": "get_weather", "arguments": {"city": "Par'
    stream = CallStream()
    stream.feed(text)
    final = tools.streamed_calls(text, stream.ids, stream.raw, partial=True)
    assert final == [{"id": stream.ids[0], "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Par'}}]
