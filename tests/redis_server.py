"""A real Redis (or Valkey) server for the state store's tests: Debian's `redis-server` or
`valkey-server` (scripts/test.sh installs it), on a free loopback port, with a password,
no persistence, and its own folder. No mock: the Lua scripts and expiry are Redis's own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

PASSWORD = "nexa-test-redis-password"
PASSWORD_VAR = "NEXA_TEST_REDIS_PASSWORD"


def binary() -> str:
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found is None:
        raise RuntimeError("neither valkey-server nor redis-server is installed: scripts/test.sh installs "
                           "redis-server (apt-get install redis-server)")
    return found


class RedisServer:
    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://:${{{PASSWORD_VAR}}}@127.0.0.1:{port}/0"  # the password comes from the environment

    def start(self) -> "RedisServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.folder / "redis.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis did not listen within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as a crash would: no shutdown save (there is none anyway)
            self.proc.wait(10)
        self.proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=5)
        client.flushall()
        client.close()
