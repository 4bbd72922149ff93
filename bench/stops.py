"""Stop-sequence scanning cost per generated token, by stop list size: the gateway's automaton
(backends/stops.py) against testing every stop after every token (what it replaced).
64 tokens of 4 characters each; the stops never match, the worst case for both."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.stops import StopScanner  # noqa: E402
from bench.common import machine, table  # noqa: E402


def naive(stops: list[str], pieces: list[str]) -> None:
    """The old scan: find every stop in the unsent window, then every partial stop at the end."""
    text, sent, hold = "", 0, max(len(s) for s in stops) - 1
    for piece in pieces:
        text += piece
        [text.find(s, max(0, sent - hold)) for s in stops]
        best = 0
        for stop in stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-size:]):
                    best = size
                    break
        sent = len(text) - best


def main() -> None:
    rng = random.Random(0)
    pieces = ["".join(rng.choice("abcdefgh ") for _ in range(4)) for _ in range(64)]
    rows = []
    for count, size in [(1, 8), (4, 32), (16, 256), (1000, 1000)]:
        stops = ["".join(rng.choice("abcdefgh ") for _ in range(size)) for _ in range(count)]
        started = time.perf_counter()
        scanner = StopScanner(stops)
        built = time.perf_counter()
        for piece in pieces:
            scanner.feed(piece)
        done = time.perf_counter()
        naive(stops, pieces)
        old = time.perf_counter() - done
        rows.append([f"{count} x {size}", f"{(built - started) * 1e3:.1f}", f"{(done - built) / 64 * 1e6:.1f}",
                     f"{old / 64 * 1e6:.0f}"])
    print(machine())
    print(table(["stops x chars", "build ms", "automaton us/token", "per-stop scan us/token"], rows))


if __name__ == "__main__":
    main()
