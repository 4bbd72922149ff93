"""gateway/models/batcher.py: which queued jobs a replica thread merges into one engine call.

The jobs here are plain records (the gatherer only reads `.batch`); the merged
engine calls themselves are tested with the real embedding engines in
tests/test_embeddings.py and, through the HTTP API under concurrency, in
tests/test_e2e_embeddings.py.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.models.batcher import Batch, Gatherer, run

pytestmark = pytest.mark.timeout(60)


@dataclass
class FakeJob:
    name: str
    batch: Batch | None = None
    future: Any = None


def job(name: str, key: str = "embed", size: int = 1, limit: int = 64, wait_s: float = 0.0) -> FakeJob:
    return FakeJob(name, Batch(key=key, size=size, item=name, run=lambda backend, items: items, limit=limit,
                               wait_s=wait_s))


def queued(*jobs: Any) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    for j in jobs:
        q.put(j)
    return q


def names(group: list[FakeJob]) -> list[str]:
    return [j.name for j in group]


def test_takes_the_queued_companions_in_order():
    q = queued(job("b"), job("c"))
    group, taken = Gatherer(q, lambda n: False).gather(job("a"))
    assert names(group) == ["a", "b", "c"] and taken == [] and q.empty()


def test_stops_at_the_first_job_that_cannot_join_and_hands_it_back():
    plain = FakeJob("plain")
    q = queued(job("b"), plain, job("c"))
    group, taken = Gatherer(q, lambda n: False).gather(job("a"))
    assert names(group) == ["a", "b"] and taken == [plain]
    assert q.get_nowait().name == "c", "the job behind the foreign one stays queued: FIFO holds"
    other_key = job("x", key="other-model")
    group, taken = Gatherer(queued(other_key), lambda n: False).gather(job("a"))
    assert names(group) == ["a"] and taken == [other_key]
    group, taken = Gatherer(queued(None), lambda n: False).gather(job("a"))
    assert names(group) == ["a"] and taken == [None], "the stop signal runs after the group"


def test_limit_counts_inputs():
    q = queued(job("b", size=30, limit=64), job("c", size=30, limit=64), job("d", size=1))
    group, taken = Gatherer(q, lambda n: False).gather(job("a", size=10, limit=64))
    assert names(group) == ["a", "b"] and names(taken) == ["c"]
    big, q = job("big", size=500, limit=64), queued(job("b"))
    group, taken = Gatherer(q, lambda n: False).gather(big)
    assert names(group) == ["big"] and taken == [] and q.qsize() == 1, "a job over the limit runs, alone"
    group, _ = Gatherer(queued(job("b", limit=1)), lambda n: False).gather(job("a", limit=1))
    assert names(group) == ["a"], "limit 1: no merging"


def test_a_lone_client_never_waits():
    gatherer = Gatherer(queue.Queue(), lambda n: False)
    started = time.monotonic()
    group, _ = gatherer.gather(job("a", wait_s=1.0))
    assert names(group) == ["a"] and time.monotonic() - started < 0.5


def test_waits_for_requests_on_their_way_but_no_longer_than_wait_s():
    q: queue.Queue = queue.Queue()
    threading.Timer(0.05, q.put, args=(job("late"),)).start()
    group, _ = Gatherer(q, lambda n: n < 2).gather(job("a", wait_s=2.0))
    assert names(group) == ["a", "late"]
    started = time.monotonic()
    group, _ = Gatherer(queue.Queue(), lambda n: True).gather(job("a", wait_s=0.1))
    assert names(group) == ["a"] and 0.09 <= time.monotonic() - started < 1.0


def test_after_a_merged_call_it_waits_a_moment_for_the_next_wave():
    q = queued(job("b"))
    gatherer = Gatherer(q, lambda n: False)
    assert names(gatherer.gather(job("a", wait_s=0.5))[0]) == ["a", "b"]
    threading.Timer(0.05, q.put, args=(job("d"),)).start()
    assert names(gatherer.gather(job("c", wait_s=2.0))[0]) == ["c", "d"]


def test_run_settles_each_job_with_its_own_outcome():
    loop = asyncio.new_event_loop()
    try:
        error = ValueError("bad one")

        def engine(backend, items):
            return [error if item == "b" else item.upper() for item in items]

        group = [FakeJob(n, Batch("k", 1, n, engine), loop.create_future()) for n in "abc"]
        run(loop, None, group, lambda lp, fut, outcome: fut.set_exception(outcome)
            if isinstance(outcome, BaseException) else fut.set_result(outcome))
        assert group[0].future.result() == "A" and group[2].future.result() == "C"
        assert group[1].future.exception() is error

        def crash(backend, items):
            raise RuntimeError("engine died")

        group = [FakeJob(n, Batch("k", 1, n, crash), loop.create_future()) for n in "ab"]
        run(loop, None, group, lambda lp, fut, outcome: fut.set_exception(outcome))
        assert all(isinstance(j.future.exception(), RuntimeError) for j in group)
    finally:
        loop.close()


def test_manifest_settings_have_bounds_and_apply_without_a_reload():
    from pydantic import ValidationError

    from gateway.manifest.plan import diff
    from schemas.manifest import Manifest, ModelSpec

    spec = ModelSpec(name="e", source="all-minilm-l6-v2", type="TEXT_EMBEDDING", format="onnx")
    assert (spec.embed_batch_max, spec.embed_batch_wait_ms) == (64, 2.0)
    for bad in ({"embed_batch_max": 0}, {"embed_batch_wait_ms": -1}):
        with pytest.raises(ValidationError):
            ModelSpec(name="e", source="x", **bad)
    old = Manifest(models=[spec])
    new = Manifest(models=[spec.model_copy(update={"embed_batch_max": 8, "embed_batch_wait_ms": 0})])
    plan = diff(old, new)
    assert plan.update == ["e"] and plan.replace == [], "read per request: no new weights needed"
