"""What the Ollama API costs over /v1: streamed `/api/chat` (NDJSON) against streamed
`/v1/chat/completions` (SSE) on one gateway, same model (SmolLM2), messages, token budget, greedy.

    .venv/bin/python bench/ollama.py [--runs 8] [--max-tokens 128]

Both routes end in the same engine call (gateway/api/ollama translates onto `open_chat`), so the
difference is the translation and the wire format: tokens/s, time to first token and the server's
CPU per token. The two sides alternate per request, in both orders, after a warm-up; the answers of
both are compared (greedy: they must be the same words).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, free_port, machine, median, nexa, stream_completion, table, write_manifest  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse.", "List ten fruits and their colours.",
           "Explain how a bicycle works."]
GREEDY = {"temperature": 0, "top_k": 1, "seed": 1}


def through_v1(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int, str]:
    return stream_completion(client, url + "/v1/chat/completions", {
        "model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "top_k": 1, "seed": 1}, text=True)


def through_ollama(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int, str]:
    """(TTFT, total seconds, completion tokens, text) of one streamed /api/chat."""
    started = time.perf_counter()
    first, tokens, pieces = None, 0, []
    body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}],
            "options": {**GREEDY, "num_predict": max_tokens}}
    with client.stream("POST", url + "/api/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            data = json.loads(line)
            if data.get("done"):
                tokens = data["eval_count"]
                continue
            piece = data["message"]["content"]
            if piece:
                pieces.append(piece)
                if first is None:
                    first = time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started, tokens, "".join(pieces)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8, help="rounds; each sends every prompt to each route")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    manifest = write_manifest([{"name": "smollm2", "source": "smollm2", "nctx": 2048, "n_threads": args.threads,
                                "options": {"n_threads_batch": args.threads}, "preload": True}])
    server = nexa("-c", str(manifest), port=free_port())
    print(f"machine at start: {machine()}")
    sides = {"/v1/chat/completions (SSE)": through_v1, "/api/chat (NDJSON)": through_ollama}
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
    cpu = dict.fromkeys(sides, 0.0)
    mismatched = 0
    pids = server.pids()
    try:
        with httpx.Client(timeout=300) as client:
            for prompt in PROMPTS:  # warm-up: first decode, connection, prefix cache of each prompt
                for run in sides.values():
                    run(client, server.url, prompt, 8)
            for round_index in range(args.runs):
                for i, prompt in enumerate(PROMPTS):
                    texts = {}
                    for name in alternate(round_index + i, list(sides)):
                        before = server.cpu_seconds(pids)
                        first, total, tokens, texts[name] = sides[name](client, server.url, prompt, args.max_tokens)
                        cpu[name] += server.cpu_seconds(pids) - before
                        samples[name].append((first, total, tokens))
                    mismatched += len(set(texts.values())) > 1
    finally:
        server.stop()
    print(f"machine at end:   {machine()}")

    def rate(name: str) -> float:
        return median(tokens / total for _, total, tokens in samples[name])

    def ttft(name: str) -> float:
        return median(first for first, _, _ in samples[name]) * 1000

    def cpu_per_token(name: str) -> float:
        return cpu[name] / sum(tokens for _, _, tokens in samples[name]) * 1000

    rows = [[name, rate(name), ttft(name), cpu_per_token(name)] for name in sides]
    print(table(["route", "tokens/s (median)", "TTFT ms (median)", "server CPU ms/token"], rows))
    v1, api = list(sides)
    print(f"/api/chat vs /v1: tokens/s ratio {rate(api) / rate(v1):.3f}, TTFT {ttft(api) - ttft(v1):+.1f} ms, "
          f"server CPU {cpu_per_token(api) - cpu_per_token(v1):+.3f} ms/token; "
          f"{len(samples[v1])} requests each, {mismatched} answers differed")


if __name__ == "__main__":
    main()
