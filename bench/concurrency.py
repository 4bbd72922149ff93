"""Many clients, one model: continuous batching (`parallel: N`) beside one engine, two replicas and
the peers, same model (SmolLM2), threads and context per sequence.

    .venv/bin/python bench/concurrency.py [--levels 1,2,4,8,16] [--max-tokens 48] [--threads 1]
        [--llama-server /path/to/llama-server]

For each server, one after another: 1, 2, 4, 8, 16 concurrent clients, each sending one streamed
chat request (greedy, a shared system prompt, different questions) per level. Reported per level:
aggregate tokens/s (tokens / wall time of the level), TTFT p50/p99, inter-token latency p50/p99
(gaps between content chunks), and the server's peak PSS over the whole run. llama-cpp-python's
server (`python -m llama_cpp.server`, one engine; needs its `[server]` extra, see bench/setup.sh)
runs when importable; llama.cpp's C++ `llama-server -np 8` only with `--llama-server PATH` (it is
not built here). Greedy outputs of `parallel: 8` are compared with `parallel: 1`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Process, free_port, machine, nexa, proc_mb, table, write_manifest  # noqa: E402

SYSTEM = "You are a helpful assistant. Answer the question in a few plain sentences, without lists."
QUESTIONS = [
    "Why is the sky blue?", "How do bees make honey?", "What is a prime number?", "Why do cats purr?",
    "How does a bicycle stay upright?", "What causes the seasons?", "Why is the sea salty?",
    "How do plants drink water?", "What is a black hole?", "Why do leaves change colour?",
    "How does a fridge keep food cold?", "What is the speed of sound?", "Why do we dream?",
    "How are rainbows made?", "What is gravity?", "Why does ice float?",
]


def pss_mb(pids: list[int]) -> float:
    return proc_mb(pids, "smaps_rollup", "Pss:")


class PeakPss:
    """Samples the server's process tree every 0.2 s; `peak` is the largest PSS seen."""

    def __init__(self, server: Process):
        self.server, self.peak, self._halt = server, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.wait(0.2):
            self.peak = max(self.peak, pss_mb(self.server.pids()))

    def stop(self) -> float:
        self._halt.set()
        self._thread.join()
        return self.peak


def chat_stream(client: httpx.Client, url: str, question: str, max_tokens: int) -> dict:
    """One streamed chat: TTFT, chunk gaps, tokens (usage if sent, else content chunks), text."""
    body = {"model": "smollm2", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    times: list[float] = []
    pieces: list[str] = []
    tokens = None
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            choices = data.get("choices") or []
            piece = choices and (choices[0].get("delta") or {}).get("content")
            if piece:
                times.append(time.perf_counter())
                pieces.append(piece)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"ttft": (times[0] - started) if times else float("nan"), "gaps": gaps,
            "tokens": tokens if tokens is not None else len(pieces), "text": "".join(pieces)}


def level(url: str, clients: int, max_tokens: int) -> tuple[float, list[dict]]:
    results: list[dict] = [{}] * clients
    barrier = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            results[i] = chat_stream(client, url, QUESTIONS[i % len(QUESTIONS)], max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, results


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def servers(args, path: Path) -> dict:
    """name -> a function that starts it (each server runs alone, one after another)."""
    model = {"name": "smollm2", "source": str(path), "type": "NLP", "nctx": args.nctx, "n_threads": args.threads,
             "options": {"n_threads_batch": args.threads}, "preload": True, "max_queue": 256}

    def gateway(**extra):
        return lambda: nexa("-c", str(write_manifest([{**model, **extra}])), port=free_port())

    out = {"nexa parallel:1": gateway(), "nexa replicas:2": gateway(replicas=2),
           "nexa parallel:8": gateway(parallel=8)}
    env = {"PYTHONPATH": args.peer_pythonpath} if args.peer_pythonpath else None
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], env={**os.environ, **(env or {})},
                           capture_output=True, text=True)
    if probe.returncode:
        print(f"llama_cpp.server skipped: not importable ({probe.stderr.strip().splitlines()[-1:]}); "
              "see bench/setup.sh or --peer-pythonpath")
    else:
        def peer():
            port = free_port()
            return Process([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", "smollm2",
                            "--n_ctx", str(args.nctx), "--n_threads", str(args.threads), "--n_threads_batch",
                            str(args.threads), "--interrupt_requests", "false", "--host", "127.0.0.1",
                            "--port", str(port)], port, ready_path="/v1/models", env=env)
        out["llama_cpp.server"] = peer
    if args.llama_server:
        def cpp():
            port = free_port()
            return Process([args.llama_server, "-m", str(path), "-a", "smollm2", "-np", "8", "-c", str(8 * args.nctx),
                            "-t", str(args.threads), "-tb", str(args.threads), "--host", "127.0.0.1",
                            "--port", str(port)], port, ready_path="/health")
        out["llama-server -np 8"] = cpp
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nctx", type=int, default=1024, help="context per sequence")
    parser.add_argument("--llama-server", help="path of llama.cpp's C++ llama-server binary, if built")
    parser.add_argument("--only", help="comma-separated server names to run")
    parser.add_argument("--peer-pythonpath", help="extra PYTHONPATH for llama_cpp.server's [server] dependencies "
                                                  "(fastapi, uvicorn, sse-starlette, starlette-context)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    path = hub.fetch(ModelSpec(name="smollm2", source="smollm2"))
    print(f"machine at start: {machine()}")
    rows, texts, peaks = [], {}, {}
    for name, start in servers(args, path).items():
        if args.only and name not in args.only.split(","):
            continue
        server = start()
        sampler = PeakPss(server)
        try:
            with httpx.Client(timeout=600) as client:
                chat_stream(client, server.url, QUESTIONS[0], 4)  # warm-up
            for clients in levels:
                wall, results = level(server.url, clients, args.max_tokens)
                gaps = [g for r in results for g in r["gaps"]]
                ttft = [r["ttft"] for r in results]
                rows.append([name, clients, sum(r["tokens"] for r in results) / wall, pct(ttft, 0.5) * 1000,
                             pct(ttft, 0.99) * 1000, pct(gaps, 0.5) * 1000, pct(gaps, 0.99) * 1000])
                texts.setdefault(name, {}).update({QUESTIONS[i % len(QUESTIONS)]: r["text"]
                                                   for i, r in enumerate(results) if clients == 8})
                print(f"  {name} × {clients}: {rows[-1][2]:.1f} tokens/s  (load {machine().rsplit(' ', 3)[-3:]})",
                      flush=True)
        finally:
            peaks[name] = sampler.stop()
            server.stop()
    print(f"machine at end:   {machine()}\n")
    print(f"streamed chat, greedy, max_tokens {args.max_tokens}, threads {args.threads}, nctx {args.nctx} per sequence")
    print(table(["server", "clients", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"], rows))
    print("\npeak PSS (MB): " + ", ".join(f"{n} {v:.0f}" for n, v in peaks.items()))
    base, batched = texts.get("nexa parallel:1", {}), texts.get("nexa parallel:8", {})
    same = sum(1 for q in batched if batched[q] == base.get(q))
    print(f"greedy outputs of parallel:8 (8 clients at once) identical to parallel:1's: {same} of {len(batched)}")
    for name in ("nexa replicas:2", "nexa parallel:8", "llama_cpp.server", "llama-server -np 8"):
        ratio = [r[2] for r in rows if r[0] == name and r[1] == 8]
        one = [r[2] for r in rows if r[0] == "nexa parallel:1" and r[1] == 8]
        if ratio and one:
            print(f"8 clients, aggregate tokens/s {name} / nexa parallel:1: {ratio[0] / one[0]:.2f}")


if __name__ == "__main__":
    main()
