"""Real coding agents against the gateway: Claude Code `-p` and Codex `exec`, one task with a tool use.

    .venv/bin/python bench/agents.py [--clients claude,codex] [--timeout 600] [--bin ~/.cache/nexa/agents/node_modules/.bin]
        [--source gemma] [--nctx 32768] [--max-tokens-limit N] [--claude-max-output N]

Each client gets a fresh gateway (`nexa server -c manifest`: Gemma 3 270M, `nctx: 32768`, aliases for the
names the clients ask for, preloaded, so model load is not in the wall time) and a temporary working
folder holding `notes.txt` with one fact; the prompt asks the agent to read the file and answer from it.
Claude Code speaks Anthropic Messages, Codex the Responses API; both go through a recording proxy
(bench/agent_proxy.py) so that every request's body can be read afterwards (`--out`).

Reported per client: wall time of the client process, and per request the gateway got: route, status,
tools sent, max_tokens, prompt / cached / generated tokens, TTFT, prefill and decode tokens/s (the
gateway's JSON `generation` log lines), whether the agent called a tool and whether the file's fact
came back in a tool result and in the final answer (the client's own JSON transcript), and the
gateway's peak RSS.

Bounding a looping answer, as a user of a small local model would (§18 of bench/RESULTS.md): Claude Code
asks for `max_tokens` 32,000 unless `CLAUDE_CODE_MAX_OUTPUT_TOKENS` says less (`--claude-max-output N`
sets it); the manifest's `max_tokens_limit` (`--max-tokens-limit`) must be no lower, or the gateway
answers 400. Codex sends no `max_output_tokens` at all (0.171 has no `model_max_output_tokens` key), so
the gateway's `max_tokens_limit` is what ends its answer. The manifest has no default sampling
settings (temperature, repeat penalty), and neither client sends any: the model samples at 1.0.
Install the clients first (not part of the project):
`npm install --no-audit --no-fund --prefix ~/.cache/nexa/agents @openai/codex @anthropic-ai/claude-code`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent_proxy import Recorder  # noqa: E402
from bench.agent_replay import REPLAYS  # noqa: E402
from bench.common import free_port, load_average, machine, nexa, proc_mb, table, write_manifest  # noqa: E402

FACT = "The release codename is AMBER-FALCON-7."
NOTES = f"Project notes\n\n{FACT}\nThe build runs on Fridays.\n"
PROMPT = "Read the file notes.txt in the current directory and tell me the release codename it gives."
KEY = "bench-agent-key"
# Names the clients ask for, served by the one Gemma model through aliases.
CLAUDE_MODEL, CLAUDE_FAST, CODEX_MODEL = "gemma-agent", "gemma-agent-fast", "gemma-codex"


def manifest(args: argparse.Namespace) -> Path:
    model = {"name": args.source, "source": args.source, "aliases": [CLAUDE_MODEL, CLAUDE_FAST, CODEX_MODEL],
             "nctx": args.nctx, "n_threads": args.threads, "options": {"n_threads_batch": args.threads},
             "preload": True, "timeout_s": args.timeout, "queue_timeout_s": args.timeout,
             "max_tokens_limit": args.max_tokens_limit}
    model.update(json.loads(args.model_extra))
    return write_manifest([model], {"log_format": "json", "api_keys": [KEY], "state": "memory://"})


def claude(binary: Path, url: str, home: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    env = {"HOME": str(home), "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_MODEL": CLAUDE_MODEL,
           "ANTHROPIC_SMALL_FAST_MODEL": CLAUDE_FAST, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1"}
    if args.claude_max_output:  # its max_tokens (default 32,000); a looping answer ends there
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(args.claude_max_output)
    return [str(binary / "claude"), "-p", PROMPT, "--output-format", "stream-json", "--verbose"], env


def codex(binary: Path, url: str, home: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{CODEX_MODEL}"\nmodel_provider = "nexa"\nweb_search = "disabled"\n\n'  # hosted: a 400 (README)
        '[model_providers.nexa]\nname = "nexa"\n'
        f'base_url = "{url}/v1"\nwire_api = "responses"\nenv_key = "NEXA_KEY"\n')
    env = {"HOME": str(home), "CODEX_HOME": str(codex_home), "NEXA_KEY": KEY}
    return [str(binary / "codex"), "exec", "--skip-git-repo-check", "-s", "read-only", "--json", PROMPT], env


CLIENTS = {"claude": claude, "codex": codex}


# -- what the agent did, from its own JSON transcript -------------------------------------------


def transcript(lines: list[dict]) -> dict:
    """Tool calls made, whether a tool's output held the fact, the final answer (both clients' JSONL)."""
    calls, fact_read, answer = [], False, ""
    for event in lines:
        if event.get("type") == "assistant":  # Claude Code stream-json
            for block in event.get("message", {}).get("content", []):
                if block.get("type") == "tool_use":
                    calls.append(f"{block.get('name')}({json.dumps(block.get('input'))[:60]})")
                elif block.get("type") == "text":
                    answer = block.get("text", "")
        elif event.get("type") == "user":
            fact_read |= "AMBER-FALCON-7" in json.dumps(event.get("message", {}))
        elif event.get("type") == "result":
            answer = event.get("result") or answer
        item = event.get("item") or {}  # Codex exec --json: item.started / item.completed
        if event.get("type") == "item.completed":
            kind = item.get("type")
            if kind in ("command_execution", "function_call", "mcp_tool_call", "file_change", "web_search"):
                calls.append(f"{kind}({(item.get('command') or item.get('name') or '')[:60]})")
                fact_read |= "AMBER-FALCON-7" in json.dumps(item)
            elif kind == "agent_message":
                answer = item.get("text", "")
    return {"calls": calls, "fact_read": fact_read, "answer": answer.strip(),
            "answer_has_fact": "AMBER-FALCON-7" in answer}


def jsonl(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


# -- what the gateway did, from its log and the recorded requests ----------------------------------


def requests_table(log: Path, records: list[dict]) -> tuple[list[list], dict]:
    events = jsonl(log.read_text(errors="replace"))
    generations = {e.get("request_id"): e for e in events if e.get("event") == "generation"}
    statuses = {e.get("request_id"): e for e in events if e.get("event") == "request"}
    rows, totals = [], {"prompt": 0, "cached": 0, "completion": 0, "errors": 0}
    for record in records:
        body = record.get("body") if isinstance(record.get("body"), dict) else {}
        gen = generations.get(record["id"], {})
        status = record.get("status", statuses.get(record["id"], {}).get("status", "-"))
        totals["errors"] += status != 200
        for key, field in (("prompt", "prompt_tokens"), ("cached", "cached_tokens"), ("completion", "completion_tokens")):
            totals[key] += gen.get(field, 0)
        rows.append([record["id"][-4:], f"{record['method']} {record['path'].split('?')[0]}", status,
                     body.get("model", "-"), len(body.get("tools") or []), body.get("max_tokens") or
                     body.get("max_output_tokens") or "-", gen.get("prompt_tokens", "-"), gen.get("cached_tokens", "-"),
                     gen.get("completion_tokens", "-"), f"{gen['ttft_ms'] / 1000:.1f}" if gen else "-",
                     gen.get("prefill_tokens_per_s", "-"), gen.get("decode_tokens_per_s", "-"),
                     f"{record.get('seconds', 0):.1f}"])
    return rows, totals


def run_client(name: str, args: argparse.Namespace, out: Path) -> None:
    folder = out / name
    work, home, captured = folder / "work", folder / "home", folder / "requests"
    for path in (work, home, captured):
        path.mkdir(parents=True, exist_ok=True)
    (work / "notes.txt").write_text(NOTES)
    server = nexa("-c", str(manifest(args)), port=free_port(), timeout=900)
    proxy = Recorder(server.url, captured)
    try:
        argv, env = CLIENTS[name](Path(args.bin).expanduser(), proxy.url, home, args)
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "TERM": "dumb", **env}
        load_before = load_average()
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout,
                                  stdin=subprocess.DEVNULL)
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code = "timeout"
            stdout = (exc.stdout or b"").decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr = (exc.stderr or b"").decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        wall = time.perf_counter() - started
        peak = proc_mb(server.pids(), "status", "VmHWM:")
        time.sleep(0.5)  # the last generation line is written when its stream closes
        first = next((r["body"] for r in proxy.records() if isinstance(r.get("body"), dict) and r["body"].get("tools")),
                     None)
        replay = REPLAYS[name](server.url, KEY, first, work, args.replay_tokens) if args.replay and first else []
    finally:
        proxy.close()
        server.stop()
    (folder / "stdout.jsonl").write_text(stdout)
    (folder / "stderr.txt").write_text(stderr)
    log = Path(server.log.name)
    (folder / "gateway.log").write_text(log.read_text(errors="replace"))
    rows, totals = requests_table(log, proxy.records())
    seen = transcript(jsonl(stdout))
    client_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\n### {name}: wall {wall:.1f} s, exit {code}, {len(rows)} requests ({totals['errors']} not 200), "
          f"prompt {totals['prompt']} tokens of which cached {totals['cached']}, generated {totals['completion']}; "
          f"gateway peak RSS {peak:.0f} MB, largest child process (gateway or client) {client_peak:.0f} MB; "
          f"load {load_before} -> {load_average()}")
    print(table(["#", "request", "status", "model", "tools", "max_tok", "prompt", "cached", "gen", "TTFT s",
                 "prefill t/s", "decode t/s", "total s"], rows))
    print(f"tool calls: {seen['calls'] or 'none'}; fact in a tool result: {seen['fact_read']}; "
          f"fact in the answer: {seen['answer_has_fact']}")
    print(f"answer: {seen['answer'][:300]!r}")
    if code not in (0, "timeout") or totals["errors"]:
        print(f"stderr tail: {stderr[-1500:]}")
    if replay:
        generations = {e.get("request_id"): e for e in jsonl(log.read_text(errors="replace"))
                       if e.get("event") == "generation"}
        print(f"replay of the client's first request on the same gateway, the tool call forced:")
        print(table(["step", "status", "stop", "prompt", "cached", "gen", "prefill t/s", "s", "output"],
                    [[s["step"], s["status"], s["stop"], s["prompt"], s["cached"], s["generated"],
                      generations.get(f"replay-{i + 1:04d}", {}).get("prefill_tokens_per_s", "-"),
                      f"{s['seconds']:.1f}", str(s["output"])[:110]] for i, s in enumerate(replay)]))
    print(f"(transcript, requests and gateway log: {folder})")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="claude,codex")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per client run")
    parser.add_argument("--bin", default="~/.cache/nexa/agents/node_modules/.bin", help="folder of claude and codex")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source", default="gemma", help="catalog name of the served model (gemma, smollm2)")
    parser.add_argument("--nctx", type=int, default=32768)
    parser.add_argument("--max-tokens-limit", type=int, default=32768, help="the model's max_tokens_limit "
                        "(Claude Code asks for up to 32,000 tokens)")
    parser.add_argument("--claude-max-output", type=int, help="CLAUDE_CODE_MAX_OUTPUT_TOKENS: the max_tokens "
                        "Claude Code asks for (keep --max-tokens-limit at least this)")
    parser.add_argument("--model-extra", default="{}", help="JSON merged into the model's manifest entry")
    parser.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                        help="after the client, replay its first request with the tool call forced (agent_replay.py)")
    parser.add_argument("--replay-tokens", type=int, default=256, help="max_tokens of each replayed request")
    parser.add_argument("--out", help="folder for transcripts, request bodies and gateway logs")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="nexa-agents-"))
    out.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(f"model {args.source}, nctx {args.nctx}, {args.threads} threads, max_tokens_limit {args.max_tokens_limit}, "
          f"CLAUDE_CODE_MAX_OUTPUT_TOKENS {args.claude_max_output or 'unset'}, timeout {args.timeout} s per client, "
          f"model extra {args.model_extra}; prompt: {PROMPT!r}")
    for name in args.clients.split(","):
        run_client(name.strip(), args, out)


if __name__ == "__main__":
    main()
