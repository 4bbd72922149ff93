"""Shared fixtures: real model files (fetched once per machine into the nexa
cache) and real gateway processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NEXA = [sys.executable, "-m", "gateway.cli"]

os.environ.setdefault("GGML_NO_BACKTRACE", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch_catalog(name: str) -> Path:
    """Fetch a catalog model into the machine's shared cache (a no-op once cached)."""
    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    return hub.fetch(ModelSpec(name=name, source=name))


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A bound socket that never listens: connecting to it is refused, and nobody else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return fetch_catalog("smollm2")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return fetch_catalog("gemma")


class Server:
    """A `nexa server` subprocess on a free loopback port."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None, ready_timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        full_env = {**os.environ, "GGML_NO_BACKTRACE": "1", "NEXA_LOG_FORMAT": "json", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*NEXA, "server", *args, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log(6000)}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log(6000)}")

    def log(self, tail: int | None = None) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def write_manifest(path: Path, models: list[dict], server: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"server": server or {}, "models": models}))
    return path


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def start(args: list[str], **kwargs) -> Server:
        server = Server(args, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, smollm2_path: Path, gemma_path: Path) -> Iterator[Server]:
    """One gateway with the bundled chat model and Gemma, shared by a test module."""
    tmp = tmp_path_factory.mktemp("text")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "aliases": ["chat-default"], "source": "smollm2", "nctx": 2048, "preload": True},
        {"name": "gemma", "source": "gemma", "nctx": 1024, "preload": True},
    ])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


def models(url: str, **kwargs) -> dict[str, dict]:
    """The gateway's /v1/models cards by id."""
    return {m["id"]: m for m in httpx.get(url + "/v1/models", timeout=10, **kwargs).json()["data"]}


def metric(url: str, name: str, **labels) -> float:
    """The sum of a Prometheus metric's samples that carry these labels."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def corrupt_in_place(path: Path, length: int = 1 << 20) -> None:
    """Overwrite `length` bytes in the middle of a file with random bytes, keeping its size and
    mtime: what a failing disk or a stray write does, invisible to a size/mtime marker."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(max(0, stat.st_size // 2 - length // 2))
        handle.write(os.urandom(min(length, stat.st_size)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def wait_for(predicate, timeout: float = 30, interval: float = 0.05):
    """Poll until `predicate()` is truthy (bounded), and return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator:
    """A real redis-server / valkey-server on a free loopback port (password in NEXA_TEST_REDIS_PASSWORD)."""
    from tests.redis_server import PASSWORD, PASSWORD_VAR, RedisServer

    os.environ[PASSWORD_VAR] = PASSWORD
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rediss_server(tmp_path_factory) -> Iterator:
    """The same over TLS only: a throwaway CA in its folder, `rediss://...?ssl_ca_certs=<ca.pem>` as its URL."""
    from tests.redis_server import PASSWORD, PASSWORD_VAR, RedisServer

    os.environ[PASSWORD_VAR] = PASSWORD
    server = RedisServer(tmp_path_factory.mktemp("rediss"), free_port(), tls=True).start()
    yield server
    server.stop()
