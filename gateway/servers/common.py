"""What every server adapter needs besides the translation itself: the manifest
reloader's options, a busy-port check that fails with one line instead of a
traceback (or, with Robyn, an interactive prompt), and a worker that ends with
the supervisor that started it."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from typing import Any

from schemas.manifest import Manifest

log = logging.getLogger("nexa.server")

SUPERVISOR_ENV = "NEXA_SUPERVISOR_PID"  # the pid of the process whose workers serve (set by the adapter)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def mark_supervisor() -> None:
    """Called in the supervisor before it starts its workers: they find its pid in their environment."""
    os.environ[SUPERVISOR_ENV] = str(os.getpid())


def die_with_supervisor() -> None:
    """In a worker process: be killed when the supervisor dies, however it dies. A supervisor killed with
    SIGKILL (the OOM killer, `kill -9`) never stops its worker, which then lives on as an orphan holding the
    model's memory, the listening socket (the restarted gateway finds its port busy) and any background
    responses. Linux's PR_SET_PDEATHSIG does this; elsewhere nothing is done. The workers are started by
    the supervisor's main thread, which lives as long as it does (the signal follows the parent thread)."""
    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not tie this worker to its supervisor (prctl errno %d)", ctypes.get_errno(),
                    extra={"event": "worker_orphan_guard"})
        return
    if os.getppid() != int(expected):  # the supervisor died before the guard was set: nobody serves with us
        log.error("the supervisor %s is gone; this worker exits", expected, extra={"event": "worker_orphaned"})
        os._exit(1)
