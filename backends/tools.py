"""Engine-independent pieces of tool (function) calling.

Any chat model can call tools this way, not only ones trained on a given
format: the tools are described in a system message, the model signals a call
with a `<tool_call>` marker, and the call itself is generated under a JSON
grammar built from the tools' parameter schemas, so `arguments` always
validates against the declared schema.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from backends.errors import BackendError
from backends.json_grammar import ConstrainedOutputError

MARKER = "<tool_call>"
END_MARKER = "</tool_call>"

TOOL_PROMPT = (
    "You can call functions. The available functions, as JSON Schema, are:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with only " + MARKER + '{{"name": <function name>, "arguments": <arguments object>}}'
    + END_MARKER + ". Otherwise answer the user directly."
)


def functions_of(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BackendError(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        out.append(function)
    return out


def choose(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[str, list[dict[str, Any]]]:
    """Return (mode, functions): mode is "none", "auto" or "required"."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise BackendError("tool_choice needs `tools`")
        return "none", []
    functions = functions_of(tools)
    if tool_choice in (None, "auto"):
        return "auto", functions
    if tool_choice == "none":
        return "none", functions
    if tool_choice == "required":
        return "required", functions
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise BackendError(f"tool_choice names function {name!r}, which is not in `tools`")
        return "required", chosen
    raise BackendError(f"tool_choice must be 'none', 'auto', 'required' or a named function, not {tool_choice!r}")


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return params


def call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema of one call: {"name": <one of the functions>, "arguments": <its parameters>}.

    Each function's `$defs` (what pydantic and `openai.pydantic_function_tool` emit for nested
    models) move to the root, renamed per function, so every `$ref` still resolves."""
    defs: dict[str, Any] = {}
    options = []
    for index, function in enumerate(functions):
        params = json.loads(json.dumps(_parameters(function)))  # a private copy to rewrite
        local = {**params.pop("$defs", {}), **params.pop("definitions", {})}
        prefix = f"f{index}_" if len(functions) > 1 else ""
        renames = {f"#/$defs/{k}": f"#/$defs/{prefix}{k}" for k in local}
        renames.update({f"#/definitions/{k}": f"#/$defs/{prefix}{k}" for k in local})
        params = _rewrite_refs(params, renames)
        defs.update({prefix + k: _rewrite_refs(v, renames) for k, v in local.items()})
        options.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": params},
            "required": ["name", "arguments"],
        })
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "$defs": defs} if defs else schema


def _rewrite_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (renames.get(v, v) if k == "$ref" and isinstance(v, str) else _rewrite_refs(v, renames))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node


def with_tool_prompt(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Describe the tools in the system message and turn earlier calls and results into text,
    so templates that know nothing about tools still show the model the whole exchange."""
    described = TOOL_PROMPT.format(tools="\n".join(json.dumps(f, ensure_ascii=False) for f in functions))
    out: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = [MARKER + json.dumps({"name": c["function"]["name"],
                                          "arguments": _loads(c["function"].get("arguments") or "{}")}) + END_MARKER
                     for c in message.pop("tool_calls") if c.get("function")]
            message["content"] = ((message.get("content") or "") + "".join(calls)).strip()
        if message.get("role") in ("tool", "function"):
            message = {"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"}
        message.pop("tool_call_id", None)
        out.append(message)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{described}".strip()}
    else:
        out.insert(0, {"role": "system", "content": described})
    return out


def without_tools(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For tool_choice "none": keep the history readable, describe no tools."""
    return [m for m in with_tool_prompt(messages, [])[1:]] if messages and messages[0].get("role") != "system" \
        else [{**messages[0]}] + with_tool_prompt(messages[1:], [])[1:]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def allows_parallel(tool_choice: Any, parallel_tool_calls: bool) -> bool:
    """Several calls in one turn: OpenAI's default, except that a named tool_choice forces
    exactly one call of that function."""
    return parallel_tool_calls and not isinstance(tool_choice, dict)


def parse_calls(text: str) -> list[dict[str, Any]]:
    """Turn what `calls_grammar` generated (`{call}</tool_call><tool_call>{call}...`) into
    OpenAI tool calls, each with its own id. A call identical to an earlier one (same name,
    same arguments: small models like to repeat themselves) is dropped. A last call cut short
    by the token budget is dropped when complete ones precede it; with none complete it is an
    error, as for one call."""
    return [_openai_call(data) for data in _unique(_decoded_calls(text))]


def repeats_a_call(text: str) -> bool:
    """Whether the last complete call in `text` repeats an earlier one (generation can stop there)."""
    decoded = _decoded_calls(text, partial_ok=True)
    return len(decoded) > 1 and len(_unique(decoded)) < len(decoded)


def _unique(decoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for data in decoded:
        key = json.dumps(data, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(data)
    return out


def _decoded_calls(text: str, partial_ok: bool = False) -> list[dict[str, Any]]:
    calls, _rest = _split_calls(text)
    if not calls and not partial_ok:
        raise ConstrainedOutputError("the model's grammar-constrained tool call is not valid JSON")
    return calls


def complete_calls(text: str) -> int:
    """How many complete calls `text` begins with."""
    return len(_split_calls(text)[0])


def _split_calls(text: str) -> tuple[list[dict[str, Any]], str]:
    """The complete calls at the start of `text` (between the markers), and what follows them."""
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while True:
        for token in (END_MARKER, MARKER):
            pos = len(text) - len(text[pos:].lstrip())
            if text.startswith(token, pos):
                pos += len(token)
        pos = len(text) - len(text[pos:].lstrip())
        if pos >= len(text):
            break
        try:
            data, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        calls.append(data)
    return calls, text[pos:]


_PARTIAL = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*', re.DOTALL)


def partial_calls(text: str) -> list[dict[str, Any]]:
    """Calls cut short by max_tokens, as OpenAI returns them (finish_reason "length"): the
    complete ones, then the last one's name and its arguments as far as they got (not valid
    JSON); nothing of a last call whose name is not complete."""
    calls, rest = _split_calls(text)
    out = [_openai_call(data) for data in _unique(calls)]
    head = _PARTIAL.match(rest)
    if head is not None:
        out.append(_call(json.loads(head.group(1)), rest[head.end():]))
    return out


def streamed_calls(text: str, ids: list[str], raw: list[str], partial: bool = False) -> list[dict[str, Any]]:
    """`parse_calls` (or with `partial`, `partial_calls`) of a streamed generation, keeping the ids and the
    raw arguments text the stream already sent (backends/tool_stream.py), so that the streamed fragments
    concatenate to the final arguments. Repeats are dropped as `parse_calls` drops them."""
    calls, rest = _split_calls(text)
    if not calls and not partial:
        raise ConstrainedOutputError("the model's grammar-constrained tool call is not valid JSON")
    out, seen = [], set()
    for index, data in enumerate(calls):
        call = _openai_call(data)
        key = json.dumps(data, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if index < len(raw):
            call["id"], call["function"]["arguments"] = ids[index], raw[index]
        out.append(call)
    head = _PARTIAL.match(rest) if partial else None
    if head is not None:
        index = len(calls)
        call = _call(json.loads(head.group(1)), raw[index] if index < len(raw) else rest[head.end():])
        if index < len(ids):
            call["id"] = ids[index]
        out.append(call)
    return out


def calls_grammar(call_grammar: str) -> str:
    """A GBNF grammar for one or more calls, each under `call_grammar` (the JSON grammar of
    one call, whose start rule is `root`), separated by the markers the tool prompt shows.
    The model may stop after any complete call."""
    renamed = _rename_rule(call_grammar, "root", "nexa-tool-call")
    return (f'root ::= nexa-tool-call ( "{END_MARKER}" ( "\\n"? "{MARKER}" nexa-tool-call "{END_MARKER}" )* )?\n'
            + renamed)


def _rename_rule(grammar: str, old: str, new: str) -> str:
    """Rename a GBNF rule and its references, leaving quoted literals and [character classes] alone."""
    out, i = [], 0
    while i < len(grammar):
        char = grammar[i]
        if char in "\"[":
            close = "\"" if char == "\"" else "]"
            j = i + 1
            while j < len(grammar) and grammar[j] != close:
                j += 2 if grammar[j] == "\\" else 1
            out.append(grammar[i:j + 1])
            i = j + 1
        elif char.isalnum() or char in "-_":
            j = i
            while j < len(grammar) and (grammar[j].isalnum() or grammar[j] in "-_"):
                j += 1
            word = grammar[i:j]
            out.append(new if word == old else word)
            i = j
        elif char == "#":  # a comment runs to the end of the line
            j = grammar.find("\n", i)
            j = len(grammar) if j < 0 else j
            out.append(grammar[i:j])
            i = j
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _openai_call(data: Any) -> dict[str, Any]:
    try:
        name, arguments = data["name"], data["arguments"]
    except (TypeError, KeyError) as exc:
        raise ConstrainedOutputError(f"the model's grammar-constrained tool call is not valid: {exc!r}") from None
    return _call(name, json.dumps(arguments, ensure_ascii=False))


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}
