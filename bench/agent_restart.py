"""A gateway restart in the middle of a coding agent's session, with and without `server.prompt_cache_dir`.

    .venv/bin/python bench/agent_restart.py [--sizes 2000,8000] [--threads 2] [--sides dir,no-dir]

The session of bench/agent_session.py (a long system prompt, 8 tools, a history of about `size` tokens;
its pieces are imported, not copied): turn 1 (cold), a side call on another prefix, turn 2; then the
gateway gets SIGTERM and is started again with the same manifest, and turn 3 (the conversation plus one
new user message) goes out. With the folder the gateway writes its prompt cache at shutdown and reads it
back at the next load, so turn 3 should be a restore; without it (the default before the folder existed)
turn 3 is prefilled whole. Per side and size: turn 3's TTFT and cached tokens, SIGTERM-to-exit time (the
main process and its Granian worker), start-to-/ready time of the second start, the folder's size on disk,
the `prompt_cache_saved`/`_loaded` log lines, and whether the greedy answers of turn 3 are equal across
sides (they should be: a restored prefix is the KV a prefill computes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent_session import SIDE_CALLS, ask, gemma, history, reply, turn  # noqa: E402
from bench.common import Process, free_port, machine, nexa, table, write_manifest  # noqa: E402


def request(server: Process, messages: list[dict], tools: bool, max_tokens: int) -> dict:
    with httpx.Client(timeout=900) as client:  # a connection per request, as agent_session does
        return turn(client, server.url, messages, tools=tools, max_tokens=max_tokens)


def terminate(server: Process) -> float:
    """Seconds from SIGTERM until the gateway and its worker have exited (a shutdown with the folder
    writes the prompt cache first)."""
    pids = server.pids()
    started = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(600)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids[1:]):
        time.sleep(0.01)  # the worker is normally gone first; a straggler counts
    seconds = time.perf_counter() - started
    server.log.close()
    return seconds


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def events(server: Process, name: str) -> list[dict]:
    lines = Path(server.log.name).read_text(errors="replace").splitlines()
    found = []
    for line in lines:
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
    return found


def du_mb(folder: Path) -> float:
    """Bytes on disk (allocated blocks, as `du` counts them) of every file under the folder, in MB."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file()) / 1e6


def restart_session(size: int, directory: Path | None, nctx: int, threads: int, max_tokens: int) -> dict:
    server_settings = {"prompt_cache_dir": str(directory)} if directory else {}
    manifest = write_manifest([gemma(nctx, threads)], server_settings)
    messages = history(size)
    out: dict = {}
    server = nexa("-c", str(manifest), port=free_port(), timeout=600)
    out["ready 1"] = server.ready_seconds
    try:
        messages += [ask(0)]
        out["turn 1"] = request(server, messages, tools=True, max_tokens=max_tokens)
        messages += [reply(0)]
        out["side"] = request(server, SIDE_CALLS[1], tools=False, max_tokens=8)
        messages += [ask(1)]
        out["turn 2"] = request(server, messages, tools=True, max_tokens=max_tokens)
        messages += [reply(1)]
    finally:
        out["shutdown"] = terminate(server)
    saved = events(server, "prompt_cache_saved")
    out["saved"] = saved[-1] if saved else {}
    out["folder MB"] = du_mb(directory) if directory else 0.0
    server = nexa("-c", str(manifest), port=free_port(), timeout=600)
    out["ready 2"] = server.ready_seconds
    try:
        loaded = events(server, "prompt_cache_loaded")
        out["loaded"] = loaded[-1] if loaded else {}
        messages += [ask(2)]
        out["turn 3"] = request(server, messages, tools=True, max_tokens=max_tokens)
    finally:
        out["shutdown 2"] = terminate(server)
    shutil.rmtree(manifest.parent, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000,8000", help="characters/4 of history: 2000 ~ 4k, 8000 ~ 16k tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nctx", type=int, default=32768)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--sides", default="dir,no-dir", help="comma-separated: dir (prompt_cache_dir set), no-dir")
    parser.add_argument("--keep", action="store_true", help="keep the prompt cache folders (printed)")
    args = parser.parse_args()
    print(machine())
    print(f"Gemma 3 270M Q4_K_M, nctx {args.nctx}, {args.threads} threads, {args.max_tokens} tokens per turn, greedy; "
          "turn 1, side call, turn 2, SIGTERM, start again, turn 3")
    rows, answers = [], {}
    for size in [int(s) for s in args.sizes.split(",")]:
        for side in [s.strip() for s in args.sides.split(",")]:
            directory = Path(tempfile.mkdtemp(prefix="nexa-restart-")) / "prompt-cache" if side == "dir" else None
            load = os.getloadavg()
            r = restart_session(size, directory, args.nctx, args.threads, args.max_tokens)
            t1, t2, t3 = r["turn 1"], r["turn 2"], r["turn 3"]
            answers.setdefault(size, {})[side] = [t1["text"], t2["text"], t3["text"]]
            rows.append([f"~{size}", side, f"{t1['ttft']:.2f}", f"{t2['ttft']:.2f} ({t2['cached']})",
                         f"{r['shutdown']:.2f}",
                         f"{r['saved'].get('entries', '-')}/{r['saved'].get('seconds', '-')}",
                         f"{r['folder MB']:.1f}", f"{r['ready 1']:.2f}", f"{r['ready 2']:.2f}",
                         f"{r['loaded'].get('entries', '-')}/{r['loaded'].get('seconds', '-')}",
                         f"{t3['ttft']:.2f}", t3["prompt"], t3["cached"], f"{t3['prefill_tps']:.0f}",
                         f"{load[0]:.1f}-{os.getloadavg()[0]:.1f}"])
            print(f"\n~{size} {side}: {json.dumps({k: v for k, v in r.items() if not k.startswith('turn')})}")
            for name in ("turn 1", "side", "turn 2", "turn 3"):
                print(f"  {name}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r[name].items()}))
            sys.stdout.flush()
            if directory and not args.keep:
                shutil.rmtree(directory.parent, ignore_errors=True)
            elif directory:
                print(f"  folder kept: {directory}")
    print()
    print(table(["size", "side", "turn 1 TTFT s", "turn 2 TTFT s (cached)", "SIGTERM→exit s", "saved entries/s",
                 "folder MB", "ready 1 s", "ready 2 s", "loaded entries/s", "turn 3 TTFT s", "turn 3 prompt",
                 "turn 3 cached", "turn 3 prefill tok/s", "load"], rows))
    for size, by_side in answers.items():
        if len(by_side) > 1:
            texts = list(by_side.values())
            same = [all(t[i] == texts[0][i] for t in texts) for i in range(3)]
            print(f"~{size}: greedy answers equal across sides (turn 1, 2, 3): {same}")
    print(machine())


if __name__ == "__main__":
    main()
