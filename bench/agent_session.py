"""Replay of a coding agent's session against the gateway, prompt cache off vs on (and llama.cpp's C++
`llama-server` with its `--cache-ram` default, when built: `--llama-server PATH`).

    .venv/bin/python bench/agent_session.py [--sizes 4000,16000] [--turns 5] [--threads 2]

A main conversation (a long system prompt, 8 tool definitions, a history grown to about `size` tokens)
gets `turns` turns; before each turn after the first, the agent sends a side call on another prefix (a
title, a summary check), as Claude Code and Codex do. Each request is a streamed chat completion with
the tools; the table gives, per turn: time to first token, prompt and cached tokens, prefill and decode
tokens/s (prefill: evaluated tokens / TTFT), and each server's peak RSS. Gemma 3 270M, `nctx: 32768`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Process, free_port, machine, nexa, proc_mb, table, write_manifest  # noqa: E402

TOOLS = [
    {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {arg: {"type": "string", "description": f"the {arg}"} for arg in args},
        "required": list(args)}}}
    for name, description, args in [
        ("read_file", "Read a file of the repository and return its text.", ("path",)),
        ("write_file", "Write text to a file of the repository, replacing it.", ("path", "content")),
        ("list_dir", "List the entries of a folder of the repository.", ("path",)),
        ("grep", "Search the repository for a regular expression.", ("pattern", "path")),
        ("run_shell", "Run a shell command in the repository and return its output.", ("command",)),
        ("apply_patch", "Apply a unified diff to the repository.", ("patch",)),
        ("web_fetch", "Fetch a web page and return its text.", ("url",)),
        ("todo_write", "Replace the task list with these items.", ("items",)),
    ]
]
SYSTEM = ("You are a coding agent. You work in the user's repository with the tools below. Read before you "
          "write, keep changes small, run the tests after each change, and explain what you did. ") * 12


def history(size_tokens: int) -> list[dict]:
    """A scripted conversation of about `size_tokens` tokens: file reads and their (made-up) contents."""
    messages = [{"role": "system", "content": SYSTEM}]
    step = 0
    while sum(len(m["content"]) for m in messages) < size_tokens * 4:  # ~4 characters per token
        body = "\n".join(f"def function_{step}_{i}(value):\n    return value * {i} + {step}  # helper {i}"
                         for i in range(25))
        messages += [
            {"role": "user", "content": f"Look at src/module_{step}.py and tell me what it does."},
            {"role": "assistant", "content": "", "tool_calls": [{"id": f"call_{step}", "type": "function", "function": {
                "name": "read_file", "arguments": json.dumps({"path": f"src/module_{step}.py"})}}]},
            {"role": "tool", "tool_call_id": f"call_{step}", "content": body},
            {"role": "assistant", "content": f"src/module_{step}.py defines 25 small arithmetic helpers."},
        ]
        step += 1
    return messages


SIDE_CALLS = [
    [{"role": "system", "content": "Write a five-word title for this conversation. " * 10},
     {"role": "user", "content": "The user asks a coding agent to explain the modules of a repository."}],
    [{"role": "system", "content": "Answer with yes or no only: is the user's message a new topic? " * 10},
     {"role": "user", "content": "Now look at the next module, please."}],
]


def ask(t: int) -> dict:
    """The user's message of turn `t + 1` of the main conversation."""
    return {"role": "user", "content": f"Turn {t}: what should we change next?"}


def reply(t: int) -> dict:
    """The agent's (scripted) answer to turn `t + 1`, kept in the history of the next turns."""
    return {"role": "assistant", "content": f"I suggest we refactor module {t}."}


def turn(client: httpx.Client, url: str, messages: list[dict], tools: bool, max_tokens: int) -> dict:
    """One streamed request: timings, usage, and `text` (the content and tool-call fragments as streamed,
    to compare greedy answers between sides: bench/agent_restart.py)."""
    body = {"model": "gemma", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if tools:
        body["tools"] = TOOLS
    started = time.perf_counter()
    first, usage, pieces = None, {}, []
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            usage = data.get("usage") or usage
            delta = ((data.get("choices") or [{}])[0].get("delta") or {})
            if first is None and (delta.get("content") or delta.get("tool_calls")):
                first = time.perf_counter() - started
            pieces.append(delta.get("content") or "")
            pieces += [json.dumps(call.get("function") or {}) for call in delta.get("tool_calls") or []]
    total = time.perf_counter() - started
    first = first or total
    prompt = usage.get("prompt_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    completion = usage.get("completion_tokens", 0)
    return {"ttft": first, "prompt": prompt, "cached": cached, "completion": completion, "text": "".join(pieces),
            "prefill_tps": (prompt - cached) / first if first else 0.0,
            "decode_tps": (completion - 1) / (total - first) if completion > 1 and total > first else 0.0}


def session(server: Process, size: int, turns: int, max_tokens: int) -> list[list]:
    rows = []
    messages = history(size)
    # A connection per request: llama-server closed a kept-alive connection just as the next request went
    # out on it ("Server disconnected without sending a response", RESULTS.md §19); loopback connects cost ~0.1 ms.
    for t in range(turns):
        if t:
            with httpx.Client(timeout=900) as client:
                side = turn(client, server.url, SIDE_CALLS[t % 2], tools=False, max_tokens=8)
            rows.append([f"side {t}", f"{side['ttft']:.2f}", side["prompt"], side["cached"],
                         f"{side['prefill_tps']:.0f}", f"{side['decode_tps']:.1f}"])
        messages = messages + [ask(t)]
        with httpx.Client(timeout=900) as client:
            result = turn(client, server.url, messages, tools=True, max_tokens=max_tokens)
        rows.append([f"turn {t + 1}", f"{result['ttft']:.2f}", result["prompt"], result["cached"],
                     f"{result['prefill_tps']:.0f}", f"{result['decode_tps']:.1f}"])
        messages = messages + [reply(t)]
    return rows


def gemma(nctx: int, threads: int) -> dict:
    """The manifest entry every side of the session serves (`gemma` of the catalog, preloaded)."""
    return {"name": "gemma", "source": "gemma", "nctx": nctx, "n_threads": threads,
            "options": {"n_threads_batch": threads}, "preload": True, "timeout_s": 1800}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4000,16000")
    parser.add_argument("--turns", default="5", help="turns per size, one number or one per size (5,3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nctx", type=int, default=32768)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--sides", default="cache off,cache on", help="comma-separated: cache off, cache on, llama-server")
    parser.add_argument("--llama-server", help="path of llama.cpp's C++ llama-server binary, if built")
    args = parser.parse_args()
    model = gemma(args.nctx, args.threads)

    def gateway(**extra):
        return lambda: nexa("-c", str(write_manifest([{**model, **extra}])), port=free_port(), timeout=600)

    servers = {"cache off": gateway(prompt_cache=0), "cache on": gateway()}
    if args.llama_server:
        from gateway.manifest import hub
        from schemas.manifest import ModelSpec

        path = hub.fetch(ModelSpec(name="gemma", source="gemma"))

        def cpp():
            port = free_port()
            return Process([args.llama_server, "-m", str(path), "-a", "gemma", "-np", "1", "-c", str(args.nctx),
                            "-t", str(args.threads), "-tb", str(args.threads), "--jinja", "--host", "127.0.0.1",
                            "--port", str(port)], port, ready_path="/health", timeout=600)
        servers["llama-server"] = cpp
    print(machine())
    print(f"Gemma 3 270M Q4_K_M, nctx {args.nctx}, {args.threads} threads, turns {args.turns}, "
          f"{args.max_tokens} tokens per turn, greedy")
    sizes = [int(s) for s in args.sizes.split(",")]
    turns = [int(t) for t in args.turns.split(",")]
    turns += [turns[-1]] * (len(sizes) - len(turns))
    for size, n_turns in zip(sizes, turns):
        for name in args.sides.split(","):
            name = name.strip()
            if name not in servers:
                continue
            server = servers[name]()
            try:
                rows = session(server, size, n_turns, args.max_tokens)
                peak = proc_mb(server.pids(), "status", "VmHWM:")
            finally:
                server.stop()
            print(f"\n### ~{size} tokens, {name} (peak RSS {peak:.0f} MB, load {machine().rsplit(' ', 3)[-3:]})")
            print(table(["request", "TTFT s", "prompt", "cached", "prefill tok/s", "decode tok/s"], rows))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
