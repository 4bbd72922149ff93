"""Gateway overhead for text generation: streaming through `nexa server` over loopback
vs. llama-cpp-python called in-process, same model (SmolLM2), prompts, max_tokens, greedy.

    .venv/bin/python bench/text.py [--runs 5] [--max-tokens 128]

Targets (issue 7): throughput ratio >= 0.97, TTFT overhead < 5 ms at the median.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, median, nexa, stream_completion, table  # noqa: E402

PROMPTS = [
    "1, 2, 3, 4, 5,",
    "The history of the printing press begins",
    "Here is a list of fruits: apple, banana,",
]


def in_process(llm, runs: int, max_tokens: int) -> tuple[list[float], list[float]]:
    ttfts, rates = [], []
    for _ in range(runs):
        for prompt in PROMPTS:
            started = time.perf_counter()
            first, count = None, 0
            for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
                if chunk["choices"][0]["text"] and first is None:
                    first = time.perf_counter() - started
                count += 1
            total = time.perf_counter() - started
            tokens = count - 1  # the last chunk only carries finish_reason
            ttfts.append(first or 0.0)
            rates.append(tokens / total)
    return ttfts, rates


def through_gateway(url: str, runs: int, max_tokens: int) -> tuple[list[float], list[float]]:
    ttfts, rates = [], []
    with httpx.Client(timeout=120) as client:
        for _ in range(runs):
            for prompt in PROMPTS:
                first, total, tokens = stream_completion(client, url + "/v1/completions", {
                    "model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
                ttfts.append(first)
                rates.append(tokens / total)
    return ttfts, rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    from gateway import hub
    from schemas.manifest import ModelSpec

    import llama_cpp

    path = hub.fetch(ModelSpec(name="smollm2", source="smollm2"))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, verbose=False)
    server = nexa("smollm2", "--nctx", "2048", port=free_port())
    try:
        in_process(llm, 1, 8)
        # Warm both sides once, then alternate so that machine noise hits both alike.
        through_gateway(server.url, 1, 8)
        g_ttft, g_rate, p_ttft, p_rate = [], [], [], []
        for _ in range(args.runs):
            t, r = through_gateway(server.url, 1, args.max_tokens)
            g_ttft += t
            g_rate += r
            t, r = in_process(llm, 1, args.max_tokens)
            p_ttft += t
            p_rate += r
    finally:
        server.stop()
        llm.close()
    rows = [
        ["in-process llama-cpp-python", median(p_rate), median(p_ttft) * 1000],
        ["nexa gateway (SSE, loopback)", median(g_rate), median(g_ttft) * 1000],
    ]
    print(table(["path", "tokens/s (median)", "TTFT ms (median)"], rows))
    print(f"\nthroughput ratio gateway/in-process: {median(g_rate) / median(p_rate):.3f} (target >= 0.97)")
    print(f"TTFT overhead at the median: {(median(g_ttft) - median(p_ttft)) * 1000:+.1f} ms (target < 5 ms)")
    print(f"samples per side: {len(g_rate)}; max_tokens {args.max_tokens}; greedy")


if __name__ == "__main__":
    main()
