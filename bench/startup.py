"""Start-up time and memory of `nexa server -c nexa.yaml.example`.

    .venv/bin/python bench/startup.py [--starts 3]

1. Time from starting the process to `/ready` answering 200 (the example preloads SmolLM2),
   median of `--starts` cold process starts (model files already in the cache).
2. Memory of the gateway's process tree idle (the example with `preload: false` everywhere),
   then after one request to each model in turn (which loads it): what each model costs.
3. SmolLM2 with `replicas: 1` and `replicas: 2` (both replicas busy once): what the second
   engine instance adds. llama.cpp maps the GGUF, so the weights should be shared.

Memory is shown as RSS and as PSS (from /proc/PID/smaps_rollup), split into anonymous and
file-backed pages. PSS is the honest figure when one file is mapped twice by one process: RSS
counts such a page once per mapping, PSS shares it between them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Process, free_port, machine, median, nexa, table, write_manifest  # noqa: E402

EXAMPLE = ROOT / "nexa.yaml.example"


def memory(server: Process) -> dict[str, float]:
    """MiB of the process tree: rss, rss_anon, rss_file, pss, pss_anon, pss_file."""
    keys = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file",
            "Pss": "pss", "Pss_Anon": "pss_anon", "Pss_File": "pss_file"}
    total = dict.fromkeys(keys.values(), 0.0)
    for pid in server.pids():
        for name in ("status", "smaps_rollup"):
            try:
                lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                field, _, rest = line.partition(":")
                if field in keys:
                    total[keys[field]] += int(rest.split()[0]) / 1024
    return total


def speech_wav() -> bytes:
    path = Path(tempfile.mkdtemp(prefix="nexa-bench-")) / "hello.wav"
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed: `apt-get install -y espeak-ng`")
    try:
        subprocess.run([espeak, "-w", str(path), "hello, this is a short test"], check=True, stdout=subprocess.DEVNULL)
        return path.read_bytes()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def use(client: httpx.Client, url: str, model: dict, wav: bytes) -> str:
    """One request that needs `model` loaded; the route follows its capabilities."""
    caps, name = set(model.get("capabilities") or []), model["id"]
    if "complete" in caps:
        r = client.post(url + "/v1/completions", json={"model": name, "prompt": "Hello", "max_tokens": 8})
    elif "chat" in caps:
        r = client.post(url + "/v1/chat/completions", json={"model": name, "max_tokens": 8,
                                                             "messages": [{"role": "user", "content": "Hi"}]})
    elif "embed" in caps:
        r = client.post(url + "/v1/embeddings", json={"model": name, "input": ["hello world"]})
    elif "transcribe" in caps:
        r = client.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                        data={"model": name})
    else:
        return "skipped (no cheap request for " + ", ".join(sorted(caps)) + ")"
    r.raise_for_status()
    return "ok"


def without_preload() -> Path:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    for model in manifest["models"]:
        model["preload"] = False
    path = Path(tempfile.mkdtemp(prefix="nexa-bench-")) / "nexa.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def row(label: str, mem: dict[str, float], base: dict[str, float] | None = None) -> list:
    delta = f"{mem['pss'] - base['pss']:+.0f}" if base else ""
    return [label, f"{mem['rss']:.0f}", f"{mem['rss_anon']:.0f}", f"{mem['rss_file']:.0f}", f"{mem['pss']:.0f}",
            f"{mem['pss_anon']:.0f}", f"{mem['pss_file']:.0f}", delta]


HEADERS = ["state", "RSS MiB", "RSS anon", "RSS file", "PSS MiB", "PSS anon", "PSS file", "PSS delta"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    print(f"machine at start: {machine()}")

    readies = []
    for _ in range(args.starts):
        server = nexa("-c", str(EXAMPLE), port=free_port())
        readies.append(server.ready_seconds)
        at_ready = memory(server)
        server.stop()
    print(f"\n`nexa server -c nexa.yaml.example` to /ready (SmolLM2 preloaded): median {median(readies):.2f} s "
          f"of {len(readies)} starts ({', '.join(f'{s:.2f}' for s in readies)})")

    wav = speech_wav()
    server = nexa("-c", str(without_preload()), port=free_port())
    rows = [row("at /ready (example as is: SmolLM2 preloaded)", at_ready)]
    try:
        with httpx.Client(timeout=600) as client:
            idle = memory(server)
            rows.append(row("idle, no model loaded (preload: false)", idle))
            previous = idle
            for model in client.get(server.url + "/v1/models").json()["data"]:
                outcome = use(client, server.url, model, wav)
                now = memory(server)
                rows.append(row(f"+ {model['id']} ({outcome})", now, previous))
                previous = now
    finally:
        server.stop()
    print(table(HEADERS, rows))

    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    path = hub.fetch(ModelSpec(name="smollm2", source="smollm2"))
    rows, mems = [], {}
    for replicas in (1, 2):
        manifest = write_manifest([{"name": "smollm2", "source": str(path), "type": "NLP", "nctx": 2048,
                                    "replicas": replicas, "preload": True}])
        server = nexa("-c", str(manifest), port=free_port())
        try:
            def one(_: int) -> None:
                with httpx.Client(timeout=300) as client:
                    client.post(server.url + "/v1/completions", json={"model": "smollm2", "prompt": "Hello",
                                                                       "max_tokens": 32}).raise_for_status()

            with concurrent.futures.ThreadPoolExecutor(replicas) as pool:  # every replica runs once
                list(pool.map(one, range(replicas)))
            mems[replicas] = memory(server)
        finally:
            server.stop()
        rows.append(row(f"SmolLM2, replicas: {replicas}", mems[replicas], mems.get(1) if replicas == 2 else None))
    print()
    print(table(HEADERS, rows))
    size = path.stat().st_size / 2**20
    print(f"\nGGUF file {size:.0f} MiB; the second replica adds {mems[2]['pss'] - mems[1]['pss']:+.0f} MiB PSS "
          f"({mems[2]['pss_anon'] - mems[1]['pss_anon']:+.0f} anonymous, {mems[2]['pss_file'] - mems[1]['pss_file']:+.0f} "
          f"file-backed), RSS {mems[2]['rss'] - mems[1]['rss']:+.0f} MiB")
    print(f"machine at end:   {machine()}")


if __name__ == "__main__":
    main()
