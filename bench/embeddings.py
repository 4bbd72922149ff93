"""Gateway overhead for embeddings: sentences per second through `POST /v1/embeddings`
(batches of 1 and of 64; and 8 or 32 concurrent clients of one sentence each, which the
gateway merges into shared engine calls) vs. fastembed called in-process, same model (the
bundled all-MiniLM-L6-v2 ONNX), same onnxruntime threads, same sentences.

    .venv/bin/python bench/embeddings.py [--rounds 7] [--threads 1] [--clients 1,8,32]

The concurrent rows compare with fastembed's in-process single-sentence rate (one
sentence per call, one call after another: what a service embedding requests one at a
time would get), and print how many requests the gateway merged per engine call
(from its `nexa_embedding_batch_requests` histogram).

The in-process side is fastembed as an application would use it: the same local folder
registered as a custom model (mean pooling, no normalization, as the gateway registers
it) and `TextEmbedding.embed(batch, batch_size=len(batch))`, vectors as numpy arrays.
The gateway side pays for HTTP, JSON (floats by default; base64, what the openai SDK
asks for, in a separate row) and the client's decoding. The vectors of both sides are
compared once (cosine similarity).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, free_port, machine, median, nexa, table, write_manifest  # noqa: E402

SUBJECTS = ["The old lighthouse keeper", "A curious student", "The city council", "My neighbour's cat",
            "The research team", "A quiet violinist", "The delivery drone", "An elderly gardener"]
VERBS = ["noticed that", "argued that", "wrote a long letter explaining why", "could not believe that",
         "quietly decided that", "was told on Tuesday that", "explained to everyone that", "dreamed that"]
OBJECTS = ["the tide was coming in earlier every year.", "the library would close for renovations.",
           "the bridge needed urgent repairs before winter.", "nobody had fed the goldfish since Monday.",
           "the experiment produced surprisingly consistent results.", "the concert hall had perfect acoustics.",
           "the parcel had been delivered to the wrong street.", "tomatoes grow better next to basil."]
# 64 distinct sentences of 10 to 20 words (12 to 25 tokens), a typical retrieval chunk of a sentence.
SENTENCES = [f"{SUBJECTS[i % 8]} {VERBS[(i // 8) % 8]} {OBJECTS[(i * 3 + i // 8) % 8]}" for i in range(64)]


def in_process_model(folder: Path, threads: int):
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = "bench/all-minilm-l6-v2"
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=False,
                                   sources=ModelSource(url=folder.as_uri()), dim=384, model_file="model.onnx")
    return TextEmbedding(name, cache_dir=str(folder), specific_model_path=str(folder), threads=threads,
                         lazy_load=False)


def run_in_process(model, batch: list[str]) -> np.ndarray:
    return np.stack(list(model.embed(batch, batch_size=len(batch))))


def run_gateway(client: httpx.Client, url: str, batch: list[str], encoding: str) -> np.ndarray:
    r = client.post(url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": batch,
                                                  "encoding_format": encoding})
    r.raise_for_status()
    data = r.json()["data"]
    if encoding == "base64":
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def run_concurrent(url: str, clients: int, requests: int) -> float:
    """Sentences per second with `clients` concurrent clients, each sending one sentence per request
    and its next request as soon as its answer arrives, `requests` requests in all."""
    async def go() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            counter = iter(range(requests))

            async def one_client() -> None:
                for i in counter:
                    r = await client.post(url + "/v1/embeddings", json={
                        "model": "all-minilm-l6-v2", "input": SENTENCES[i % len(SENTENCES)]})
                    r.raise_for_status()
                    np.array(r.json()["data"][0]["embedding"], dtype=np.float32)

            started = time.perf_counter()
            await asyncio.gather(*(one_client() for _ in range(clients)))
            return requests / (time.perf_counter() - started)

    return asyncio.run(go())


def merged_per_call(client: httpx.Client, url: str) -> tuple[float, float]:
    """(engine calls, requests) so far, from the gateway's batch-size histogram."""
    values = {"count": 0.0, "sum": 0.0}
    for line in client.get(url + "/metrics").text.splitlines():
        for kind in values:
            if line.startswith(f"nexa_embedding_batch_requests_{kind}{{"):
                values[kind] += float(line.rsplit(" ", 1)[1])
    return values["count"], values["sum"]


def timed(fn, batches: list[list[str]]) -> float:
    """Sentences per second over `batches`, run one after another."""
    started = time.perf_counter()
    for batch in batches:
        fn(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads on both sides")
    parser.add_argument("--clients", default="1,8,32", help="concurrent single-sentence clients (gateway side)")
    parser.add_argument("--requests", type=int, default=128, help="requests per concurrent measurement")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.clients.split(",") if c.strip()]
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    folder = hub.fetch(ModelSpec(name="all-minilm-l6-v2", source="all-minilm-l6-v2"))
    folder = folder if folder.is_dir() else folder.parent
    model = in_process_model(folder, args.threads)
    manifest = write_manifest([{"name": "all-minilm-l6-v2", "source": str(folder), "type": "TEXT_EMBEDDING",
                                "format": "onnx", "n_threads": args.threads, "preload": True}])
    server = nexa("-c", str(manifest), port=free_port())
    print(f"machine at start: {machine()}")
    cases = {  # name -> (batches, encoding)
        "batch 1 (64 requests)": ([[s] for s in SENTENCES], "float"),
        "batch 64 (1 request)": ([SENTENCES], "float"),
        "batch 64, base64": ([SENTENCES], "base64"),
    }
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], float] = {}  # CPU seconds per sentence, summed over rounds
    together: dict[int, list[float]] = {}  # concurrent clients -> gateway sentences/s per round
    per_call: dict[int, list[float]] = {}  # concurrent clients -> requests merged per engine call
    pids = server.pids()
    try:
        with httpx.Client(timeout=120) as client:
            ours = run_gateway(client, server.url, SENTENCES, "float")  # warm-up, and the check
            theirs = run_in_process(model, SENTENCES)
            cosine = float(np.min(np.sum(ours * theirs, 1) / np.linalg.norm(ours, axis=1)
                                  / np.linalg.norm(theirs, axis=1)))
            for batches, _ in cases.values():
                run_in_process(model, batches[0])
            for round_index in range(args.rounds):
                for i, (case, (batches, encoding)) in enumerate(cases.items()):
                    for side in alternate(round_index + i, ["gateway", "in-process"]):
                        server_cpu, own_cpu = server.cpu_seconds(pids), time.process_time()
                        if side == "gateway":
                            rate = timed(lambda b: run_gateway(client, server.url, b, encoding), batches)
                        else:
                            rate = timed(lambda b: run_in_process(model, b), batches)
                        spent = time.process_time() - own_cpu + (server.cpu_seconds(pids) - server_cpu
                                                                 if side == "gateway" else 0.0)
                        rates.setdefault((case, side), []).append(rate)
                        cpu[(case, side)] = cpu.get((case, side), 0.0) + spent / sum(len(b) for b in batches)
                for clients in concurrency:
                    calls, requests = merged_per_call(client, server.url)
                    together.setdefault(clients, []).append(run_concurrent(server.url, clients, args.requests))
                    calls_after, requests_after = merged_per_call(client, server.url)
                    per_call.setdefault(clients, []).append((requests_after - requests) / max(1, calls_after - calls))
    finally:
        server.stop()
    print(f"machine at end:   {machine()}")
    rows = []
    for case in cases:
        ours, theirs = median(rates[(case, "gateway")]), median(rates[(case, "in-process")])
        rows.append([case, theirs, ours, ours / theirs, cpu[(case, "in-process")] / args.rounds * 1000,
                     cpu[(case, "gateway")] / args.rounds * 1000])
    print(table(["workload", "fastembed in-process sent/s", "nexa gateway sent/s", "ratio",
                 "in-process CPU ms/sent", "gateway CPU ms/sent (server + client)"], rows))
    print(f"\nmedians of {args.rounds} rounds per side, alternating; threads {args.threads}; "
          f"lowest cosine similarity between the two sides' vectors: {cosine:.6f}")
    if concurrency:
        single = median(rates[("batch 1 (64 requests)", "in-process")])
        rows = [[f"{clients} concurrent clients x 1 sentence", single, median(together[clients]),
                 median(together[clients]) / single, median(per_call[clients])] for clients in concurrency]
        print()
        print(table(["workload", "fastembed in-process sent/s (1 per call)", "nexa gateway sent/s", "ratio",
                     "requests per engine call"], rows))
        print(f"\n{args.requests} requests per measurement, medians of {args.rounds} rounds")


if __name__ == "__main__":
    main()
