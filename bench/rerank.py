"""Gateway overhead for reranking: (query, document) pairs per second through `POST /v1/rerank`
vs. fastembed's TextCrossEncoder called in-process, same ONNX model, same onnxruntime threads.

    .venv/bin/python bench/rerank.py [--rounds 5] [--threads 1] [--clients 8] [--requests 64]

The model is the size of ms-marco-MiniLM-L-6-v2 (the usual small cross-encoder): the bundled
all-MiniLM-L6-v2 ONNX int8 encoder with a random classification head on its [CLS] output, written
here with `onnx` (no cross-encoder ships in any package here). The scores are
noise, the work per pair is real.

Rows: one client sending 32 documents per request (retrieval's usual top-32), and 1 document
per request; then `--clients` concurrent clients of 4 documents each, which the gateway merges
into shared engine calls (the requests per engine call come from its
`nexa_rerank_batch_requests` histogram), against fastembed in-process reranking the same
4 documents per call, one call after another. Both sides' scores are compared once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, free_port, machine, median, nexa, table, write_manifest  # noqa: E402
from bench.embeddings import SENTENCES  # noqa: E402

QUERIES = ["Why did the bridge need repairs?", "Who looks after the lighthouse?", "Where do tomatoes grow best?",
           "What did the research team find?"]


def minilm_cross_encoder_onnx(folder: Path) -> Path:
    """The bundled all-MiniLM-L6-v2 ONNX (int8) with a random classification head on its [CLS]
    output (Gather -> MatMul -> Tanh -> MatMul: logits [batch, 1]) and its tokenizer files: the
    size and cost of ms-marco-MiniLM-L-6-v2, the usual small cross-encoder, with noise for scores."""
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    source = Path(hub.fetch(ModelSpec(name="all-minilm-l6-v2", source="all-minilm-l6-v2")))
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source / "model.onnx"))
    hidden = model.graph.output[0].name
    width = 384
    rng = np.random.default_rng(1234)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0, dtype=np.int64), "head_cls_index"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "head_w1"),
        numpy_helper.from_array(np.zeros(width, dtype=np.float32), "head_b1"),
        numpy_helper.from_array((rng.standard_normal((width, 1)) / np.sqrt(width)).astype(np.float32), "head_w2"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "head_b2"),
    ])
    model.graph.node.extend([
        helper.make_node("Gather", [hidden, "head_cls_index"], ["head_cls"], axis=1),
        helper.make_node("MatMul", ["head_cls", "head_w1"], ["head_h"]),
        helper.make_node("Add", ["head_h", "head_b1"], ["head_hb"]),
        helper.make_node("Tanh", ["head_hb"], ["head_t"]),
        helper.make_node("MatMul", ["head_t", "head_w2"], ["head_o"]),
        helper.make_node("Add", ["head_o", "head_b2"], ["logits"]),
    ])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 1]))
    onnx.save(model, str(folder / "model.onnx"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json"):
        shutil.copyfile(source / name, folder / name)
    return folder


def in_process_model(folder: Path, threads: int):
    from fastembed.common.model_description import ModelSource
    from fastembed.rerank.cross_encoder import TextCrossEncoder

    name = "bench/minilm-cross-encoder"
    TextCrossEncoder.add_custom_model(model=name, sources=ModelSource(url=folder.as_uri()), model_file="model.onnx")
    return TextCrossEncoder(name, cache_dir=str(folder), specific_model_path=str(folder), threads=threads,
                            lazy_load=False)


def run_in_process(model, query: str, documents: list[str]) -> list[float]:
    return list(model.rerank(query, documents, batch_size=len(documents)))


def run_gateway(client: httpx.Client, url: str, query: str, documents: list[str]) -> list[float]:
    r = client.post(url + "/v1/rerank", json={"model": "reranker", "query": query, "documents": documents})
    r.raise_for_status()
    results = sorted(r.json()["results"], key=lambda item: item["index"])
    return [item["relevance_score"] for item in results]


def workload(per_request: int, requests: int) -> list[tuple[str, list[str]]]:
    return [(QUERIES[i % len(QUERIES)], [SENTENCES[(i * per_request + j) % len(SENTENCES)] for j in range(per_request)])
            for i in range(requests)]


def timed(fn, jobs: list[tuple[str, list[str]]]) -> float:
    started = time.perf_counter()
    for query, documents in jobs:
        fn(query, documents)
    return sum(len(d) for _, d in jobs) / (time.perf_counter() - started)


def run_concurrent(url: str, clients: int, jobs: list[tuple[str, list[str]]]) -> float:
    async def go() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            todo = iter(jobs)

            async def one_client() -> None:
                for query, documents in todo:
                    r = await client.post(url + "/v1/rerank", json={"model": "reranker", "query": query,
                                                                    "documents": documents})
                    r.raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(one_client() for _ in range(clients)))
            return sum(len(d) for _, d in jobs) / (time.perf_counter() - started)

    return asyncio.run(go())


def merged_per_call(client: httpx.Client, url: str) -> tuple[float, float]:
    values = {"count": 0.0, "sum": 0.0}
    for line in client.get(url + "/metrics").text.splitlines():
        for kind in values:
            if line.startswith(f"nexa_rerank_batch_requests_{kind}{{"):
                values[kind] += float(line.rsplit(" ", 1)[1])
    return values["count"], values["sum"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads on both sides")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of 4 documents each")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrent measurement")
    args = parser.parse_args()
    folder = minilm_cross_encoder_onnx(Path(tempfile.mkdtemp(prefix="nexa-bench-rerank-")))
    model = in_process_model(folder, args.threads)
    manifest = write_manifest([{"name": "reranker", "source": str(folder), "type": "RERANK", "format": "onnx",
                                "n_threads": args.threads, "preload": True}])
    server = nexa("-c", str(manifest), port=free_port())
    print(f"machine at start: {machine()}")
    cases = {"32 documents per request (8 requests)": workload(32, 8),
             "1 document per request (32 requests)": workload(1, 32)}
    concurrent_jobs = workload(4, args.requests)
    rates: dict[tuple[str, str], list[float]] = {}
    together: list[float] = []
    per_call: list[float] = []
    try:
        with httpx.Client(timeout=120) as client:
            query, documents = cases["32 documents per request (8 requests)"][0]
            ours, theirs = run_gateway(client, server.url, query, documents), run_in_process(model, query, documents)
            largest_difference = float(np.max(np.abs(np.array(ours) - np.array(theirs))))
            for round_index in range(args.rounds):
                for i, (case, jobs) in enumerate(cases.items()):
                    for side in alternate(round_index + i, ["gateway", "in-process"]):
                        if side == "gateway":
                            rate = timed(lambda q, d: run_gateway(client, server.url, q, d), jobs)
                        else:
                            rate = timed(lambda q, d: run_in_process(model, q, d), jobs)
                        rates.setdefault((case, side), []).append(rate)
                rates.setdefault(("4 per call", "in-process"), []).append(
                    timed(lambda q, d: run_in_process(model, q, d), concurrent_jobs[:16]))
                calls, requests = merged_per_call(client, server.url)
                together.append(run_concurrent(server.url, args.clients, concurrent_jobs))
                calls_after, requests_after = merged_per_call(client, server.url)
                per_call.append((requests_after - requests) / max(1, calls_after - calls))
    finally:
        server.stop()
    print(f"machine at end:   {machine()}")
    rows = []
    for case in cases:
        ours, theirs = median(rates[(case, "gateway")]), median(rates[(case, "in-process")])
        rows.append([case, theirs, ours, ours / theirs])
    single = median(rates[("4 per call", "in-process")])
    rows.append([f"{args.clients} concurrent clients x 4 documents", single, median(together),
                 median(together) / single])
    print(table(["workload", "fastembed in-process pairs/s", "nexa gateway pairs/s", "ratio"], rows))
    print(f"\nmedians of {args.rounds} rounds, sides alternating; threads {args.threads}; concurrent rows: "
          f"{args.requests} requests, {median(per_call):.1f} requests per engine call (in-process: 4 documents "
          f"per call, one call after another); largest score difference between the sides: {largest_difference:.2e}")


if __name__ == "__main__":
    main()
