"""The model pool: loads backends and runs all inference off the event loop.

Each loaded model owns one thread (llama.cpp and whisper contexts are not
re-entrant), fed by a FIFO job queue, so requests to one model run in arrival
order while the event loop stays free for health checks and other models.
Streams cross from that thread to the event loop through a small bounded
`Channel`: the engine can run at most a few tokens ahead of the client, and a
client that leaves closes the channel, which stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from backends.base import Backend, LoadError, backend_class
from gateway import hub
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.pool")

_END = object()


class ModelState(str, Enum):
    unloaded = "unloaded"
    loading = "loading"
    ready = "ready"
    failed = "failed"


class ModelUnavailable(Exception):
    """The model could not be loaded; the request gets a 503."""


class Channel:
    """A bounded hand-off from one producer thread to one asyncio consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 4):
        self._loop = loop
        self._maxsize = maxsize
        self._items: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._ready = asyncio.Event()

    # producer side (engine thread)
    def put(self, kind: str, value: Any = None) -> bool:
        """Block while the buffer is full. Returns False once the consumer has gone."""
        with self._cond:
            while len(self._items) >= self._maxsize and not self._closed and kind == "item":
                self._cond.wait(0.05)
            if self._closed:
                return False
            self._items.append((kind, value))
        self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def closed(self) -> bool:
        return self._closed

    # consumer side (event loop)
    async def get(self) -> tuple[str, Any]:
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


@dataclass
class _Job:
    work: Callable[[Backend], Any]
    future: asyncio.Future | None = None
    channel: Channel | None = None
    enqueued: float = field(default_factory=time.monotonic)


class ModelHandle:
    """One declared model: its spec, state, thread and job queue."""

    def __init__(self, spec: ModelSpec, loop: asyncio.AbstractEventLoop, stream_buffer: int = 4):
        self.spec = spec
        self.state = ModelState.unloaded
        self.error: str | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.load_seconds: float | None = None
        self.last_used = time.monotonic()
        self._loop = loop
        self._stream_buffer = stream_buffer
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._loaded: asyncio.Future | None = None
        self.backend: Backend | None = None
        self.in_flight = 0
        try:
            self.capabilities = backend_class(spec.type, spec.format).capabilities
        except LoadError as exc:
            self.error = str(exc)

    @property
    def name(self) -> str:
        return self.spec.name

    def queue_depth(self) -> int:
        return self._jobs.qsize()

    # -- loading -------------------------------------------------------------

    def start_loading(self) -> asyncio.Future:
        if self._loaded is None:
            self.state = ModelState.loading
            self._loaded = self._loop.create_future()
            self._thread = threading.Thread(target=self._run, name=f"model-{self.name}", daemon=True)
            self._thread.start()
        return self._loaded

    async def ready(self) -> None:
        if self.state == ModelState.ready:
            return
        await asyncio.shield(self.start_loading())
        if self.state != ModelState.ready:
            raise ModelUnavailable(f"model {self.name!r} failed to load: {self.error}")

    def _load(self) -> Backend:
        started = time.monotonic()
        path = hub.fetch(self.spec)
        backend = backend_class(self.spec.type, self.spec.format).load(self.spec, Path(path))
        self.load_seconds = time.monotonic() - started
        log.info("loaded model %s in %.2fs", self.name, self.load_seconds,
                 extra={"event": "model_loaded", "model": self.name, "seconds": round(self.load_seconds, 3)})
        return backend

    def _run(self) -> None:
        """The model's own thread: load, then execute jobs in FIFO order until told to stop."""
        try:
            self.backend = self._load()
            self.capabilities = self.backend.capabilities
            self.state = ModelState.ready
        except Exception as exc:  # noqa: BLE001 - every load failure becomes a model state
            self.state = ModelState.failed
            self.error = str(exc) or type(exc).__name__
            log.error("model %s failed to load: %s", self.name, self.error,
                      extra={"event": "model_failed", "model": self.name})
        self._loop.call_soon_threadsafe(_set_result, self._loaded, None)
        while True:
            job = self._jobs.get()
            if job is None:
                break
            if self.backend is None:
                self._fail(job, ModelUnavailable(f"model {self.name!r} failed to load: {self.error}"))
                continue
            self._execute(job)
        if self.backend is not None:
            try:
                self.backend.close()
            finally:
                self.backend = None
                self.state = ModelState.unloaded

    def _fail(self, job: _Job, exc: Exception) -> None:
        if job.future is not None:
            self._loop.call_soon_threadsafe(_set_exception, job.future, exc)
        elif job.channel is not None:
            job.channel.put("error", exc)

    def _execute(self, job: _Job) -> None:
        if job.future is not None:
            if job.future.cancelled():
                return  # the client left while queued
            try:
                result = job.work(self.backend)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                self._loop.call_soon_threadsafe(_set_exception, job.future, exc)
            else:
                self._loop.call_soon_threadsafe(_set_result, job.future, result)
            return
        channel = job.channel
        if channel.closed():
            return
        iterator: Iterator[Any] | None = None
        try:
            iterator = job.work(self.backend, channel.closed)
            for item in iterator:
                if not channel.put("item", item):
                    break
            else:
                channel.put("end")
        except BaseException as exc:  # noqa: BLE001
            channel.put("error", exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    # -- running -------------------------------------------------------------

    async def call(self, work: Callable[[Backend], Any]) -> Any:
        """Run `work(backend)` on the model thread and return its result."""
        await self.ready()
        future = self._loop.create_future()
        self._submit(_Job(work, future=future))
        self.in_flight += 1
        try:
            return await future
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()

    async def stream(self, work: Callable[[Backend, Callable[[], bool]], Iterator[Any]]) -> AsyncIterator[Any]:
        """Run a generator on the model thread, yielding its items here as they arrive.

        `work(backend, cancelled)` should check `cancelled()` between steps; it turns
        true as soon as the consumer stops listening."""
        await self.ready()
        channel = Channel(self._loop, self._stream_buffer)
        self._submit(_Job(work, channel=channel))
        self.in_flight += 1
        try:
            while True:
                kind, value = await channel.get()
                if kind == "item":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            channel.close()  # stops the producer at its next token if we leave early
            self.in_flight -= 1
            self.last_used = time.monotonic()

    def _submit(self, job: _Job) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise ModelUnavailable(f"model {self.name!r} is not running")
        self._jobs.put(job)

    def stop(self, timeout: float | None = None) -> None:
        """Finish queued work, then unload. Blocks: call from a thread, not the loop."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "error": self.error,
            "queue_depth": self.queue_depth(),
            "in_flight": self.in_flight,
            "load_seconds": self.load_seconds,
        }


def _set_result(future: asyncio.Future | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class ModelPool:
    """Every model of the active manifest, addressable by name or alias."""

    def __init__(self, specs: list[ModelSpec], loop: asyncio.AbstractEventLoop, stream_buffer: int = 4):
        self.loop = loop
        self.handles: dict[str, ModelHandle] = {}
        self._by_name: dict[str, ModelHandle] = {}
        for spec in specs:
            handle = ModelHandle(spec, loop, stream_buffer)
            self.handles[spec.name] = handle
            for name in spec.names:
                self._by_name[name] = handle

    def get(self, name: str) -> ModelHandle | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(self.handles.values())

    def preload(self) -> None:
        for handle in self:
            if handle.spec.preload:
                handle.start_loading()

    def is_ready(self) -> bool:
        return all(h.state == ModelState.ready for h in self if h.spec.preload)

    def close(self, timeout: float | None = None) -> None:
        for handle in self:
            handle.stop(timeout)
