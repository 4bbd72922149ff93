"""The gateway's side of an agent's tool use, with the agent's own first request (for bench/agents.py).

A 270M base model seldom chooses to call a tool on its own, so a real client's run may never reach
the second turn. This replays the client's recorded first request on the same gateway, right after
the client's run, with the tool call forced (`tool_choice` naming the client's file-reading tool),
answers the call with the file as the client would, and asks for the answer (`tool_choice` as the
client sent it). It shows that the client's tool definitions reach the model, that a call on its
schema comes back in the client's protocol, and what the second turn costs: its cached tokens are
the prompt cache at work on the real prompt (the first replayed request itself is a near-copy of the
client's, so it is mostly cached too).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx


def _post(client: httpx.Client, url: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    response = client.post(url, json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return {"_status": response.status_code, "body": response.text[:300]}, seconds
    return {**response.json(), "_status": 200}, seconds


def anthropic(base: str, key: str, first: dict, work: Path, max_tokens: int) -> list[dict]:
    """Claude Code's request with `Read` forced, then its tool_result and the answer."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "x-request-id": "replay-0001"}
    body = {**first, "stream": False, "max_tokens": max_tokens, "tool_choice": {"type": "tool", "name": "Read"}}
    steps = []
    with httpx.Client(timeout=1800, headers=headers) as client:
        answer, seconds = _post(client, base + "/v1/messages", body)
        steps.append({"step": "forced Read", "seconds": seconds, **_anthropic_summary(answer)})
        uses = [b for b in answer.get("content", []) if b.get("type") == "tool_use"]
        if not uses:
            return steps
        use = uses[0]
        path = Path(str(use["input"].get("file_path") or ""))
        path = path if path.is_absolute() else work / path
        text = path.read_text() if path.is_file() else f"File does not exist: {path}"
        numbered = "".join(f"{n:6d}\t{line}\n" for n, line in enumerate(text.splitlines(), 1))  # as Read answers
        messages = [*first["messages"], {"role": "assistant", "content": [use]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": numbered}]}]
        body = {**first, "messages": messages, "stream": False, "max_tokens": max_tokens}
        client.headers["x-request-id"] = "replay-0002"
        answer, seconds = _post(client, base + "/v1/messages", body)
        steps.append({"step": "after tool_result", "seconds": seconds, **_anthropic_summary(answer)})
    return steps


def _anthropic_summary(answer: dict) -> dict:
    usage = answer.get("usage") or {}
    return {"status": answer["_status"], "stop": answer.get("stop_reason"),
            "prompt": usage.get("input_tokens", 0) + usage.get("cache_read_input_tokens", 0),
            "cached": usage.get("cache_read_input_tokens", 0), "generated": usage.get("output_tokens", 0),
            "output": " ".join(f"{b['name']}({json.dumps(b['input'])})" if b.get("type") == "tool_use" else
                               repr(b.get("text", ""))[:80] for b in answer.get("content") or []) or answer.get("body")}


def responses(base: str, key: str, first: dict, work: Path, max_tokens: int) -> list[dict]:
    """Codex's request with `exec_command` forced, then the command's output and the answer."""
    headers = {"authorization": f"Bearer {key}", "x-request-id": "replay-0001"}
    body = {**first, "stream": False, "max_output_tokens": max_tokens,
            "tool_choice": {"type": "function", "name": "exec_command"}}
    steps = []
    with httpx.Client(timeout=1800, headers=headers) as client:
        answer, seconds = _post(client, base + "/v1/responses", body)
        steps.append({"step": "forced exec_command", "seconds": seconds, **_responses_summary(answer)})
        calls = [item for item in answer.get("output", []) if item.get("type") == "function_call"]
        if not calls:
            return steps
        call = calls[0]
        output = (work / "notes.txt").read_text()  # what `cat notes.txt` prints, whatever command was written
        items = [*first["input"], {"type": "function_call", "call_id": call["call_id"], "name": call["name"],
                                   "arguments": call["arguments"]},
                 {"type": "function_call_output", "call_id": call["call_id"], "output": output}]
        body = {**first, "input": items, "stream": False, "max_output_tokens": max_tokens}
        client.headers["x-request-id"] = "replay-0002"
        answer, seconds = _post(client, base + "/v1/responses", body)
        steps.append({"step": "after function_call_output", "seconds": seconds, **_responses_summary(answer)})
    return steps


def _responses_summary(answer: dict) -> dict:
    usage = answer.get("usage") or {}
    out = " ".join(f"{i['name']}({i['arguments']})" if i.get("type") == "function_call" else
                   repr("".join(p.get("text", "") for p in i.get("content") or []))[:80]
                   for i in answer.get("output") or []) or answer.get("body")
    return {"status": answer["_status"], "stop": answer.get("status"), "prompt": usage.get("input_tokens", 0),
            "cached": (usage.get("input_tokens_details") or {}).get("cached_tokens", 0),
            "generated": usage.get("output_tokens", 0), "output": out}


REPLAYS = {"claude": anthropic, "codex": responses}
