"""Prefill tokens/s: the gateway against llama.cpp's C++ `llama-server` and the engine in-process.

    .venv/bin/python bench/prefill.py [--sizes 4000,16000] [--rounds 2] [--threads 2]
        [--llama-server PATH] [--llama-bench PATH] [--variant NAME=JSON ...] [--server-variant NAME=ARGS ...]
        [--sides ...]

The same prompt length on every side (distinct token sequences, so no side reuses a cached prefix):
- `gateway NAME`: `nexa server` with Gemma 3 270M (`nctx`, `n_threads`, `parallel: 1`, plus the variant's
  `options:`), a `/v1/completions` request of the prompt's token ids and `max_tokens: 1`; prefill tok/s
  is prompt tokens / the request's wall time.
- `engine NAME`: llama-cpp-python in-process with the arguments the gateway would give it
  (`backends.llama_load.llama_kwargs`, the variant's options on top), `Llama.eval` of the prompt: what
  the gateway's own code adds is the difference between this side and `gateway NAME`.
- `llama-server`: the C++ server (`-np 1 -c nctx -t/-tb threads`, its defaults otherwise: `-b 2048
  -ub 512 -fa auto`, non-full SWA cache), `/completion` with `cache_prompt: false`, the same wall time.
- `llama-server NAME` (`--server-variant NAME=ARGS`): the same server with extra arguments, e.g.
  `fa-off=-fa off` (its `-fa auto` turns flash attention on for this CPU; the gateway's default is off).
- with `--llama-bench PATH`, llama.cpp's own `llama-bench -p N -n 0` (the newer engine without a server)
  once per size, flash attention off and on.

Variants are NAME=JSON of engine options, e.g. `old={"flash_attn": false, "swa_full": true, "n_batch": 512}`
(the gateway's defaults before bench/RESULTS.md §16). Sides alternate each round; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Process, alternate, free_port, machine, median, nexa, table, write_manifest  # noqa: E402

TEXT = "\n".join(f"def function_{i}(value):\n    return value * {i % 97} + {i}  # helper number {i}" for i in range(6000))


def prompts(path: Path, size: int, count: int) -> list[list[int]]:
    """`count` prompts of exactly `size` tokens (BOS, then code), each starting differently."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    body = llm.tokenize(TEXT.encode(), add_bos=False)
    while len(body) < size:
        body = body + body
    out = []
    for i in range(count):
        head = llm.tokenize(f"# request {i} of a prefill benchmark\n".encode(), add_bos=True)
        out.append((head + body)[:size])
    llm.close()
    return out


def gateway_side(args: argparse.Namespace, options: dict):
    model = {"name": "gemma", "source": "gemma", "nctx": args.nctx, "n_threads": args.threads,
             "options": options, "preload": True, "timeout_s": 1800}

    def start() -> Process:
        return nexa("-c", str(write_manifest([model])), port=free_port(), timeout=600)

    def run(server: Process, tokens: list[int]) -> float:
        started = time.perf_counter()
        r = httpx.post(server.url + "/v1/completions", timeout=1800,
                       json={"model": "gemma", "prompt": tokens, "max_tokens": 1, "temperature": 0})
        r.raise_for_status()
        return time.perf_counter() - started
    return start, run


def server_side(args: argparse.Namespace, path: Path, extra: list[str] = ()):
    def start() -> Process:
        port = free_port()
        return Process([args.llama_server, "-m", str(path), "-np", "1", "-c", str(args.nctx), "-t", str(args.threads),
                        "-tb", str(args.threads), *extra, "--host", "127.0.0.1", "--port", str(port)], port,
                       ready_path="/health", timeout=600)

    def run(server: Process, tokens: list[int]) -> float:
        started = time.perf_counter()
        r = httpx.post(server.url + "/completion", timeout=1800,
                       json={"prompt": tokens, "n_predict": 1, "temperature": 0, "cache_prompt": False})
        r.raise_for_status()
        return time.perf_counter() - started
    return start, run


class Engine:
    """llama-cpp-python in-process, opened with the gateway's own arguments plus `options`."""

    def __init__(self, args: argparse.Namespace, path: Path, options: dict):
        import llama_cpp

        from backends.llama_load import generation_defaults, llama_kwargs
        from schemas.manifest import ModelSpec

        spec = ModelSpec(name="gemma", source="gemma", nctx=args.nctx, n_threads=args.threads, device="cpu",
                         options=options)
        self.llm = llama_cpp.Llama(**llama_kwargs(spec, path, generation_defaults(spec)))
        self.url = ""

    def stop(self) -> None:
        self.llm.close()


def engine_side(args: argparse.Namespace, path: Path, options: dict):
    def run(engine: Engine, tokens: list[int]) -> float:
        engine.llm.reset()
        started = time.perf_counter()
        engine.llm.eval(tokens)
        return time.perf_counter() - started
    return (lambda: Engine(args, path, options)), run


def llama_bench(binary: str, path: Path, size: int, threads: int) -> list[list]:
    rows = []
    out = subprocess.run([binary, "-m", str(path), "-p", str(size), "-n", "0", "-t", str(threads), "-fa", "0,1",
                          "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=1800, check=True).stdout
    for result in json.loads(out):
        rows.append([f"llama-bench fa={int(result.get('flash_attn', 0))}", size, f"{result['avg_ts']:.0f}", "", ""])
    return rows


def main() -> None:
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4000,16000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nctx", type=int, default=32768)
    parser.add_argument("--llama-server", help="llama.cpp's C++ llama-server (bench/build_llama_server.sh)")
    parser.add_argument("--llama-bench", help="llama.cpp's llama-bench, from the same build")
    parser.add_argument("--variant", action="append", default=[], help='NAME=JSON engine options (default: "default={}")')
    parser.add_argument("--server-variant", action="append", default=[],
                        help='NAME=ARGS: also llama-server with these extra arguments, e.g. "fa-off=-fa off"')
    parser.add_argument("--sides", default="gateway,engine,llama-server", help="which of gateway, engine, llama-server")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"default": "{}"}
    variants = {name: json.loads(value) for name, value in variants.items()}
    wanted = {s.strip() for s in args.sides.split(",")}
    path = Path(hub.fetch(ModelSpec(name="gemma", source="gemma")))
    path = path if path.is_file() else next(path.glob("*.gguf"))

    sides = {}
    for name, options in variants.items():
        if "gateway" in wanted:
            sides[f"gateway {name}"] = gateway_side(args, options)
        if "engine" in wanted:
            sides[f"engine {name}"] = engine_side(args, path, options)
    if args.llama_server and "llama-server" in wanted:
        sides["llama-server"] = server_side(args, path)
        for name, extra in (v.split("=", 1) for v in args.server_variant):
            sides[f"llama-server {name}"] = server_side(args, path, shlex.split(extra))
    print(machine())
    print(f"Gemma 3 270M Q4_K_M, nctx {args.nctx}, {args.threads} threads, {args.rounds} rounds, variants {variants}")
    for size in [int(s) for s in args.sizes.split(",")]:
        batch = iter(prompts(path, size, 2 * args.rounds * len(sides)))
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in alternate(r, list(sides)):
                start, run = sides[name]
                server = start()  # a fresh server per measurement: nothing cached, nothing warm but the model
                try:
                    run(server, next(batch)[:64])  # warm-up: threads, buffers, first-call costs
                    seconds[name].append(run(server, next(batch)))
                finally:
                    server.stop()
                print(f"  {size} tokens, round {r + 1}, {name}: {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
        rows = [[name, size, f"{size / median(s):.0f}", f"{median(s):.2f}", " ".join(f"{x:.1f}" for x in s)]
                for name, s in seconds.items()]
        if args.llama_bench:
            rows += llama_bench(args.llama_bench, path, size, args.threads)
        print(f"\n### {size} prompt tokens (load {machine().rsplit(' ', 3)[-3:]})")
        print(table(["side", "tokens", "prefill tok/s", "median s", "runs s"], rows))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
