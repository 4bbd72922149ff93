"""Speech synthesis speed: real-time factor (seconds of compute per second of audio) and time to
the first audio byte through `POST /v1/audio/speech`, vs. the same Piper voice engine in-process.

    .venv/bin/python bench/tts.py [--rounds 5] [--threads 2]

The voice is the catalog's `piper-joe` (Piper en_US-joe-medium, 22.05 kHz). The text is a
paragraph of six sentences (about 20 s of speech). In-process rows call `PiperBackend.synthesize`
(and, for mp3, the gateway's encoder) directly; gateway rows stream the answer over loopback
and time the first byte (when playback could start) and the last. Lower RTF is faster; below 1
is faster than real time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, free_port, machine, median, nexa, table, write_manifest  # noqa: E402

TEXT = ("The old lighthouse keeper climbed the stairs every evening at dusk. He polished the great lens until it "
        "shone like a second moon. Ships passing in the night would flash their lights to thank him. One winter, "
        "a storm broke the windows and the lamp went dark. The keeper carried a lantern to the top and waved it "
        "until morning. Nobody on the ships ever knew how close they had come to the rocks.")


def in_process(backend, fmt: str | None) -> tuple[float, float, float]:
    """(seconds to the first sentence, total seconds, audio seconds)."""
    from gateway.media.speech_out import Encoder

    encoder = Encoder(fmt, backend.sample_rate) if fmt else None
    started = time.perf_counter()
    first = None
    samples = 0
    for chunk in backend.synthesize(TEXT, "alloy", 1.0, lambda: False):
        if encoder is not None:
            encoder.feed(chunk)
        samples += len(chunk)
        first = first or time.perf_counter() - started
    if encoder is not None:
        encoder.close()
    return first, time.perf_counter() - started, samples / backend.sample_rate


def through_gateway(client: httpx.Client, url: str, fmt: str) -> tuple[float, float, float]:
    started = time.perf_counter()
    first = None
    size = 0
    with client.stream("POST", url + "/v1/audio/speech", json={"model": "piper-joe", "input": TEXT,
                                                                "voice": "alloy", "response_format": fmt}) as r:
        r.raise_for_status()
        for piece in r.iter_raw():
            first = first or time.perf_counter() - started
            size += len(piece)
    total = time.perf_counter() - started
    return first, total, size / 2 / 24000 if fmt == "pcm" else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads on both sides")
    args = parser.parse_args()
    from backends.piper import PiperBackend
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    spec = ModelSpec(name="piper-joe", source="piper-joe", n_threads=args.threads)
    backend = PiperBackend.load(spec, hub.fetch(spec))
    manifest = write_manifest([{"name": "piper-joe", "source": "piper-joe", "n_threads": args.threads,
                                "preload": True}])
    server = nexa("-c", str(manifest), port=free_port())
    print(f"machine at start: {machine()}")
    results: dict[str, list[tuple[float, float, float]]] = {}
    audio_seconds = in_process(backend, None)[2]
    try:
        with httpx.Client(timeout=300) as client:
            through_gateway(client, server.url, "pcm")  # warm-up
            for round_index in range(args.rounds):
                for side in alternate(round_index, ["gateway", "in-process"]):
                    for fmt in ("pcm", "mp3"):
                        if side == "gateway":
                            results.setdefault(f"gateway, {fmt}", []).append(through_gateway(client, server.url, fmt))
                        else:
                            results.setdefault(f"in-process, {'samples' if fmt == 'pcm' else 'mp3'}", []).append(
                                in_process(backend, None if fmt == "pcm" else fmt))
    finally:
        server.stop()
        backend.close()
    print(f"machine at end:   {machine()}")
    rows = [[name, median(r[1] for r in runs) / audio_seconds, median(r[0] for r in runs), median(r[1] for r in runs)]
            for name, runs in results.items()]
    print(table(["side, output", "real-time factor", "first audio (s)", "whole paragraph (s)"], rows))
    print(f"\n{audio_seconds:.1f} s of speech, 6 sentences; medians of {args.rounds} rounds, sides alternating; "
          f"onnxruntime threads {args.threads}")


if __name__ == "__main__":
    main()
