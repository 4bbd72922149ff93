"""Shared helpers for the benchmark scripts: start a server, time streams, print tables.

Every figure is measured side by side in one run and reported as a median,
because these machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server subprocess that is ready when `ready_path` answers 200."""

    def __init__(self, argv: list[str], port: int, ready_path: str = "/ready", timeout: float = 180, env=None):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(f"/tmp/bench-{port}.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "GGML_NO_BACKTRACE": "1", **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv} exited: see /tmp/bench-{port}.log")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    self.ready_seconds = time.monotonic() - self.started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{argv} not ready after {timeout}s")

    def rss_mb(self) -> float:
        """Resident memory of the process tree (Granian runs a worker under its main process)."""
        pids = [self.proc.pid]
        try:
            children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
            pids += [int(p) for p in children]
        except OSError:
            pass
        return proc_mb(pids, "status", "VmRSS:")

    def pids(self) -> list[int]:
        """The process and its children (Granian runs its worker as a child)."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid, *(int(p) for p in children)]

    def cpu_seconds(self, pids: list[int] | None = None) -> float:
        """User + system CPU time of the process tree so far (clock-tick resolution);
        pass `pids()` from earlier to save a pgrep per call."""
        total = 0
        for pid in pids or self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def nexa(*args: str, port: int, **kwargs) -> Process:
    return Process([sys.executable, "-m", "gateway.cli", "server", *args, "--host", "127.0.0.1", "--port", str(port)],
                   port, **kwargs)


def stream_completion(client: httpx.Client, url: str, body: dict, text: bool = False):
    """(time to first token, total time, completion tokens) of one streamed completion,
    plus the streamed text when `text` is true. Servers that send no usage chunk get
    their content chunks counted instead."""
    started = time.perf_counter()
    first = None
    tokens = None
    chunks = 0
    pieces: list[str] = []
    with client.stream("POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            choices = data.get("choices") or []
            piece = choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content"))
            if piece:
                chunks += 1
                pieces.append(piece)
                if first is None:
                    first = time.perf_counter() - started
    result = (first or 0.0, time.perf_counter() - started, chunks if tokens is None else tokens)
    return (*result, "".join(pieces)) if text else result


def proc_mb(pids: list[int], source: str, field: str) -> float:
    """One memory field (kB lines such as `VmRSS:` in /proc/PID/status or `Pss:` in smaps_rollup)
    summed over processes, in MB; processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def p95(values) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))] if values else float("nan")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line, sep] + ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells])


def write_manifest(models: list[dict], server: dict | None = None) -> Path:
    """A manifest in a temporary folder (model sources are catalog names or absolute paths)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="nexa-bench-")) / "nexa.yaml"
    path.write_text(yaml.safe_dump({"server": server or {}, "models": models}))
    return path


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    """nproc, CPU model and load average: every table is printed with the machine it ran on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} cores ({model}), load average {load_average()}"


def alternate(round_index: int, sides: list) -> list:
    """Both orders in turn, so that whatever the machine does hits every side alike."""
    return sides if round_index % 2 == 0 else list(reversed(sides))
