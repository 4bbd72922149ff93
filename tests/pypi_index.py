"""A tiny PEP 503 "simple" package index on loopback, and a builder for small wheels.

Used by tests/test_hub.py to exercise the real `pip download` path of
`gateway.manifest.hub` without touching the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def normalize(name: str) -> str:
    """PEP 503 project-name normalisation (the /simple/<name>/ path)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(name: str) -> str:
    """The distribution part of a wheel filename (PEP 427: runs of -_. become _)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(folder: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """Write `name-version-py3-none-any.whl` into `folder` holding `members` (paths
    like `pkg/data/file.bin`) plus a valid dist-info (METADATA, WHEEL, RECORD)."""
    dist = wheel_name(name)
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: nexa-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = Path(folder) / f"{dist}-{version}-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


class PackageIndex:
    """Serves the wheels in `folder` as a PEP 503 index at `url` (…/simple/).

    Every request is recorded in `requests` (method, path), so a test can
    assert that nothing was downloaded. Use as a context manager, or call
    `start()` / `stop()`.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------
    def add(self, name: str, version: str, members: dict[str, bytes]) -> Path:
        return build_wheel(self.folder, name, version, members)

    def _wheels(self) -> dict[str, list[Path]]:
        projects: dict[str, list[Path]] = {}
        for wheel in sorted(self.folder.glob("*.whl")):
            projects.setdefault(normalize(wheel.name.split("-", 1)[0]), []).append(wheel)
        return projects

    def _page(self, path: str) -> tuple[int, str, bytes]:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        projects = self._wheels()
        if parts == ["simple"]:
            links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(projects))
            return 200, "text/html", f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()
        if len(parts) == 2 and parts[0] == "simple":
            wheels = projects.get(normalize(parts[1]))
            if not wheels:
                return 404, "text/plain", b"not found\n"
            links = "".join(
                f'<a href="/files/{html.escape(w.name)}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
                f"{html.escape(w.name)}</a>\n"
                for w in wheels
            )
            body = f"<!DOCTYPE html><html><body>\n<h1>Links for {parts[1]}</h1>\n{links}</body></html>\n"
            return 200, "text/html", body.encode()
        if len(parts) == 2 and parts[0] == "files":
            wheel = self.folder / parts[1]
            if "/" not in parts[1] and wheel.is_file():
                return 200, "application/octet-stream", wheel.read_bytes()
        return 404, "text/plain", b"not found\n"

    # -- server ----------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "index not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple/"

    def start(self) -> "PackageIndex":
        index = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with index._lock:
                    index.requests.append(("GET", self.path))
                status, kind, body = index._page(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802
                with index._lock:
                    index.requests.append(("HEAD", self.path))
                status, kind, body = index._page(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()

            def log_message(self, format: str, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.timeout = 1
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="pypi-index", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "PackageIndex":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def downloads(self) -> list[str]:
        """Paths of wheel files that were fetched."""
        with self._lock:
            return [path for method, path in self.requests if path.startswith("/files/")]
