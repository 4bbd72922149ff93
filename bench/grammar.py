"""Grammar-constrained decode speed against plain decode, per model (issue 19 §4).

    .venv/bin/python bench/grammar.py [--models smollm2 gemma] [--formats json_object json_schema] [--rounds 5]

The same engine in-process (LlamaBackend, what the gateway runs) generates from one prompt with no
grammar and under the strict JSON grammars of `response_format` (backends/json_grammar.py), greedy,
a fixed token budget and no stop, sides alternated. Each grammar runs two ways: the grammar inside
llama-cpp-python's sampler chain, checking every token of the vocabulary each step (`chain`, the old
path), and the sampled token checked first (`cand.`, backends/grammar_sampling.py, what the gateway
runs). Decode tokens/s exclude the prompt (time from the first token to the last); the ratio is
constrained/plain. `json_schema` forces a city object of five fields (Gemma 3 270M answers
`json_object` with `{}` alone, too short to time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import ChatOptions, SamplingParams  # noqa: E402
from bench.common import alternate, machine, median, table  # noqa: E402
from schemas.manifest import ModelSpec  # noqa: E402

PROMPT = [{"role": "user", "content": "Describe a city of your choice as a JSON object with many fields: "
                                      "name, country, population, landmarks, history, climate, food."}]
FORMATS = {
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                                         "population": {"type": "integer"},
                                         "landmarks": {"type": "array", "items": {"type": "string"}},
                                         "history": {"type": "string"}},
        "required": ["name", "country", "population", "landmarks", "history"]}}},
}


def decode_rate(backend, options: ChatOptions | None, tokens: int) -> tuple[float, int]:
    """(decode tokens/s, tokens) of one generation: first token to last."""
    params = SamplingParams(max_tokens=tokens, temperature=0, top_k=1, seed=0, grammar_max_tokens=tokens)
    first = last = None
    count = 0
    for delta in backend.chat(PROMPT, params, lambda: False, options):
        now = time.perf_counter()
        if delta.text:
            first = first or now
            last = now
        if delta.usage:
            count = delta.usage.completion_tokens
    if first is None or last is None or count < 2:
        return float("nan"), count
    return (count - 1) / (last - first), count


def measure(backend, formats: list[str], rounds: int, tokens: int) -> dict[str, tuple[float, int]]:
    """Median (tokens/s, tokens) per side: plain, then each format in the chain and candidate-first."""
    sides = {"plain": (None, True)}
    for name in formats:
        options = ChatOptions(response_format=FORMATS[name])
        sides[f"{name} chain"] = (options, False)
        sides[f"{name} cand."] = (options, True)

    def run(side: str, budget: int) -> tuple[float, int]:
        options, candidate_first = sides[side]
        backend.candidate_first = candidate_first
        try:
            return decode_rate(backend, options, budget)
        finally:
            backend.candidate_first = True

    for side in sides:  # warm-up
        run(side, 8)
    results: dict[str, list[tuple[float, int]]] = {side: [] for side in sides}
    for round_index in range(rounds):
        for side in alternate(round_index, list(sides)):
            results[side].append(run(side, tokens))
    return {side: (median([r for r, _ in got]), int(median([n for _, n in got]))) for side, got in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma"])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from backends.registry import backend_for
    from gateway.manifest import hub

    print(f"machine at start: {machine()}")
    rows = []
    for name in args.models:
        spec = ModelSpec(name=name, source=name, nctx=2048, n_threads=args.threads, prompt_cache=0)
        backend = backend_for(spec).load(spec, Path(hub.fetch(spec)))
        try:
            got = measure(backend, args.formats, args.rounds, args.tokens)
        finally:
            backend.close()
        plain = got["plain"][0]
        for side, (rate, count) in got.items():
            rows.append([name, side, str(count), f"{rate:.1f}", f"{rate / plain:.2f}"])
    print(table(["model", "side", "tokens", "decode tok/s", "ratio to plain"], rows))
    print(f"machine at end: {machine()}")


if __name__ == "__main__":
    main()
