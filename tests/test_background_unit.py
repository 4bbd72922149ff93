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
