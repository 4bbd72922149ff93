"""What every server adapter needs besides the translation itself: the manifest
reloader's options, and a busy-port check that fails with one line instead of a
traceback (or, with Robyn, an interactive prompt)."""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any

from schemas.manifest import Manifest


def reloader_options(manifest: Manifest, manifest_path: str | None,
                     watch_files: list[str] | tuple = ()) -> dict[str, Any]:
    """The `Gateway(reloader_options=...)` the CLI's flags ask for.

    A manifest file is re-read on reload; in one-model mode (no file) the model
    file itself is watched, so replacing the weights reloads the model.
    """
    return {
        "manifest_path": os.path.abspath(manifest_path) if manifest_path else None,  # keeps symlinks: see reload.py
        "watch": bool(manifest.server.reload),
        "model_files": [str(p) for p in watch_files if p],
    }


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (host, port).

    Binds a throwaway socket the way servers do (SO_REUSEADDR, so sockets in
    TIME_WAIT do not count) and releases it at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def busy_port_message(host: str, port: int) -> str:
    return f"nexa: port {port} on {host} is already in use"


def exit_if_port_busy(host: str, port: int) -> None:
    """Exit with status 1 and one line on stderr when the port is taken (or cannot be bound)."""
    try:
        busy = port_in_use(host, port)
    except OSError as exc:
        _fail(f"nexa: cannot listen on {host}:{port}: {exc.strerror or exc}")
    if busy:
        _fail(busy_port_message(host, port))


def _fail(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    raise SystemExit(1)
