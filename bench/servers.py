"""Granian vs Robyn in front of the same gateway: light-route throughput and
time to first token of a streamed completion.

    .venv/bin/python bench/servers.py [--requests 5000] [--concurrency 8] [--ttft-runs 10]

1. Requests per second on `GET /health` and `GET /v1/models`: `--concurrency` httpx clients
   (one keep-alive connection each, on one asyncio loop) share a fixed number of requests.
   The client runs on the same machine, so both servers pay for it alike; the figure is
   the gateway + server path, not a server's ceiling. The server's own CPU time per
   request (its process tree, from /proc) is the figure the client cannot blur.
2. Time to first token of a streamed `/v1/completions` with SmolLM2 (greedy, 4 tokens): the
   median of `--ttft-runs` requests, after a warm-up.

Both servers run the same manifest, one at a time; the whole run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, machine, median, nexa, p95, stream_completion, table, write_manifest  # noqa: E402

SERVERS = ["granian", "robyn"]
ROUTES = ["/health", "/v1/models"]


async def load(url: str, requests: int, concurrency: int) -> tuple[float, list[float], int]:
    """(requests/s, latencies in s, failures) of `requests` GETs shared by `concurrency` clients."""
    latencies: list[float] = []
    failures = 0
    share = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    async def client(count: int) -> None:
        nonlocal failures
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(count):
                started = time.perf_counter()
                response = await http.get(url)
                latencies.append(time.perf_counter() - started)
                failures += response.status_code != 200

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in share))
    return requests / (time.perf_counter() - started), latencies, failures


def ttft(url: str, runs: int) -> list[float]:
    body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    with httpx.Client(timeout=120) as client:
        for _ in range(2):  # warm-up: connection, first decode
            stream_completion(client, url + "/v1/completions", body)
        return [stream_completion(client, url + "/v1/completions", body)[0] for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000, help="requests per light route and server")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent httpx clients")
    parser.add_argument("--ttft-runs", type=int, default=10, help="streamed completions per server")
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    path = hub.fetch(ModelSpec(name="smollm2", source="smollm2"))
    manifest = write_manifest([{"name": "smollm2", "source": str(path), "type": "NLP", "nctx": 512,
                                "n_threads": 1, "options": {"n_threads_batch": 1}, "preload": True}],
                              server={"log_level": "warning"})
    print(f"machine at start: {machine()}")
    rows = []
    for engine in args.servers.split(","):
        server = nexa("-c", str(manifest), "--server", engine, port=free_port())
        try:
            row: list = [engine]
            pids = server.pids()
            for route in ROUTES:
                asyncio.run(load(server.url + route, min(200, args.requests), args.concurrency))  # warm-up
                cpu = server.cpu_seconds(pids)
                rate, latencies, failures = asyncio.run(load(server.url + route, args.requests, args.concurrency))
                cpu = server.cpu_seconds(pids) - cpu
                row += [round(rate), median(latencies) * 1000, p95(latencies) * 1000,
                        round(cpu / args.requests * 1e6)]
                if failures:
                    row[-4] = f"{row[-4]} ({failures} failed)"
            firsts = ttft(server.url, args.ttft_runs)
            row += [median(firsts) * 1000, min(firsts) * 1000, max(firsts) * 1000]
            rows.append(row)
        finally:
            server.stop()
    print(f"machine at end:   {machine()}")
    headers = ["server"]
    for route in ROUTES:
        headers += [f"GET {route} req/s", "p50 ms", "p95 ms", "server CPU µs/req"]
    headers += ["TTFT ms (median)", "min", "max"]
    print(table(headers, rows))
    print(f"\n{args.requests} requests per route over {args.concurrency} keep-alive clients; "
          f"TTFT: median of {args.ttft_runs} streamed SmolLM2 completions (4 tokens, greedy, 1 thread)")


if __name__ == "__main__":
    main()
