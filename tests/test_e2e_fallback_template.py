"""End to end: a model without a chat template of its own (Gemma 3 270M base) is served with the
gateway's ChatML fallback, and its chat answers end at that template's turn markers.

Nothing else would end them: the markers are plain text to this model's tokenizer, so no
end-of-generation token follows a turn, and a base model that has read them in the prompt writes
`<|im_end|>` and invents the next turns ("<|im_start|>user ...") until its output cap. Under Claude
Code's and Codex's prompts that was 5,000+ tokens and ten minutes per answer (bench/RESULTS.md §16).
Each test first shows, on the raw completion route with the very prompt tokens the chat path uses,
that the model does write a marker here, so that a chat answer without one means the gateway stopped it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MARKERS = ("<|im_end|>", "<|im_start|>")
FEW_SHOT = [{"role": "user", "content": "Say A"}, {"role": "assistant", "content": "A"},
            {"role": "user", "content": "Say B"}, {"role": "assistant", "content": "B"},
            {"role": "user", "content": "Say C"}]
MAX_TOKENS = 48
READ = {"name": "read_file", "description": "Read a file and return its text.",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


@pytest.fixture(scope="module", params=[1, 2], ids=["parallel-1", "parallel-2"])
def server(request, tmp_path_factory, gemma_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fallback-template")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "gemma", "source": str(gemma_path), "nctx": 2048, "parallel": request.param, "preload": True}])
    started = Server(["-c", str(manifest)], tmp)
    yield started
    started.stop()


def raw_continuation(server: Server, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The model's greedy continuation of the chat prompt, on /v1/completions (no stops of the chat's)."""
    with httpx.Client(base_url=server.url, timeout=240) as http:
        body = {"model": "gemma", "messages": messages, **({"tools": tools} if tools else {})}
        prompt = http.post("/apply-template", json=body).json()["prompt"]
        assert "<|im_start|>assistant" in prompt  # the fallback template is the one in use
        tokens = http.post("/tokenize", json={"model": "gemma", "content": prompt, "parse_special": True}).json()
        answer = http.post("/v1/completions", json={"model": "gemma", "prompt": tokens["tokens"], "temperature": 0,
                                                     "top_k": 1, "max_tokens": MAX_TOKENS}).json()
    return answer["choices"][0]["text"]


def test_a_chat_answer_ends_where_the_model_writes_the_next_turn(server):
    assert any(m in raw_continuation(server, FEW_SHOT) for m in MARKERS)  # the model does write one here
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=240)
    answer = client.chat.completions.create(model="gemma", messages=FEW_SHOT, temperature=0, top_p=0,
                                            max_tokens=MAX_TOKENS)
    text = answer.choices[0].message.content or ""
    assert not any(m in text for m in MARKERS)
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens < MAX_TOKENS

    streamed = client.chat.completions.create(model="gemma", messages=FEW_SHOT, temperature=0, top_p=0,
                                              max_tokens=MAX_TOKENS, stream=True)
    pieces, finish = [], None
    for chunk in streamed:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert not any(m in "".join(pieces) for m in MARKERS) and finish == "stop"  # no partial marker leaked


def test_a_messages_answer_with_tools_offered_ends_at_the_marker_as_end_turn(server):
    messages = [{"role": "user", "content": m["content"]} if m["role"] == "user" else m for m in FEW_SHOT]
    functions = [{"type": "function", "function": {"name": READ["name"], "description": READ["description"],
                                                   "parameters": READ["input_schema"]}}]
    raw = raw_continuation(server, messages, functions)
    assert any(m in raw for m in MARKERS) and "<tool_call>" not in raw.split("<|im_")[0]  # prose, then a marker
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=240)
    answer = client.messages.create(model="gemma", messages=messages, tools=[READ], max_tokens=MAX_TOKENS,
                                    extra_body={"temperature": 0, "top_k": 1})  # the SDK dropped `temperature`
    text = "".join(block.text for block in answer.content if block.type == "text")
    assert not any(m in text for m in MARKERS)
    # The gateway's own stop, not one of the client's: an ordinary end of turn.
    assert answer.stop_reason == "end_turn" and answer.stop_sequence is None
    assert answer.usage.output_tokens < MAX_TOKENS
