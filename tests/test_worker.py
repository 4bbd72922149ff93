"""Backends that run in a worker process (gateway.models.worker): a call whose caller times out or
leaves kills the worker and a fresh one serves the next request; a crash is a 5xx for its
request only. Driven through the real pool with a probe engine (tests.fakes.ProcessProbe);
tests/test_e2e_image_worker.py does the same with stable-diffusion.cpp behind a real server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from backends.errors import BackendError, LoadError, UpstreamError
from gateway.manifest.load import build
from gateway.models import worker
from gateway.models.pool import ModelPool
from gateway.models.state import ModelUnavailable

pytestmark = pytest.mark.timeout(120)


def spec(**extra):
    model = {"name": "probe", "source": "/dev/null", "backend": "tests.fakes:ProcessProbe", **extra}
    return build({"models": [model]}).models[0]


def test_the_engine_runs_in_its_own_process_and_a_crash_restarts_it():
    backend = worker.load(spec(), Path(os.devnull))
    try:
        assert isinstance(backend, worker.ChildBackend) and backend.capabilities == {"probe"}
        first = backend.pid()
        assert first != os.getpid()
        with pytest.raises(BackendError, match="refuses"):  # an engine's own errors cross as they are
            backend.refuse()
        assert backend.pid() == first
        with pytest.raises(UpstreamError) as info:
            backend.crash()
        assert info.value.status == 500 and "crashed (signal SIGSEGV)" in str(info.value)
        second = backend.pid()  # restarted
        assert second not in (first, os.getpid()) and backend.info()["worker_restarts"] == 1
    finally:
        backend.close()
    assert backend.info()["worker_pid"] is None


def test_a_load_failure_in_the_worker_is_a_load_error():
    with pytest.raises(LoadError, match="probe load failure"):
        worker.load(spec(options={"fail_load": True}), Path(os.devnull))


def test_a_timeout_or_a_caller_that_leaves_kills_the_call_and_the_next_one_runs():
    async def restarted(handle, count: int) -> None:
        for _ in range(600):
            if handle.backend.restarts >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the worker was not restarted")

    async def main():
        pool = ModelPool([spec(timeout_s=5.0)], asyncio.get_running_loop())
        handle = pool.get("probe")
        try:
            await handle.ready()
            first = await handle.call(lambda b: b.pid())

            with pytest.raises(ModelUnavailable) as info:
                await handle.call(lambda b: b.block(120))
            assert info.value.status == 504
            await restarted(handle, 1)
            # Without the kill, this call would queue behind the 120 s one and time out too.
            second = await handle.call(lambda b: b.pid())
            assert second != first

            leaving = asyncio.ensure_future(handle.call(lambda b: b.block(120)))  # a client that leaves
            await asyncio.sleep(0.5)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            await restarted(handle, 2)
            assert await handle.call(lambda b: b.pid()) not in (first, second)
        finally:
            pool.close()

    asyncio.run(main())
