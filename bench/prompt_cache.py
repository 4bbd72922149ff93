"""The prompt cache's crossover: what saving and restoring a sequence's KV state costs against
prefilling the same tokens, by prompt length, in-process on one llama.cpp context.

    .venv/bin/python bench/prompt_cache.py [--model gemma] [--threads 2] [--lengths 16,64,256,1024,4096]
                                           [--disk DIR]

Prints per length: prefill ms, save ms, restore ms, state MB, and restore / prefill. The context is the
one the text engines open (`generation_defaults`: a window-sized sliding-window cache), so save ms is also
what a context checkpoint costs as a prompt's prefill ends (backends/llama_cache.py `checkpoint`). The cache restores
an entry only when the tokens it saves are worth more prefill time than the restore costs
(backends/prompt_cache.py: MIN_TOKENS and the two per-unit costs it starts from).

`--disk DIR` also times what `server.prompt_cache_dir` adds (backends/prompt_cache_disk.py), per length: writing
the state as an entry file (into the page cache, then to the device with fsync, as a shutdown's write ends up),
reading it back cold (its pages dropped from the page cache first, `posix_fadvise(DONTNEED)`) and warm, CRC
checked, as a restore after a restart does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402


def disk_costs(directory: Path, tokens: list[int], data, size: int, runs: int) -> tuple[float, ...]:
    """Median seconds: write an entry file, its fsync, read it back cold, read it back warm."""
    import os

    from backends import prompt_cache_disk as disk

    write, sync, cold, warm = [], [], [], []
    path = directory / "bench.entry"
    for _ in range(runs):
        started = time.perf_counter()
        disk.write_entry(path, "bench", tokens, data, size, None)
        write.append(time.perf_counter() - started)
        started = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        sync.append(time.perf_counter() - started)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        for times in (cold, warm):
            started = time.perf_counter()
            _, stored, _ = disk.read_entry(path, "bench")
            disk.read_state(stored)
            times.append(time.perf_counter() - started)
    path.unlink()
    return tuple(statistics.median(x) for x in (write, sync, cold, warm))


def main() -> None:
    import llama_cpp

    from backends import prompt_cache
    from backends.llama_load import generation_defaults, llama_kwargs
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="16,64,256,1024,4096")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--disk", type=Path, help="also time writing and reading entry files in this folder")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    nctx = max(lengths) + 64
    spec = ModelSpec(name=args.model, source=args.model, nctx=nctx, n_threads=args.threads, device="cpu")
    path = hub.fetch(spec)
    path = path if path.is_file() else next(path.glob("*.gguf"))
    llm = llama_cpp.Llama(**llama_kwargs(spec, path, generation_defaults(spec)))  # the text engines' context
    vocab = llm.n_vocab()
    print(machine())
    print(f"{args.model}, {args.threads} threads, n_batch {llm.n_batch}, swa_full {llm.context_params.swa_full}")
    print("| tokens | prefill ms | save ms | restore ms | state MB | restore / prefill |")
    print("|---|---|---|---|---|---|")
    on_disk = []
    for n in lengths:
        tokens = [(7919 * i) % (vocab - 10) + 5 for i in range(n)]
        prefill, save, restore = [], [], []
        size = 0
        for _ in range(args.runs):
            llm.reset()
            llm._ctx.kv_cache_clear()
            started = time.perf_counter()
            llm.eval(tokens)
            prefill.append(time.perf_counter() - started)
            started = time.perf_counter()
            data, size = prompt_cache.save_state(llm.ctx, 0)
            save.append(time.perf_counter() - started)
            entry = prompt_cache.Entry(tokens=None, data=data, size=size)
            started = time.perf_counter()
            assert prompt_cache.restore_state(llm.ctx, 0, entry)
            restore.append(time.perf_counter() - started)
        p, s, r = (statistics.median(x) * 1000 for x in (prefill, save, restore))
        print(f"| {n} | {p:.1f} | {s:.2f} | {r:.2f} | {size / 2**20:.1f} | {r / p:.4f} |")
        if args.disk:
            args.disk.mkdir(parents=True, exist_ok=True)
            on_disk.append((n, p, r, size, disk_costs(args.disk, tokens, data, size, max(args.runs, 3))))
    if on_disk:
        print("\n| tokens | state MB | write ms | fsync ms | read cold ms | read warm ms | (cold read + restore) / prefill |")
        print("|---|---|---|---|---|---|---|")
    for n, p, r, size, (w, f, c, h) in on_disk:
        print(f"| {n} | {size / 2**20:.1f} | {w * 1000:.1f} | {f * 1000:.1f} | {c * 1000:.1f} | {h * 1000:.1f} | "
              f"{(c * 1000 + r) / p:.4f} |")
    print(f"KV bytes/token from metadata: "
          f"{prompt_cache.kv_bytes_per_token(llm.metadata, llama_cpp.llama_model_n_layer(llm.model), llama_cpp.llama_model_n_head_kv(llm.model))}")
    llm.close()


if __name__ == "__main__":
    main()
