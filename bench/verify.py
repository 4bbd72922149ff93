"""What content verification costs: sha256 of each cached catalog model file.

    .venv/bin/python bench/verify.py [--rounds 3]

The gateway hashes a pinned file at its first load (`server.verify: first_load`, the default),
on every `nexa pull` and on `nexa check --verify`. This prints, per bundled model file already
in the cache, its size and the median time to hash it with the page cache warm (the file was
just fetched or loaded) and once after asking the kernel to drop it (cold, a fresh machine;
only effective as root, otherwise equal to warm).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, table  # noqa: E402
from gateway.manifest import catalog, hub, integrity  # noqa: E402


def drop_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(path: Path) -> float:
    started = time.perf_counter()
    integrity.sha256_of(path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in catalog.names():
        entry = catalog.lookup(name)
        for file in entry.files:
            path = hub.cache_root() / "catalog" / name / file.dest
            if not path.is_file() or path.stat().st_size < 50_000_000:
                continue
            drop_cache(path)
            cold = timed(path)
            warm = median(timed(path) for _ in range(args.rounds))
            size = path.stat().st_size / 1e6
            rows.append([f"{name}/{file.dest}", f"{size:.0f}", f"{cold:.2f}", f"{warm:.2f}", f"{size / warm:.0f}"])
    print(machine())
    print(table(["file", "MB", "cold s", "warm s", "warm MB/s"], rows) if rows else
          "no cached catalog model over 50 MB: run `nexa pull smollm2` first")


if __name__ == "__main__":
    main()
