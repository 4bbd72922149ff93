"""A real Redis (or Valkey) server for the state store's tests: Debian's `redis-server` or
`valkey-server` (scripts/test.sh installs it), on a free loopback port, with a password,
no persistence, and its own folder. No mock: the Lua scripts and expiry are Redis's own.

`tls=True` serves only TLS (`rediss://`), with a throwaway CA and a server certificate for
IP 127.0.0.1 made in that folder by the `openssl` CLI (Debian's, beside redis-server: the
`cryptography` package is no dependency of the project), so the client really verifies a chain."""

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


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a CA of its own, and a server certificate it signed whose
    subjectAltName is IP:127.0.0.1, as a client that checks the host name requires."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the TLS tests need the openssl CLI (apt-get install openssl)")
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, request = folder / "server.pem", folder / "server.key", folder / "server.csr"
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n"
                          "keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", "/CN=nexa test CA")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
            "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(extensions))
    return ca, cert, key


class RedisServer:
    def __init__(self, folder: Path, port: int, tls: bool = False):
        self.folder, self.port, self.tls = folder, port, tls
        self.proc: subprocess.Popen | None = None
        self.ca: Path | None = None
        if tls:
            folder.mkdir(parents=True, exist_ok=True)
            self.ca, self.cert, self.key = make_certificates(folder)
        # the password comes from the environment
        self.url = (f"rediss://:${{{PASSWORD_VAR}}}@127.0.0.1:{port}/0?ssl_ca_certs={self.ca}" if tls
                    else f"redis://:${{{PASSWORD_VAR}}}@127.0.0.1:{port}/0")

    def start(self) -> "RedisServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        ports = (["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                  "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]
                 if self.tls else ["--port", str(self.port)])
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [binary(), *ports, "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", "",
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

    def client(self):
        """A synchronous client with the password (and the CA, over TLS), for checks behind the gateway's back."""
        import redis

        tls = {"ssl": True, "ssl_ca_certs": str(self.ca)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=5, **tls)

    def flush(self) -> None:
        client = self.client()
        client.flushall()
        client.close()
