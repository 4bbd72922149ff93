"""Gateway overhead for speech to text: real-time factor (processing seconds per second of
audio, lower is better) through `POST /v1/audio/transcriptions` vs. faster-whisper called
in-process, same model (whisper-tiny-en, int8 on CPU), same threads, same WAV file.

    .venv/bin/python bench/speech.py [--rounds 7] [--threads 1]

The file is espeak-ng speaking a paragraph (about 15 s). Both sides start from the WAV
bytes: decode them with PyAV (faster_whisper.decode_audio) and transcribe with the
gateway's defaults (task transcribe, beam size 5, the temperature fallback schedule),
draining the segment generator. The transcripts of both sides are compared.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import alternate, free_port, machine, median, nexa, table, write_manifest  # noqa: E402

PARAGRAPH = (
    "The museum opens at nine in the morning and closes at six in the evening. "
    "Visitors can buy tickets at the front desk or online, and children under twelve enter for free. "
    "On the second floor there is a small cafe that serves coffee, tea and fresh sandwiches. "
    "Please remember that photography is not allowed in the special exhibition rooms."
)


def speak(text: str) -> bytes:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed: `apt-get install -y espeak-ng`")
    path = Path(tempfile.mkdtemp(prefix="nexa-bench-")) / "speech.wav"
    try:
        subprocess.run([espeak, "-v", "en", "-s", "175", "-w", str(path), text], check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
        return path.read_bytes()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def duration(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as w:
        return w.getnframes() / w.getframerate()


def in_process(model, wav: bytes) -> str:
    from faster_whisper.audio import decode_audio

    audio = decode_audio(io.BytesIO(wav), sampling_rate=16000)
    segments, _ = model.transcribe(audio, task="transcribe", beam_size=5, word_timestamps=False)
    return "".join(s.text for s in segments).strip()


def through_gateway(client: httpx.Client, url: str, wav: bytes) -> str:
    r = client.post(url + "/v1/audio/transcriptions", files={"file": ("speech.wav", wav, "audio/wav")},
                    data={"model": "whisper-tiny-en", "response_format": "json"})
    r.raise_for_status()
    return r.json()["text"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads on both sides")
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    folder = hub.fetch(ModelSpec(name="whisper-tiny-en", source="whisper-tiny-en"))
    folder = folder if folder.is_dir() else folder.parent
    wav = speak(PARAGRAPH)
    seconds = duration(wav)
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=args.threads,
                         local_files_only=True)
    manifest = write_manifest([{"name": "whisper-tiny-en", "source": str(folder), "type": "AUDIO", "format": "bin",
                                "device": "cpu", "n_threads": args.threads, "preload": True}])
    server = nexa("-c", str(manifest), port=free_port())
    print(f"machine at start: {machine()}")
    times: dict[str, list[float]] = {"gateway": [], "in-process": []}
    texts: dict[str, str] = {}
    try:
        with httpx.Client(timeout=300) as client:
            texts["gateway"] = through_gateway(client, server.url, wav)  # warm-up
            texts["in-process"] = in_process(model, wav)
            for round_index in range(args.rounds):
                for side in alternate(round_index, ["gateway", "in-process"]):
                    started = time.perf_counter()
                    if side == "gateway":
                        through_gateway(client, server.url, wav)
                    else:
                        in_process(model, wav)
                    times[side].append(time.perf_counter() - started)
    finally:
        server.stop()
    print(f"machine at end:   {machine()}")
    rows = [[name, median(times[side]), median(times[side]) / seconds]
            for name, side in (("faster-whisper in-process", "in-process"), ("nexa gateway (multipart, loopback)", "gateway"))]
    print(table(["path", "seconds (median)", "real-time factor"], rows))
    overhead = median(times["gateway"]) - median(times["in-process"])
    print(f"\naudio {seconds:.1f} s ({len(wav) // 1024} KiB WAV); gateway/in-process time ratio "
          f"{median(times['gateway']) / median(times['in-process']):.3f} ({overhead * 1000:+.0f} ms); "
          f"{args.rounds} rounds per side, alternating; threads {args.threads}")
    print(f"transcripts identical: {texts['gateway'] == texts['in-process']}; gateway heard: {texts['gateway']!r}")


if __name__ == "__main__":
    main()
