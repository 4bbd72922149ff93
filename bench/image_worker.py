"""What running stable-diffusion.cpp in a worker process costs (gateway.models.worker).

    .venv/bin/python -m tests.synth.sd_checkpoint /tmp/sdxs.gguf   # once: write the synthetic checkpoint
    .venv/bin/python bench/image_worker.py /tmp/sdxs.gguf [--rounds 5]

On a checkpoint such as the synthetic SDXS one (tests/synth/sd_checkpoint.py), the same generation in-process
(DiffusionBackend) and through the worker (ChildBackend: pickling the parameters and the images
over a socket pair), sides alternated, medians; on a busy machine the engine's own noise swamps
the difference, so the worker's own costs are also timed alone: an empty call's round trip and
pickling an image both ways. Then the memory the worker process holds against what the same
model adds in-process, and how long a restart (kill, spawn, load) takes: what a request that
queues behind a killed generation waits for.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from backends.diffusion import DiffusionBackend, ImageParams  # noqa: E402
from bench.common import alternate, machine, median, table  # noqa: E402
from gateway.models import worker  # noqa: E402
from schemas.manifest import ModelSpec  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a stable-diffusion.cpp GGUF checkpoint "
                                                       "(python -m tests.synth.sd_checkpoint PATH writes a small one)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    path = args.checkpoint
    spec = ModelSpec(name="sdxs", type="COMPUTER_VISION", format="gguf", source=str(path), n_threads=2)

    before = rss_mb(os.getpid())
    direct = DiffusionBackend.load(spec, path)
    in_process_mb = rss_mb(os.getpid()) - before
    child = worker.ChildBackend(spec, path, DiffusionBackend)
    worker_mb = rss_mb(child.info()["worker_pid"])

    rows = []
    for label, params in (("64x64, 1 step", ImageParams(prompt="a lighthouse", width=64, height=64, steps=1,
                                                        cfg_scale=1.0, seed=1)),):
        times: dict[str, list[float]] = {"in-process": [], "worker": []}
        for i in range(args.rounds):
            for side, backend in alternate(i, [("in-process", direct), ("worker", child)]):
                started = time.perf_counter()
                backend.generate(params)
                times[side].append(time.perf_counter() - started)
        a, b = median(times["in-process"]), median(times["worker"])
        rows.append([label, f"{a:.3f}", f"{b:.3f}", f"{(b - a) * 1000:+.0f}"])

    # What the worker adds on its own, free of the engine's noise: an empty round trip, and
    # pickling an answer's image both ways (the socket copy is small beside it).
    trips = []
    for _ in range(50):
        started = time.perf_counter()
        child.call("info")
        trips.append(time.perf_counter() - started)
    ipc = [["empty call round trip", f"{median(trips) * 1000:.2f}"]]
    for side in (512, 1024):
        image = Image.effect_noise((side, side), 64).convert("RGB")
        started = time.perf_counter()
        for _ in range(10):
            pickle.loads(pickle.dumps(image))
        ipc.append([f"pickle + unpickle a {side}x{side} image", f"{(time.perf_counter() - started) * 100:.2f}"])

    restarts = []
    for _ in range(3):
        started = time.perf_counter()
        child._restart("benchmark")
        restarts.append(time.perf_counter() - started)
    child.close()
    direct.close()
    print(machine())
    print(table(["image", "in-process s", "worker s", "worker extra ms"], rows))
    print(table(["worker overhead", "ms"], ipc))
    print(table(["memory", "MiB"], [["model in-process (RSS added)", f"{in_process_mb:.0f}"],
                                    ["worker process (RSS)", f"{worker_mb:.0f}"]]))
    print(f"worker restart (kill, spawn, load): median {median(restarts):.2f} s")


if __name__ == "__main__":
    main()
