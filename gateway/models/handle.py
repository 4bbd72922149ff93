"""One declared model: its state, admission limits, and the async calls requests make.

Each engine instance (replica) owns one thread, because llama.cpp and whisper
contexts are not re-entrant; the replicas of a model pull from one FIFO queue,
so requests run in arrival order while the event loop stays free for health
checks and other models (the threads: gateway.models.replicas). Streams cross from that thread to the event loop
through a small bounded `Channel` (gateway.models.channel): the engine runs at most a
few tokens ahead of the client, and a client that leaves stops generation at
the next token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from backends.base import Backend
from backends.errors import LoadError
from gateway.models import batcher
from gateway.models.channel import Channel
from gateway.models.jobs import Job
from gateway.models.replicas import ReplicaThreads, join_threads
from gateway.models.state import ModelState, ModelUnavailable, Owner, capabilities_before_load
from gateway.observability import metrics, tracing
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.gateway.models.handle")


LOAD_RETRY_S = 10.0  # a model that failed to load is tried again by a request this long after


class ModelHandle(ReplicaThreads):
    """One declared model: its spec, state, replicas and their shared job queue."""

    def __init__(self, spec: ModelSpec, pool: Owner):
        self.spec = spec
        self.pool = pool
        self.state = ModelState.unloaded
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.size_bytes = 0
        self.last_used = time.monotonic()
        self.admitted = 0  # requests waiting or running
        self.running = 0
        self.submitted = 0  # jobs handed to the replicas and not finished
        self.retired = False  # removed or replaced by a reload
        self.successor: ModelHandle | None = None
        self._avg_seconds = 1.0
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._count = threading.Lock()
        self._loaded: asyncio.Future | None = None
        self._unloaded: asyncio.Event = asyncio.Event()
        self._unloading: asyncio.Task | None = None
        self.failed_at = 0.0
        self.backends: list[Backend] = []
        try:
            self.capabilities = capabilities_before_load(spec)
        except LoadError as exc:
            self.capabilities = frozenset()
            self.error = str(exc)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> Backend | None:
        return self.backends[0] if self.backends else None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.pool.loop

    def idle(self) -> bool:
        return self.admitted == 0 and self._jobs.qsize() == 0

    def queue_depth(self) -> int:
        return max(0, self.admitted - self.running)

    # -- loading and unloading ----------------------------------------------------

    async def ready(self) -> None:
        if self.state == ModelState.ready or self.retired:
            return  # a retired handle's callers move on to its successor
        if self.state == ModelState.unloading:
            await self._unloaded.wait()
            if self.retired:
                return
        if self.state == ModelState.failed and time.monotonic() - self.failed_at >= LOAD_RETRY_S:
            self.retry()  # a transient failure (a file being replaced, memory) is tried again, not forever
        if self.state in (ModelState.unloaded, ModelState.failed) and self._loaded is None:
            await self.pool.make_room(self)
            if self.retired:
                return  # replaced or removed while we made room: never load a retired handle
            self.start_loading()
        await asyncio.shield(self._loaded)
        if self.retired:
            return
        if self.state != ModelState.ready:
            wait = LOAD_RETRY_S - (time.monotonic() - self.failed_at)
            raise ModelUnavailable(f"model {self.name!r} failed to load: {self.error}", retry_after=max(1, wait))

    async def unload(self, reason: str = "unload") -> None:
        """Let queued and running work finish, then free the engines.

        Runs as one task per handle: a caller that is cancelled (a request whose
        client left while it evicted this model) does not abort the unload half-way,
        and concurrent unloads share one."""
        if self._unloading is None or self._unloading.done():
            self._unloading = self.loop.create_task(self._unload(reason))
        await asyncio.shield(self._unloading)

    async def _unload(self, reason: str) -> None:
        if self._loaded is None:
            return
        if not self._loaded.done():
            await asyncio.shield(self._loaded)
        self.state = ModelState.unloading  # from here on, new requests wait (or go to the successor)
        while self.submitted:
            await asyncio.sleep(0.02)
        threads, self._loaded = self._threads, None
        self.stop_workers()
        await asyncio.to_thread(join_threads, threads)
        self.backends = []
        if self.state == ModelState.unloading:
            self.state = ModelState.unloaded
        self._unloaded.set()
        metrics.UNLOADS.labels(self.name, reason).inc()
        log.info("unloaded model %s (%s)", self.name, reason, extra={"event": "model_unloaded", "model": self.name,
                                                                     "reason": reason})

    def retire(self, successor: "ModelHandle | None" = None) -> None:
        """Taken out of the manifest (removed, or replaced by `successor`): never loads again,
        and its callers move on to the successor."""
        self.retired, self.successor = True, successor

    def stop_threads(self, timeout: float | None = None) -> None:
        """Synchronous stop for servers whose event loop has already ended: each replica
        thread closes its engine after the job it is running."""
        threads = self._threads
        self.stop_workers()
        join_threads(threads, timeout)

    def retry(self) -> None:
        """A failed model may be loaded again by the next request (e.g. after its file was fixed)."""
        if self.state == ModelState.failed:
            self._loaded = None

    # -- running --------------------------------------------------------------------

    def _admit(self) -> None:
        limit = self.spec.max_queue + self.slots
        if self.admitted >= limit:
            wait = self._avg_seconds * (self.queue_depth() + 1) / self.slots
            if self.state == ModelState.loading:
                raise ModelUnavailable(f"model {self.name!r} is loading and its queue is full", retry_after=wait)
            raise ModelUnavailable(f"model {self.name!r} is busy: {self.admitted} requests are queued or running "
                                   f"(limit {limit}); retry later", status=429, retry_after=wait, code="queue_full")
        self.admitted += 1

    def _release(self, started: float, submitted: bool = False) -> None:
        self.admitted -= 1
        if submitted:
            self.submitted -= 1
        self.last_used = time.monotonic()
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * (self.last_used - started)

    def _submit(self, job: Job) -> None:
        if not any(t.is_alive() for t in self._threads):
            raise ModelUnavailable(f"model {self.name!r} is not running")
        self.submitted += 1
        self._jobs.put(job)

    def current(self) -> "ModelHandle":
        """The handle that serves new requests: a replaced model hands them to its successor."""
        handle = self
        while handle.retired:
            if handle.successor is None:
                raise ModelUnavailable(f"model {self.name!r} was removed from the manifest", status=404,
                                       code="model_not_found")
            handle = handle.successor
        return handle

    async def call(self, work: Callable[[Backend], Any], batch: "batcher.Batch | None" = None) -> Any:
        """Run `work(backend)` on a replica thread and return its result. With `batch`, the
        thread may instead run it merged with other queued jobs of its key (gateway.models.batcher)."""
        target = self.current()
        if target is not self:
            return await target.call(work, batch)
        self._admit()
        started = time.monotonic()
        submitted = False
        try:
            loading = self.state != ModelState.ready and time.monotonic()
            await self.ready()
            tracing.note_load(loading)
            if self.retired:
                return await self.current().call(work, batch)
            future = self.loop.create_future()
            self._submit(job := Job(work, started + self.spec.queue_timeout_s, future=future, batch=batch))
            tracing.note_submitted(job)
            submitted = True
            timeout = self.spec.timeout_s
            try:
                return await (asyncio.wait_for(asyncio.shield(future), timeout) if timeout else future)
            except asyncio.TimeoutError:
                raise ModelUnavailable(f"model {self.name!r} did not answer within {timeout:g}s", status=504,
                                       code="timeout") from None
            finally:
                future.cancel()  # no-op when answered; otherwise a queued job is skipped
        finally:
            self._release(started, submitted)

    async def call_batched(self, key: str, item: Any, size: int,
                           run: Callable[[Backend, list[Any]], list[Any]]) -> Any:
        """`run(backend, [item])[0]` on a replica thread, or merged there with queued jobs of the same
        `key` into one `run` over all their items (gateway.models.batcher), bounded by the model's
        `embed_batch_max` inputs and `embed_batch_wait_ms`. `run` answers one result or exception per
        item: this item's exception is raised here, its batch-mates' are theirs."""
        spec = self.current().spec
        batch = batcher.Batch(key=key, size=size, item=item, run=run, limit=spec.embed_batch_max,
                              wait_s=spec.embed_batch_wait_ms / 1000)

        def alone(backend: Backend) -> Any:
            outcome = run(backend, [item])[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return await self.call(alone, batch=batch)

    async def call_beside(self, work: Callable[[Backend], Any], allowed: str = "tokenizes_beside_generation") -> Any:
        """Run read-only engine work (tokenizing, rendering the chat template, counting a prompt) on a
        thread of its own, beside the replicas' decode slots, so that it never waits behind a generation.
        Engines whose class does not allow that kind of work (`allowed`: `tokenizes_beside_generation`,
        or `counts_beside` for `count_chat`) get it through the queue like any call. It counts as
        submitted work, so an unload waits for it before closing the engine."""
        target = self.current()
        if target is not self:
            return await target.call_beside(work, allowed)
        await self.ready()
        if self.retired:
            return await self.current().call_beside(work, allowed)
        backend = self.backend
        if backend is None or not getattr(type(backend), allowed, False):
            return await self.call(work)
        self.submitted += 1
        self.last_used = time.monotonic()
        try:
            return await asyncio.to_thread(work, backend)
        finally:
            self.submitted -= 1

    async def stream(self, work: Callable[[Backend, Callable[[], bool]], Iterator[Any]]) -> AsyncIterator[Any]:
        """Run a generator on a replica thread, yielding its items here as they arrive.

        `work(backend, cancelled)` should check `cancelled()` between steps; it turns
        true as soon as the consumer stops listening."""
        target = self.current()
        if target is not self:
            async for item in target.stream(work):
                yield item
            return
        self._admit()
        started = time.monotonic()
        channel = Channel(self.loop, self.pool.stream_buffer)
        submitted = False
        try:
            loading = self.state != ModelState.ready and time.monotonic()
            await self.ready()
            tracing.note_load(loading)
            if self.retired:
                async for item in self.current().stream(work):
                    yield item
                return
            self._submit(job := Job(work, started + self.spec.queue_timeout_s, channel=channel))
            tracing.note_submitted(job)
            submitted = True
            deadline = started + self.spec.timeout_s if self.spec.timeout_s else None
            while True:
                try:
                    get = channel.get()
                    kind, value = await (asyncio.wait_for(get, deadline - time.monotonic()) if deadline else get)
                except asyncio.TimeoutError:
                    raise ModelUnavailable(f"model {self.name!r}: the request ran longer than "
                                           f"{self.spec.timeout_s:g}s", status=504, code="timeout") from None
                if kind == "item":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            channel.close()  # stops the producer at its next step if we leave early
            self._release(started, submitted)
