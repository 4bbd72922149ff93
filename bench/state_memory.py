"""Memory held by stored responses, per state-store backend (issue 20).

Each run is a fresh process that opens the store with the gateway's default bounds
(server.responses_max_stored 1000, server.state_max_bytes 256 MiB), stores N responses
shaped as the Responses API stores them (the response with OpenAI's largest metadata,
16 pairs of 64-character keys and 512-character values, and its input items carrying
SIZE bytes of text), and reports its RSS before and after, its peak, the store's own
count of objects and bytes, and for redis:// the redis-server's RSS (where the bytes
live then). Usage: .venv/bin/python bench/state_memory.py  (a few minutes; needs
redis-server or valkey-server on PATH).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, proc_mb  # noqa: E402

MIB = 1024 * 1024
RUNS = [  # (responses, bytes of input text each)
    (1000, 16 * 1024),
    (1000, 1 * MIB),
    (30, 32 * MIB),  # server.max_body_bytes: the largest body a client can send
]


def response(n: int, size: int) -> tuple[dict, list[dict]]:
    metadata = {f"{k:02d}" + "k" * 62: "v" * 512 for k in range(16)}
    items = [{"type": "message", "id": f"msg_in_{n}", "role": "user", "status": "completed",
              "content": [{"type": "input_text", "text": "x" * size}]}]
    output = [{"type": "message", "id": f"msg_out_{n}", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": "ok", "annotations": [], "logprobs": []}]}]
    return {"id": f"resp_{n}", "object": "response", "status": "completed", "metadata": metadata,
            "output": output}, items


async def child(url: str, count: int, size: int) -> dict:
    from gateway.state.base import Limits
    from gateway.state.urls import open_store

    store = open_store(url, Limits(max_count={"response": 1000}))
    await store.start()
    before = proc_mb([os.getpid()], "status", "VmRSS:")
    started = time.perf_counter()
    for n in range(count):
        resp, items = response(n, size)
        await store.put("owner", "response", resp["id"], {"response": resp, "input_items": items})
        for item in [*items, *resp["output"]]:  # where each item is: what item_reference looks up
            await store.put("owner", "item", item["id"], {"response": resp["id"]})
    elapsed = time.perf_counter() - started
    stats = await store.stats()
    kept = len(await store.list("owner", "response"))
    after = proc_mb([os.getpid()], "status", "VmRSS:")
    peak = proc_mb([os.getpid()], "status", "VmHWM:")
    await store.close()
    return {"rss_before_mb": before, "rss_after_mb": after, "peak_mb": peak, "responses": kept, "objects": stats["objects"],
            "stored_mb": stats["bytes"] / MIB, "s": elapsed}


def redis_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))))
        return
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}; bounds: 1000 responses, 256 MiB of stored JSON")
    print(f"{'backend':8} {'responses x size':>18} {'RSS before':>11} {'RSS after':>10} {'peak':>8} "
          f"{'redis RSS':>10} {'responses kept':>15} {'stored MiB':>11} {'s':>6}")
    for count, size in RUNS:
        for backend in ("memory", "sqlite", "redis"):
            with tempfile.TemporaryDirectory() as tmp:
                server = None
                if backend == "memory":
                    url = "memory://"
                elif backend == "sqlite":
                    url = f"sqlite:///{tmp}/state.db"
                else:
                    server, url = redis_server(Path(tmp))
                try:
                    out = subprocess.run([sys.executable, __file__, "--child", url, str(count), str(size)],
                                         capture_output=True, text=True, check=True, cwd=ROOT)
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    redis_mb = proc_mb([server.pid], "status", "VmRSS:") if server else 0.0
                finally:
                    if server is not None:
                        server.kill()
                        server.wait()
            label = f"{count} x {size // MIB} MiB" if size >= MIB else f"{count} x {size // 1024} KiB"
            print(f"{backend:8} {label:>18} {result['rss_before_mb']:>9.0f}MB {result['rss_after_mb']:>8.0f}MB "
                  f"{result['peak_mb']:>6.0f}MB {redis_mb:>8.0f}MB {result['responses']:>15} "
                  f"{result['stored_mb']:>11.1f} {result['s']:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
