"""Background responses' job bookkeeping, without a model: a job always leaves JOBS and the running
gauge, however its task ends (gateway/api/openai/background.py)."""

from __future__ import annotations

import asyncio
import time

from gateway.api.openai import background
from gateway.api.openai.responses_events import ResponseTurn
from gateway.observability import metrics
from gateway.state.base import Limits
from gateway.state.memory_store import MemoryStore
from schemas.responses import ResponseObject


class SlowStore(MemoryStore):
    """A store whose first write waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__("memory://", Limits())
        self.release = asyncio.Event()

    async def put(self, owner, kind, key, value) -> None:
        await self.release.wait()
        await super().put(owner, kind, key, value)


def running(model: str) -> float:
    return metrics.REGISTRY.get_sample_value("nexa_background_responses_running", {"model": model}) or 0.0


def test_a_job_cancelled_before_it_ran_leaves_no_trace_of_itself():
    """A delete that lands while `create` is still storing the response cancels the job's task before it
    ran past its first wait: nothing of the job (and no +1 on the running gauge) may stay behind."""

    async def scenario() -> None:
        store = SlowStore()
        turn = ResponseTurn(ResponseObject(id="resp_unit_1", created_at=int(time.time()), status="in_progress",
                                           model="unit-model", background=True))

        async def never_opened():
            raise AssertionError("a cancelled job must not open its generation")

        creating = asyncio.create_task(background.start(store, "owner", turn, never_opened, None, []))
        await asyncio.sleep(0.05)
        assert "resp_unit_1" in background.JOBS and running("unit-model") == 1
        background.forget("resp_unit_1")  # the delete, while the record is still being written
        store.release.set()
        job = await creating
        await asyncio.wait([job.task], timeout=5)
        await asyncio.sleep(0)
        assert job.task.cancelled()
        assert "resp_unit_1" not in background.JOBS and job.done
        assert running("unit-model") == 0

    asyncio.run(scenario())


class EndGate(MemoryStore):
    """A store whose write of a finished response waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__("memory://", Limits())
        self.ending, self.release = asyncio.Event(), asyncio.Event()

    async def update(self, owner, kind, key, change):
        current = await self.get(owner, kind, key)
        probe = change({**current, "response": dict(current["response"])}) if current else None
        if probe and probe["response"]["status"] == "completed":
            self.ending.set()
            await self.release.wait()
        return await super().update(owner, kind, key, change)


def test_a_cancel_that_comes_while_a_finished_job_stores_its_end_leaves_it_completed():
    """OpenAI answers a finished response unchanged: a cancel landing during the job's last write (its
    generation already done) must neither turn it `cancelled` nor count or store its end twice."""
    from backends.base import Delta, Usage

    async def scenario() -> None:
        store = EndGate()
        turn = ResponseTurn(ResponseObject(id="resp_unit_2", created_at=int(time.time()), status="in_progress",
                                           model="unit-model-2", background=True))

        async def deltas():
            yield Delta(text="hello")
            yield Delta(finish_reason="stop", usage=Usage(3, 1))

        class Handle:
            name = "unit-model-2"

        async def opener():
            return Handle(), None, deltas()

        async def remember(response) -> None:
            return None

        job = await background.start(store, "owner", turn, opener, remember, [])
        await asyncio.wait_for(store.ending.wait(), 5)  # the generation ended; its end is being written
        cancelling = asyncio.create_task(background.cancel(store, "owner", await store.get(
            "owner", "response", "resp_unit_2")))
        await asyncio.sleep(0.05)
        store.release.set()
        answered = await asyncio.wait_for(cancelling, 5)
        await asyncio.wait([job.task], timeout=5)
        assert answered["status"] == "completed"
        assert (await store.get("owner", "response", "resp_unit_2"))["response"]["status"] == "completed"
        finished = metrics.REGISTRY.get_sample_value("nexa_background_responses_total",
                                                     {"model": "unit-model-2", "outcome": "completed"})
        assert finished == 1 and metrics.REGISTRY.get_sample_value(
            "nexa_background_responses_total", {"model": "unit-model-2", "outcome": "cancelled"}) in (None, 0)

    asyncio.run(scenario())


def test_a_refusal_after_the_stream_began_is_an_error_event_not_a_cut_connection():
    from gateway.http.core import HTTPError

    async def refused_midway():
        yield {"type": "response.created", "sequence_number": 0}
        yield {"type": "response.queued", "sequence_number": 1}
        raise HTTPError(400, "This stream fell too far behind.", code="invalid_request")

    async def collect():
        return [event async for event in background.in_band(refused_midway())]

    events = asyncio.run(collect())
    assert [e["type"] for e in events] == ["response.created", "response.queued", "error"]
    assert events[-1]["sequence_number"] == 2 and events[-1]["code"] == "invalid_request"
    assert "too far behind" in events[-1]["message"]
