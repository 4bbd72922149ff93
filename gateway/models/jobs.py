"""A unit of work for a model's replica thread, and how its outcome crosses back to the event loop.

`call` jobs settle an asyncio future; `stream` jobs feed a bounded `Channel`, so a
client that stops reading stops the producer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from backends.base import Backend
from gateway.models.channel import Channel


@dataclass
class Job:
    work: Callable[..., Any]
    deadline: float
    future: asyncio.Future | None = None
    channel: Channel | None = None
    enqueued: float = field(default_factory=time.monotonic)
    batch: Any = None  # a gateway.models.batcher.Batch: may share one engine call with queued jobs of its key


_running = threading.local()  # the replica thread's current job: is anybody still waiting for it?


def abandoned() -> bool:
    """True once the current job's caller stopped waiting (timeout_s, or a client that left).

    Work that cannot stop between steps (an image engine in a worker process) polls this."""
    check = getattr(_running, "abandoned", None)
    return bool(check and check())


def settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, work: Callable, backend: Backend) -> None:
    _running.abandoned = future.cancelled
    try:
        result = work(backend)
    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
        loop.call_soon_threadsafe(set_exception, future, exc)
    else:
        loop.call_soon_threadsafe(set_result, future, result)
    finally:
        _running.abandoned = None


def deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future, outcome: Any) -> None:
    """Hand a result, or an exception, computed on a model thread to the awaiting request."""
    if isinstance(outcome, BaseException):
        loop.call_soon_threadsafe(set_exception, future, outcome)
    else:
        loop.call_soon_threadsafe(set_result, future, outcome)


def pump(channel: Channel, work: Callable, backend: Backend) -> None:
    if channel.closed():
        return
    iterator = None
    _running.abandoned = channel.closed
    try:
        iterator = work(backend, channel.closed)
        for item in iterator:
            if not channel.put("item", item):
                break
        else:
            channel.put("end")
    except BaseException as exc:  # noqa: BLE001
        channel.put("error", exc)
    finally:
        _running.abandoned = None
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def fail(loop: asyncio.AbstractEventLoop, job: Job, exc: Exception) -> None:
    if job.future is not None:
        loop.call_soon_threadsafe(set_exception, job.future, exc)
    elif job.channel is not None:
        job.channel.put("error", exc)


def set_result(future: asyncio.Future | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
