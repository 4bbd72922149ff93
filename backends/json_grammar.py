"""JSON generation grammars that only admit strictly valid JSON, and the check behind them.

Every grammar-constrained generation (tool calls, `response_format` json_object and
json_schema, and whatever comes next) gets its grammar from `json_grammar`, so a fix
here reaches all of them. llama-cpp-python's `json_schema_to_gbnf` lets a string hold
any character but `"` and `\\`, raw control characters included (a raw newline inside
a string is then invalid JSON for `json.loads` and every strict parser), and lets a
`\\u` escape name a lone UTF-16 surrogate (text that cannot be encoded as UTF-8).
llama.cpp's own JSON grammar excludes `\\x00-\\x1F` and `\\x7F`; so do we, and we admit
only `\\u` escapes of real characters.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from backends.base import Delta
from backends.errors import BackendError, UpstreamError

_HEX = "[0-9a-fA-F]"
# One character inside a JSON string: anything printable but `"` and `\`, or a valid escape.
# `\u` escapes stop short of the surrogates D800-DFFF (characters beyond U+FFFF are written raw).
SAFE_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] ' + f"{_HEX} {_HEX} {_HEX}"
    + f' | [dD] [0-7] {_HEX} {_HEX}))'
)
# Added to every negated character class (they only ever occur inside JSON strings: in the
# `char` rule, in a `pattern`'s `.` and `[^...]`), so none admits a quote, a backslash or a control.
_NEVER_RAW = r'"\\\x00-\x1F\x7F'


class ConstrainedOutputError(UpstreamError):
    """A grammar-constrained generation that is still not valid JSON: the gateway's failure
    (answered 500 `constrained_output_invalid`), never the caller's."""

    def __init__(self, message: str):
        super().__init__(message, status=500, code="constrained_output_invalid")


def json_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar of the JSON documents that `schema` allows, strict JSON only."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(_annotations_mean_any(schema)))
    except Exception as exc:  # noqa: BLE001 - the converter asserts on what it cannot express
        raise BackendError(f"this JSON Schema cannot be turned into a generation grammar: {exc}") from None
    lines = [f"char ::= {SAFE_CHAR}" if line.startswith("char ::= ") else _strict_negations(line)
             for line in grammar.splitlines()]
    return "\n".join(lines)


def response_grammar(response_format: dict | None) -> str | None:
    """OpenAI `response_format`: json_object -> any JSON object; json_schema -> that schema."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    if response_format.get("type") == "json_object":
        return json_grammar({"type": "object"})
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BackendError("response_format.json_schema.schema must be a JSON Schema object")
        return json_grammar(schema)
    raise BackendError(f"response_format type {response_format.get('type')!r} is not supported")


def checked_json(deltas: Iterator[Delta]) -> Iterator[Delta]:
    """Pass a constrained answer through, and fail it before its last delta if it ended
    (not at max_tokens, nor at a stop sequence the client chose) as invalid JSON."""
    text = ""
    for delta in deltas:
        text += delta.text
        if delta.finish_reason == "stop" and delta.stop_sequence is None:
            try:
                json.loads(text)
            except ValueError as exc:
                raise ConstrainedOutputError(f"the model's grammar-constrained answer is not valid JSON: {exc}") from None
        yield delta


def _strict_negations(rule: str) -> str:
    """Add `"`, `\\` and the control characters to every `[^...]` class of a GBNF rule
    (quoted literals and other classes are copied as they are)."""
    out: list[str] = []
    i = 0
    while i < len(rule):
        closing = {'"': '"', "[": "]"}.get(rule[i])
        if closing is None:
            out.append(rule[i])
            i += 1
            continue
        end = i + 1
        while end < len(rule) and rule[end] != closing:
            end += 2 if rule[end] == "\\" else 1
        token = rule[i:end + 1]
        out.append("[^" + _NEVER_RAW + token[2:] if token.startswith("[^") else token)
        i = end + 1
    return "".join(out)


# Keywords that describe a value without constraining it: a schema made of these only allows any value.
ANNOTATIONS = {"description", "title", "examples", "default", "$comment", "deprecated", "readOnly", "writeOnly",
               "$schema", "$id"}
# Where a schema holds schemas: one, a list of them, or a map of names to them.
SUBSCHEMA, SUBSCHEMA_LISTS, SUBSCHEMA_MAPS = (
    ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"),
    ("anyOf", "oneOf", "allOf", "prefixItems"),
    ("properties", "patternProperties", "$defs", "definitions"),
)


# Length bounds above this are dropped. The converter unrolls `maxLength: N` into N nested optional
# characters (and `maxItems` alike): Claude Code's Workflow tool says `maxLength: 524288`, a 4 MB grammar
# whose nesting overflowed the engine thread's stack, a segfault of the whole gateway at the first tool
# call. The output budget (max_tokens, grammar_max_tokens) bounds such values long before these limits.
MAX_UNROLLED = 1000
_BOUNDS = ("maxLength", "maxItems")


def _annotations_mean_any(schema: Any) -> Any:
    """`{"description": ...}` alone means "any value" in JSON Schema (agents such as Claude Code send
    such properties), but llama-cpp-python's converter rejects it; `{}` it reads as any value. Length
    bounds above MAX_UNROLLED are dropped on the way (see there)."""
    if not isinstance(schema, dict):
        return schema
    if schema and set(schema) <= ANNOTATIONS:
        return {}
    out = {k: v for k, v in schema.items()
           if not (k in _BOUNDS and isinstance(v, (int, float)) and v > MAX_UNROLLED)}
    for key in SUBSCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = _annotations_mean_any(out[key])
    for key in SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_annotations_mean_any(item) for item in out[key]]
    for key in SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _annotations_mean_any(item) for name, item in out[key].items()}
    return out
