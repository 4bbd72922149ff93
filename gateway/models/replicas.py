"""The thread side of a model handle: each replica's thread loads its own engine instance and
then serves the handle's job queue.

Split from gateway.models.handle (admission, state and the async calls) because the two halves meet
only at the queue: the handle admits and submits jobs from the event loop; these threads take them,
run them on an engine and settle them back through the loop. `ModelHandle` inherits this class; the
attributes annotated below are the handle's, set in its `__init__`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from backends.base import Backend
from gateway.manifest import hub
from gateway.models import batcher, worker
from gateway.models.jobs import Job, deliver, fail, pump, settle, taken
from gateway.models.state import ModelState, ModelUnavailable, Owner
from gateway.observability import metrics
from gateway.observability.prompt_cache import engine_caches
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.gateway.models.handle")


class ReplicaThreads:
    """Loading, serving and stopping the replica threads of one model."""

    spec: ModelSpec
    pool: Owner
    state: ModelState
    error: str | None
    load_seconds: float | None
    size_bytes: int
    last_used: float
    failed_at: float
    admitted: int
    running: int
    capabilities: frozenset
    backends: list[Backend]
    _avg_seconds: float
    _jobs: queue.Queue
    _threads: list[threading.Thread]
    _count: threading.Lock
    _loaded: asyncio.Future | None
    _unloaded: asyncio.Event

    name: str
    loop: asyncio.AbstractEventLoop

    def start_loading(self) -> asyncio.Future:
        """Start the replica threads; each loads its own engine instance, then serves jobs."""
        if self._loaded is None:
            self.state = ModelState.loading
            self.error = None
            self._loaded = self.loop.create_future()
            self._unloaded.clear()
            self._jobs = queue.Queue()
            self.backends = []
            started = time.monotonic()
            results: list[BaseException | None] = []
            lock = threading.Lock()

            def reported(outcome: BaseException | None) -> None:
                with lock:
                    results.append(outcome)
                    done = len(results) == self.spec.replicas
                if done:
                    self.loop.call_soon_threadsafe(self._finish_loading, results, time.monotonic() - started)

            self._threads = [
                threading.Thread(target=self._replica, args=(i, self._jobs, reported), daemon=True,
                                 name=f"model-{self.name}" + (f"-{i}" if self.spec.replicas > 1 else ""))
                for i in range(self.spec.replicas)
            ]
            for thread in self._threads:
                thread.start()
        return self._loaded

    def _finish_loading(self, results: list[BaseException | None], seconds: float) -> None:
        failures = [r for r in results if r is not None]
        if failures:
            self.error = str(failures[0]) or type(failures[0]).__name__
            self.state = ModelState.failed
            self.failed_at = time.monotonic()
            log.error("model %s failed to load: %s", self.name, self.error,
                      extra={"event": "model_failed", "model": self.name})
            self.stop_workers()  # the healthy replicas close their engines
            metrics.LOADS.labels(self.name, "failed").inc()
        else:
            self.state = ModelState.ready
            if self.backends:  # an instance may offer less than its class (e.g. an English-only Whisper)
                self.capabilities = frozenset(self.backends[0].capabilities)
            self.load_seconds = seconds
            self.last_used = time.monotonic()
            metrics.LOADS.labels(self.name, "ok").inc()
            metrics.LOAD_SECONDS.labels(self.name).observe(seconds)
            log.info("loaded model %s in %.2fs", self.name, seconds,
                     extra={"event": "model_loaded", "model": self.name, "seconds": round(seconds, 3),
                            "replicas": self.spec.replicas})
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(None)

    def _replica(self, index: int, jobs: queue.Queue, reported: Callable[[BaseException | None], None]) -> None:
        backend: Backend | None = None
        try:
            settings = self.pool.settings
            spec, path = hub.fetch_model(self.spec, offline=bool(getattr(settings, "offline", False)),
                                         verify=getattr(settings, "verify", "first_load"))
            self.size_bytes = size_on_disk(path) + int(spec.prompt_cache or 0)
            backend = worker.load(spec, path)  # in a worker process if its class asks for one
            self.backends.append(backend)
            persist = getattr(backend, "persist_prompt_cache", None)
            if getattr(settings, "prompt_cache_dir", None) and callable(persist):
                persist(settings.prompt_cache_dir)  # reads what the last run saved (backends/prompt_cache_disk.py)
            if spec.prompt_cache is None and index == 0:  # the default bound is known now (the model's KV size)
                self.size_bytes += sum(cache.capacity for cache in engine_caches([backend]))
        except BaseException as exc:  # noqa: BLE001 - every load failure becomes a model state
            reported(exc)
        else:
            reported(None)
        # A batched instance (`parallel: N`) runs N jobs at once: N threads hand their requests to the
        # engine, whose own scheduler decides what runs in each step. One stop sentinel per thread.
        lanes = [threading.Thread(target=self._serve, args=(backend, jobs), daemon=True,
                                  name=f"{threading.current_thread().name}-lane{i}")
                 for i in range(1, self.spec.parallel)] if backend is not None else []
        for lane in lanes:
            lane.start()
        self._serve(backend, jobs)
        join_threads(lanes)
        if backend is not None:
            backend.close()

    def _serve(self, backend: Backend | None, jobs: queue.Queue) -> None:
        # Embedding jobs queued behind this one may be merged into one engine call (gateway.models.batcher).
        gatherer = batcher.Gatherer(jobs, lambda gathered: self.admitted - self.running - jobs.qsize() > gathered)
        taken: list[Job | None] = []  # a job the gatherer took that runs next
        while True:
            job = taken.pop() if taken else jobs.get()
            if job is None:
                break
            if backend is None or self.state == ModelState.failed:
                fail(self.loop, job, ModelUnavailable(f"model {self.name!r} failed to load: {self.error}"))
                continue
            if job.batch is not None and job.future is not None:
                group, taken = gatherer.gather(job)
                self._execute_batch(backend, group)
            else:
                self._execute(backend, job)

    @property
    def slots(self) -> int:
        """Requests this model runs at once: replicas × parallel sequences each."""
        return self.spec.replicas * self.spec.parallel

    def stop_workers(self) -> None:
        """One stop sentinel per job thread (surplus ones are dropped with the queue at the next load)."""
        for _ in range(self.slots):
            self._jobs.put(None)

    def _execute(self, backend: Backend, job: Job) -> None:
        if time.monotonic() > job.deadline:
            fail(self.loop, job, ModelUnavailable(
                f"model {self.name!r}: the request waited longer than {self.spec.queue_timeout_s:g}s in the queue",
                retry_after=self._avg_seconds, code="queue_timeout"))
            return
        taken([job], self.name)
        with self._count:  # several job threads per replica when `parallel` > 1
            self.running += 1
        try:
            if job.future is not None:
                if not job.future.cancelled():
                    settle(self.loop, job.future, job.work, backend)
                return
            pump(job.channel, job.work, backend)
        finally:
            with self._count:
                self.running -= 1

    def _execute_batch(self, backend: Backend, group: list[Job]) -> None:
        """Mergeable jobs (gateway.models.batcher) in one engine call; expired and abandoned ones are skipped."""
        live = []
        for job in group:
            if time.monotonic() > job.deadline:
                self._execute(backend, job)  # answers queue_timeout
            elif not job.future.cancelled():
                live.append(job)
        if not live:
            return
        taken(live, self.name)
        with self._count:
            self.running += len(live)
        try:
            batcher.run(self.loop, backend, live, deliver)
        finally:
            with self._count:
                self.running -= len(live)

def join_threads(threads: list[threading.Thread], timeout: float | None = None) -> None:
    for thread in threads:
        thread.join(timeout)


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
