"""Grammar-constrained decode speed against plain decode, per model (issue 19 §4).

    .venv/bin/python bench/grammar.py [--models smollm2 gemma] [--rounds 5] [--tokens 96]

The same engine in-process (LlamaBackend, what the gateway runs) generates from one prompt with no
grammar and under the strict JSON grammar of `response_format: json_object` (backends/json_grammar.py),
sides alternated, greedy, a fixed token budget and no stop. Decode tokens/s exclude the prompt (time
from the first token to the last). The ratio constrained/plain shows what the grammar costs per
token: llama.cpp's sampler checks every candidate of the vocabulary against the grammar, so a large
vocabulary (Gemma: 262k) pays more than a small one (SmolLM2: 49k).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma"])
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
        sides = {"plain": None, "json_object": ChatOptions(response_format={"type": "json_object"})}
        rates: dict[str, list[float]] = {side: [] for side in sides}
        try:
            for side, options in sides.items():  # warm-up
                decode_rate(backend, options, 8)
            for round_index in range(args.rounds):
                for side in alternate(round_index, list(sides)):
                    rate, _ = decode_rate(backend, sides[side], args.tokens)
                    rates[side].append(rate)
        finally:
            backend.close()
        plain, constrained = median(rates["plain"]), median(rates["json_object"])
        rows.append([name, f"{plain:.1f}", f"{constrained:.1f}", f"{constrained / plain:.2f}"])
    print(table(["model", "plain decode tok/s", "json_object decode tok/s", "ratio"], rows))
    print(f"machine at end: {machine()}")


if __name__ == "__main__":
    main()
