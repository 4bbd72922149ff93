"""Grammar-constrained JSON is strictly valid JSON (issue 13 §2).

A seed sweep at temperature 1.0 with sampling opened up (no top-k, no min-p) of tool calls and
json_schema answers from the real SmolLM2, in-process: every answer must parse with strict
`json.loads` and validate against its schema. The same sweep under llama-cpp-python's own
grammar (strings admit raw control characters) must turn up broken answers, each a 500
`constrained_output_invalid` (the gateway's failure), never a 400 blaming the request."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import jsonschema
import pytest

from backends import json_grammar
from backends.base import ChatOptions, SamplingParams
from backends.errors import BackendError
from backends.json_grammar import ConstrainedOutputError

pytestmark = pytest.mark.timeout(900)

SEEDS = range(50)
EXPLORE = SamplingParams(max_tokens=400, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
NOTE = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 24}, "poem": {"type": "string", "maxLength": 60}},
    "required": ["title", "poem"],
}
SAVE_NOTE = {"type": "function", "function": {"name": "save_poem", "parameters": NOTE}}
# Text with real line breaks and a tab, to copy: the model then wants raw control characters inside a string.
VERSES = "Roses are red,\nthe sea is blue,\n\tand I am here."
TOOL_ASK = [{"role": "user", "content": f"Save this poem, titled Sea, exactly as written:\n{VERSES}"}]
JSON_ASK = [{"role": "user", "content": f"Give this poem, titled Sea, as JSON with title and poem:\n{VERSES}"}]


@pytest.fixture(scope="module")
def llama(smollm2_path):
    from backends.llama import LlamaBackend
    from schemas.manifest import ModelSpec

    backend = LlamaBackend.load(ModelSpec(name="smollm2", source=str(smollm2_path), nctx=1024, n_threads=1),
                                smollm2_path)
    yield backend
    backend.close()


def never() -> bool:
    return False


def tool_call(llama, seed: int) -> str:
    """The arguments of one forced call (what the gateway would send)."""
    deltas = list(llama.chat(TOOL_ASK, replace(EXPLORE, seed=seed), never,
                             ChatOptions(tools=[SAVE_NOTE], tool_choice="required")))
    assert deltas[-1].finish_reason == "tool_calls", (seed, deltas[-1])
    assert deltas[-1].tool_calls[0]["function"]["name"] == "save_poem"
    return deltas[-1].tool_calls[0]["function"]["arguments"]


def json_answer(llama, seed: int) -> str:
    deltas = list(llama.chat(JSON_ASK, replace(EXPLORE, seed=seed), never,
                             ChatOptions(response_format={"type": "json_schema",
                                                          "json_schema": {"name": "poem", "schema": NOTE}})))
    assert deltas[-1].finish_reason == "stop", (seed, deltas[-1])
    return "".join(d.text for d in deltas)


@pytest.mark.parametrize("generate", [tool_call, json_answer])
def test_every_seed_gives_strict_json_that_validates(llama, generate):
    for seed in SEEDS:
        text = generate(llama, seed)
        jsonschema.validate(json.loads(text), NOTE)  # json.loads is strict: no raw control characters


def test_the_grammar_admits_no_raw_control_character_and_no_lone_surrogate():
    grammar = json_grammar.json_grammar({"type": "object", "properties": {
        "s": {"type": "string"}, "p": {"type": "string", "pattern": "^a.[^b]$"}}})
    classes = re.findall(r"\[\^(?:\\.|[^\]\\])*\]", grammar)
    assert classes and all(r"\x00-\x1F" in c and '"' in c and "\\\\" in c for c in classes), classes
    assert 'char ::= [^"\\\\] |' not in grammar
    assert '[dD] [0-7]' in grammar  # \u escapes stop short of the surrogates
    # json_object answers and tool calls go through the same function
    assert r"\x00-\x1F" in json_grammar.response_grammar({"type": "json_object"})


def test_the_old_grammar_breaks_json_and_that_is_a_500_not_a_400(llama, monkeypatch):
    """Pins the defect: llama-cpp-python's grammar lets raw control characters into strings
    (the same sweep found them in 6 of 50 calls and 11 of 50 answers before the fix). What still
    fails to parse is the gateway's fault (ConstrainedOutputError, a 500), never a 400."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    import backends.llama as llama_mod

    monkeypatch.setattr(llama_mod, "_json_grammar", lambda schema: json_schema_to_gbnf(json.dumps(schema)))
    monkeypatch.setattr(llama_mod, "_response_grammar",
                        lambda fmt: json_schema_to_gbnf(json.dumps(fmt["json_schema"]["schema"])))
    broken = set()
    for seed in SEEDS:
        for generate in {tool_call, json_answer} - broken:
            try:
                generate(llama, seed)
            except ConstrainedOutputError as exc:
                assert exc.status == 500 and exc.code == "constrained_output_invalid"
                broken.add(generate)
            except BackendError:  # pragma: no cover - the 400 this fix replaced
                pytest.fail("a grammar failure was blamed on the request")
        if len(broken) == 2:
            break
    assert broken == {tool_call, json_answer}


def test_a_huge_length_bound_is_dropped_and_a_small_one_kept():
    # Claude Code's Workflow tool: `"maxLength": 524288` unrolled into a 4 MB grammar nested 524,288 deep,
    # which overflowed the engine thread's stack (a segfault of the gateway) at the first tool call.
    huge = json_grammar.json_grammar({"type": "object", "properties": {
        "script": {"type": "string", "maxLength": 524288},
        "steps": {"type": "array", "items": {"type": "string"}, "maxItems": 100000}}, "required": ["script"]})
    unbounded = json_grammar.json_grammar({"type": "object", "properties": {
        "script": {"type": "string"}, "steps": {"type": "array", "items": {"type": "string"}}},
        "required": ["script"]})
    assert huge == unbounded
    small = json_grammar.json_grammar({"type": "string", "maxLength": 8})
    assert small != json_grammar.json_grammar({"type": "string"}) and len(small) < 5000
