"""Micro-batching on a model's thread: queued jobs that can share one engine call run as one.

The pool admits each request and queues it for the model's replica threads in
arrival order; while the engine is busy, the requests of other clients pile up
in that queue. When a replica thread takes a job that can be merged
(`Job.batch`), it also takes the jobs queued right behind it with the same
merge key, up to the batch's input limit, and runs them all in one engine call
(`Batch.run`), then settles each job's future with its own outcome.

Two rules keep this invisible to a client:
- Order: gathering stops at the first queued job that cannot join (another
  kind of job, another key, or one that would pass the limit); that job runs
  next, so the queue stays first in, first out.
- Latency: a lone client never waits. The thread waits for more jobs (at most
  `Batch.wait_s`) only while more seem to be coming: requests admitted to the
  model but not queued yet, or a previous call that merged several requests
  (a concurrent load, whose next requests arrive within a moment).
"""

from __future__ import annotations

import asyncio
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from backends.base import Backend


@dataclass
class Batch:
    """What makes a job mergeable: jobs whose batches have equal `key` may share one call."""

    key: Hashable
    size: int  # inputs this job adds to the engine call
    item: Any  # handed to `run`
    run: Callable[[Backend, list[Any]], list[Any]]  # one engine call; one result (or exception) per item
    limit: int = 64  # most inputs per merged call (a single bigger job still runs, alone)
    wait_s: float = 0.002  # longest wait for more jobs, when more seem to be coming


class Gatherer:
    """One per replica thread: takes a mergeable job's companions from the shared queue."""

    def __init__(self, jobs: queue.Queue, on_the_way: Callable[[int], bool]):
        self.jobs = jobs
        self.on_the_way = on_the_way  # (jobs gathered) -> are more admitted but not queued yet?
        self.last_size = 1

    def gather(self, first: Any) -> tuple[list[Any], list[Any]]:
        """(the jobs to run together, starting with `first`; a job taken that must run next, if any)."""
        batch: Batch = first.batch
        group, size, deadline = [first], batch.size, None
        while size < batch.limit:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                if batch.wait_s <= 0 or not (self.last_size > 1 or self.on_the_way(len(group))):
                    break
                deadline = deadline or time.monotonic() + batch.wait_s
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            other = getattr(job, "batch", None)
            if other is None or other.key != batch.key or size + other.size > batch.limit:
                self.last_size = len(group)
                return group, [job]  # None (the stop signal) included: it runs after this group
            group.append(job)
            size += other.size
        self.last_size = len(group)
        return group, []


def run(loop: asyncio.AbstractEventLoop, backend: Backend, group: list[Any],
        settle: Callable[[asyncio.AbstractEventLoop, Any, Any], None]) -> None:
    """One engine call for the group's items; each job's future gets its own result or exception."""
    try:
        outcomes = group[0].batch.run(backend, [job.batch.item for job in group])
        if len(outcomes) != len(group):
            raise RuntimeError(f"a batch of {len(group)} jobs returned {len(outcomes)} results")
    except BaseException as exc:  # noqa: BLE001 - every job of the call gets the failure
        outcomes = [exc] * len(group)
    for job, outcome in zip(group, outcomes):
        settle(loop, job.future, outcome)
