"""A gateway killed outright (SIGKILL: the OOM killer, `kill -9`) takes its worker processes with it.
Granian serves from a worker process; before, that worker lived on as an orphan, with the models in
memory, background jobs running and the listening socket held, so the restarted gateway found its port busy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from gateway.servers.common import port_in_use
from tests.conftest import Server, write_manifest

pytestmark = [pytest.mark.timeout(120)]

FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent's pid


def descendants(root: int) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        children = {int(p) for p in os.listdir("/proc") if p.isdigit() and parent_of(int(p)) in frontier}
        frontier = children - found
        found |= children
    return found


def alive(pid: int) -> bool:
    """Running (a zombie an init that never reaps leaves behind has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc (Linux)")
@pytest.mark.parametrize("engine", ["granian", "robyn"])
def test_a_killed_gateway_takes_its_workers_with_it(engine: str, tmp_path: Path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "a", **FAKE, "preload": True}])
    server = Server(["-c", str(manifest), "--server", engine], tmp_path)
    workers = descendants(server.proc.pid)
    try:
        if engine == "granian":
            assert workers, "Granian serves from a worker process"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "a worker outlived its supervisor"
        while port_in_use("127.0.0.1", server.port) and time.monotonic() < deadline:  # its exit closes it
            time.sleep(0.1)
        assert not port_in_use("127.0.0.1", server.port)  # a restarted gateway can listen there again
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()
