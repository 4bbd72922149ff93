"""Run a backend in a child process, so it can be stopped when nobody waits for it any more.

Some engines cannot be interrupted in-process: stable-diffusion.cpp runs a whole generation in
one native call and offers no way to stop it, so a request that hits `timeout_s`, or whose
client leaves, would keep the engine (and every request queued behind it) busy to the end.
A backend class that sets `in_child_process = True` is loaded in a worker process of its own
instead; the model's replica thread talks to it through a socket pair. While a call runs, the
thread polls the job (`gateway.models.jobs.abandoned`): once its caller has gone, the worker is
killed (SIGKILL) and a fresh one is loaded, so the next request finds an idle engine. A
worker that crashes (a segfault in native code) costs its request a 5xx, not the gateway,
and is restarted the same way.

Only methods that return a value are forwarded (what image generation needs); arguments and
results cross by pickle, so they must be picklable (PIL images are). The worker logs through
the gateway's own handler format to the same stderr.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from backends.base import Backend
from backends.errors import UpstreamError
from backends.registry import backend_for
from gateway.models import jobs
from gateway.observability.logs import JSONFormatter, setup_logging
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.gateway.models.worker")

POLL_S = 0.05  # how often a waiting call checks whether its caller is still there
CLOSE_WAIT_S = 10.0  # a worker asked to close gets this long before it is killed


class WorkerCrashed(UpstreamError):
    """The worker process died during a call: the gateway's failure, answered 500."""

    def __init__(self, message: str):
        super().__init__(message, status=500, code="engine_crashed")


class Abandoned(Exception):
    """The call was stopped because its caller left; nobody sees this result."""


def load(spec: ModelSpec, path: Path) -> Backend:
    """Load the backend `spec` names, in a worker process when its class asks for one."""
    cls = backend_for(spec)
    if getattr(cls, "in_child_process", False):
        return ChildBackend(spec, path, cls)
    return cls.load(spec, path)


class ChildBackend(Backend):
    """Stands in for a backend that lives in a worker process (see the module docstring)."""

    def __init__(self, spec: ModelSpec, path: Path, engine: type[Backend]):
        super().__init__(spec, path)
        self._engine = engine  # the class the worker runs: which methods exist
        self._lock = threading.Lock()  # one call at a time, as on any replica
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._info: dict[str, Any] = {}
        self.restarts = 0
        self._start()

    # -- the worker's life -----------------------------------------------------------------

    def _start(self) -> None:
        """Spawn a worker and wait until it has loaded the model (its LoadError is ours)."""
        ours, theirs = socket.socketpair()
        nexa = logging.getLogger("nexa")
        fmt = "json" if any(isinstance(h.formatter, JSONFormatter) for h in nexa.handlers) else "text"
        command = [sys.executable, "-m", "gateway.models.worker", str(theirs.fileno()), logging.getLevelName(nexa.level), fmt]
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            self._proc = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            kind, value = self._exchange((self.spec.model_dump_json(), str(self.path)), abandonable=False)
        except BaseException:
            self._stop()
            raise
        if kind == "error":
            self._stop()
            raise value
        self.capabilities = frozenset(value["capabilities"])
        self._info = value["info"]

    def _stop(self, wait: float = 0.0) -> None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if proc is not None:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if conn is not None:
            conn.close()

    def _restart(self, why: str) -> None:
        started = time.monotonic()
        self._stop()
        self.restarts += 1
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - the next call tries again and reports it
            log.error("model %s: restarting its worker failed: %s", self.spec.name, exc,
                      extra={"event": "worker_restart_failed", "model": self.spec.name})
            return
        log.warning("model %s: worker restarted (%s) in %.2fs", self.spec.name, why, time.monotonic() - started,
                    extra={"event": "worker_restarted", "model": self.spec.name, "reason": why,
                           "seconds": round(time.monotonic() - started, 3)})

    def _exchange(self, message: Any, abandonable: bool) -> tuple[str, Any]:
        """Send `message`, then wait for the worker's answer; raises WorkerCrashed if it died,
        Abandoned if the caller left."""
        assert self._conn is not None and self._proc is not None
        try:
            self._conn.send(message)
            while not self._conn.poll(POLL_S):
                if abandonable and jobs.abandoned():
                    raise Abandoned()
                if self._proc.poll() is not None:
                    break
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.wait()
            reason = f"signal {_signal_name(-code)}" if code < 0 else f"exit status {code}"
            raise WorkerCrashed(f"the engine process of model {self.spec.name!r} crashed ({reason})") from None

    # -- calls -----------------------------------------------------------------------------

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._conn is None or self._proc is None or self._proc.poll() is not None:
                self._restart("it was not running")  # a failed restart, or killed while idle (OOM)
                if self._conn is None:
                    raise WorkerCrashed(f"the engine process of model {self.spec.name!r} cannot be started")
            try:
                kind, value = self._exchange((method, args, kwargs), abandonable=True)
            except Abandoned:
                self._restart("its caller left or timed out")
                raise
            except WorkerCrashed:
                self._restart("it crashed")
                raise
        if kind == "error":
            raise value
        return value

    def __getattr__(self, name: str) -> Any:
        """The engine's public methods, run in the worker; anything else does not exist here."""
        if name.startswith("_") or not callable(getattr(self.__dict__.get("_engine"), name, None)):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    def info(self) -> dict[str, Any]:
        return {**self._info, "worker_pid": self._proc.pid if self._proc else None, "worker_restarts": self.restarts}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            self._stop(CLOSE_WAIT_S)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# -- the worker process ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the gateway dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(conn: Connection) -> None:
    """Load the backend the gateway sends, then run its calls until told to stop."""
    spec_json, path = conn.recv()
    spec = ModelSpec.model_validate_json(spec_json)
    try:
        backend = backend_for(spec).load(spec, Path(path))
    except BaseException as exc:  # noqa: BLE001 - the gateway reports it as the model's load failure
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ok", {"capabilities": sorted(backend.capabilities), "info": backend.info()}))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return  # the gateway is gone
            if message is None:
                return
            method, args, kwargs = message
            try:
                result = getattr(backend, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - raised again in the gateway
                conn.send(("error", _portable(exc)))
                continue
            try:
                conn.send(("ok", result))  # pickled whole before anything is written
            except Exception as exc:  # noqa: BLE001
                conn.send(("error", RuntimeError(f"the result of {method} cannot be sent to the gateway: {exc}")))
    finally:
        backend.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RuntimeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def main(argv: list[str]) -> int:
    fd, level, fmt = int(argv[0]), argv[1], argv[2]
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the gateway closes us
    setup_logging(level.lower(), fmt)
    serve(Connection(fd))
    return 0


if __name__ == "__main__":  # pragma: no cover - run by ChildBackend
    sys.exit(main(sys.argv[1:]))
