"""The nexa gateway beside a peer: llama-cpp-python's own OpenAI server
(`python -m llama_cpp.server`), same model (SmolLM2), same engine build, same workload.

    bash bench/setup.sh          # once: bench/.venv with llama-cpp-python[server]
    bench/.venv/bin/python bench/peer.py [--rounds 4] [--blocks 2] [--clients 4] [--threads 1]

Streamed /v1/completions (greedy, max_tokens 128) in two phases:
- sequential: one request at a time, the two servers alternating per request;
- concurrent: `--clients` clients at once against one server, the servers taking turns by
  block, while a poller sends `GET /v1/models` every 100 ms: how a control request fares
  while every engine is busy.

Both servers get the same n_ctx, n_threads and n_threads_batch and one engine instance. The
peer runs with `--interrupt_requests false`, because its default (true) ends a stream early
whenever another request arrives (a `GET /v1/models` included), which would make it do less
work than the gateway; `--check-defaults` measures that default separately.
Tokens: both servers produce the same greedy completions (checked), so both are credited with
the gateway's exact token counts; llama_cpp.server sends no usage chunk when streaming.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Process,
    alternate,
    free_port,
    machine,
    median,
    nexa,
    p95,
    stream_completion,
    table,
    write_manifest,
)

PROMPTS = [
    "1, 2, 3, 4, 5,",
    "The history of the printing press begins",
    "Here is a list of fruits: apple, banana,",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "def fibonacci(n):",
    "The capital of France is Paris. The capital of Italy is",
    "Dear hiring manager, I am writing to apply for",
]


def peer(path: Path, threads: int, interrupt: bool) -> Process:
    port = free_port()
    return Process([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", "smollm2",
                    "--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads),
                    "--interrupt_requests", str(interrupt).lower(), "--host", "127.0.0.1", "--port", str(port)],
                   port, ready_path="/v1/models")


def request(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int, str]:
    return stream_completion(client, url + "/v1/completions", {
        "model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "repeat_penalty": 1.0},
        text=True)


def _poll(url: str, interval: float, ready, halt, out) -> None:
    """Child process: GET /v1/models every `interval` s until `halt`; latencies to `out`."""
    latencies = []
    with httpx.Client(timeout=120) as client:
        client.get(url + "/health")
        ready.set()
        while not halt.is_set():
            started = time.perf_counter()
            client.get(url + "/v1/models").raise_for_status()
            latencies.append(time.perf_counter() - started)
            halt.wait(interval)
    out.put(latencies)


class Poller:
    """The `GET /v1/models` poller, in its own process so that the client threads of the
    benchmark (and their GIL) do not delay it."""

    def __init__(self, url: str, interval: float = 0.1):
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.halt, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_poll, args=(url, interval, self.ready, self.halt, self.out), daemon=True)

    def start(self) -> None:
        self.proc.start()
        if not self.ready.wait(60):
            raise RuntimeError("the /v1/models poller did not start")

    def stop(self) -> list[float]:
        self.halt.set()
        latencies = self.out.get(timeout=300)
        self.proc.join(30)
        return latencies


def concurrent_block(url: str, clients: int, per_client: int, max_tokens: int, offset: int,
                     tolerate: bool = False) -> tuple[float, list[tuple[float, float, int, str]], list[float]]:
    """(wall seconds, per-request results, /v1/models latencies) of one block. With
    `tolerate`, a stream the server breaks off counts as one with no tokens."""
    results: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_loop(index: int) -> None:
        with httpx.Client(timeout=300) as client:
            barrier.wait()
            for k in range(per_client):
                prompt = PROMPTS[(offset + index + k * clients) % len(PROMPTS)]
                started = time.perf_counter()
                try:
                    result = request(client, url, prompt, max_tokens)
                except httpx.HTTPError:
                    if not tolerate:
                        raise
                    result = (0.0, time.perf_counter() - started, 0, "")
                with lock:
                    results.append((*result[:3], prompt))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    poller = Poller(url)
    poller.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return wall, results, poller.stop()


def idle_models_latency(url: str, count: int = 20) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get(url + "/v1/models").raise_for_status()
            out.append(time.perf_counter() - started)
    return out


def check_defaults(path: Path, threads: int, clients: int, max_tokens: int, tokens_of: dict[str, int]) -> str:
    """llama_cpp.server with its default interrupt_requests=true under the concurrent workload."""
    server = peer(path, threads, interrupt=True)
    try:
        _, results, _ = concurrent_block(server.url, clients, 2, max_tokens, 0, tolerate=True)
    finally:
        server.stop()
    short = sum(1 for _, _, chunks, prompt in results if chunks < tokens_of.get(prompt, 0) * 0.9)
    return (f"llama_cpp.server with its default interrupt_requests=true, {clients} clients: "
            f"{short} of {len(results)} streams ended early (fewer than 90% of the tokens)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4, help="sequential: rounds over the prompts, per server")
    parser.add_argument("--blocks", type=int, default=2, help="concurrent: blocks per server")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=3, help="requests per client per block")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="n_threads and n_threads_batch of both servers")
    parser.add_argument("--check-defaults", action="store_true",
                        help="also run llama_cpp.server with interrupt_requests=true and count cut streams")
    args = parser.parse_args()
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        sys.exit(f"llama_cpp.server is not importable ({exc}): run `bash bench/setup.sh` and use bench/.venv/bin/python")
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    path = hub.fetch(ModelSpec(name="smollm2", source="smollm2"))
    manifest = write_manifest([{"name": "smollm2", "source": str(path), "type": "NLP", "nctx": 2048,
                                "n_threads": args.threads, "options": {"n_threads_batch": args.threads},
                                "preload": True}])
    print(f"machine at start: {machine()}")
    servers = {"nexa gateway": nexa("-c", str(manifest), port=free_port()),
               "llama_cpp.server": peer(path, args.threads, interrupt=False)}
    names = list(servers)
    seq: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    conc: dict[str, dict[str, list]] = {n: {"wall": [], "tokens": [], "lat": [], "ttft": [], "models": []}
                                        for n in names}
    idle: dict[str, list[float]] = {}
    tokens_of: dict[str, int] = {}
    texts: dict[str, dict[str, str]] = {n: {} for n in names}
    try:
        with httpx.Client(timeout=120) as client:
            for name in names:  # warm-up, and the reference token count of every prompt (from the gateway)
                for prompt in PROMPTS:
                    first, total, tokens, text = request(client, servers[name].url, prompt, args.max_tokens)
                    texts[name][prompt] = text
                    if name == "nexa gateway":
                        tokens_of[prompt] = tokens
                idle[name] = idle_models_latency(servers[name].url)
            for round_index in range(args.rounds):
                for i, prompt in enumerate(PROMPTS):
                    for name in alternate(round_index + i, names):
                        first, total, _, _ = request(client, servers[name].url, prompt, args.max_tokens)
                        seq[name].append((first, total, tokens_of[prompt]))
        for block in range(args.blocks):
            for name in alternate(block, names):
                wall, results, models = concurrent_block(servers[name].url, args.clients, args.per_client,
                                                         args.max_tokens, block)
                conc[name]["wall"].append(wall)
                conc[name]["tokens"].append(sum(tokens_of[prompt] for *_, prompt in results))
                conc[name]["lat"] += [total for _, total, _, _ in results]
                conc[name]["ttft"] += [first for first, _, _, _ in results]
                conc[name]["models"] += models
    finally:
        for server in servers.values():
            server.stop()
    print(f"machine at end:   {machine()}")
    differ = sum(1 for p in PROMPTS if texts[names[0]][p] != texts[names[1]][p])

    seq_rate = {n: sum(t for *_, t in seq[n]) / sum(total for _, total, _ in seq[n]) for n in names}
    conc_rate = {n: sum(conc[n]["tokens"]) / sum(conc[n]["wall"]) for n in names}

    print(f"\nsequential, streamed, {len(seq[names[0]])} requests per server, alternating")
    rows = []
    for name in names:
        latencies = [total for _, total, _ in seq[name]]
        rows.append([name, seq_rate[name], median(first for first, _, _ in seq[name]) * 1000,
                     median(latencies) * 1000, p95(latencies) * 1000, median(idle[name]) * 1000])
    print(table(["server", "tokens/s", "TTFT p50 ms", "latency p50 ms", "latency p95 ms", "GET /v1/models idle ms"],
                rows))

    print(f"\n{args.clients} concurrent clients, {args.blocks} blocks of {args.clients * args.per_client} "
          "requests per server, GET /v1/models every 100 ms meanwhile")
    rows = []
    for name in names:
        c = conc[name]
        rows.append([name, conc_rate[name], median(c["ttft"]) * 1000, median(c["lat"]) * 1000,
                     p95(c["lat"]) * 1000, median(c["models"]) * 1000, p95(c["models"]) * 1000,
                     max(c["models"]) * 1000, len(c["models"])])
    print(table(["server", "tokens/s", "TTFT p50 ms", "latency p50 ms", "latency p95 ms", "/v1/models p50 ms",
                 "/v1/models p95 ms", "/v1/models max ms", "polls"], rows))
    g, p = names
    print(f"\nthroughput ratio nexa/llama_cpp.server: sequential {seq_rate[g] / seq_rate[p]:.3f}, "
          f"concurrent {conc_rate[g] / conc_rate[p]:.3f}")
    print(f"prompts whose completions differ between the servers: {differ} of {len(PROMPTS)}; "
          f"max_tokens {args.max_tokens}; greedy; threads {args.threads}")
    if args.check_defaults:
        print(check_defaults(path, args.threads, args.clients, args.max_tokens, tokens_of))


if __name__ == "__main__":
    main()
