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

from backends.base import BackendError
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


def parse_call(text: str) -> dict[str, Any]:
    """Turn generated call JSON (a finished generation under the call grammar) into an OpenAI tool call.
    The grammar admits only valid calls, so a call that does not parse is the gateway's failure."""
    try:
        data = json.loads(text)
        name, arguments = data["name"], data["arguments"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConstrainedOutputError(f"the model's grammar-constrained tool call is not valid JSON: {exc}") from None
    return _call(name, json.dumps(arguments, ensure_ascii=False))


_PARTIAL = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*', re.DOTALL)


def partial_calls(text: str) -> list[dict[str, Any]]:
    """A call cut short by max_tokens, as OpenAI returns one (finish_reason "length"): its
    name, and its arguments as far as they got (not valid JSON). None before the name is complete."""
    try:
        return [parse_call(text)]  # the call closed on the budget's last token
    except ConstrainedOutputError:
        pass
    head = _PARTIAL.match(text)
    if head is None:
        return []
    return [_call(json.loads(head.group(1)), text[head.end():])]


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}
