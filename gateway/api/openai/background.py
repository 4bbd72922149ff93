"""Background responses (`background: true`): the job that runs one in this process, its events, and
the stored record that lets any gateway on the same store answer for it.

`create` answers at once with the response `queued`; the generation then runs in an asyncio task
through the very loop a foreground stream uses (`generate` in responses_events.py), so the
finished response is exactly what a foreground call would have returned. The stored record
(`stored.RESPONSE`) carries, besides the response, `background`: the process that owns the job
(`host:pid:token`), a lease it renews every `LEASE_S / 3` seconds, and, once finished, the
events for a stream to replay (`GET ...?stream=true&starting_after=N`).

Cancelling stops the job's task, which closes the engine's stream exactly as a client that leaves
a foreground stream does: the replica stops decoding at its next token. A cancel that reaches a
gateway that does not own the job marks the record `cancelled`; the owner sees it at its next
lease renewal and stops. A job whose owner died (its lease ran out, or its process on this host
is gone, or it is this host's previous incarnation) is settled `failed` by whoever reads it next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from gateway.api.openai import stored
from gateway.api.openai.responses_events import Event, ResponseTurn, generate
from gateway.http.core import HTTPError
from gateway.observability import metrics
from gateway.observability.tracing import TIMELINE
from gateway.state.base import Store

if TYPE_CHECKING:
    from backends.base import Delta
    from gateway.observability.tracing import RequestTrace

log = logging.getLogger("nexa.responses.background")



def _host_identity() -> str:
    """This host *and* pid namespace: only there may a pid be looked up. Containers sharing a hostname
    (`hostNetwork`, `--network host`) each have their own pids; so may two machines' root namespaces."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(open("/proc/sys/kernel/random/boot_id").read().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "@".join(parts)


HOST = _host_identity()
PROCESS = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # who owns the jobs started here; new on every start
LEASE_S = 30.0  # a job's owner renews its lease every third of this; a lapsed lease means a dead owner
EVENTS_MAX = 10000  # events kept per response (memory while it runs, the store once finished); the oldest go
POLL_S = 0.5  # how often a stream of a job another gateway runs reads its record
TERMINAL = ("completed", "incomplete", "failed", "cancelled")
JOBS: dict[str, "Job"] = {}  # the background responses this process runs now, by response id

Opener = Callable[[], Awaitable[tuple[Any, "Delta | None", AsyncIterator["Delta"]]]]
Remember = Callable[[dict[str, Any]], Awaitable[None]]  # what keeping a response adds besides its record


class Job:
    """One running background response: its turn, its events so far and who is waiting for more."""

    def __init__(self, store: Store, who: str, turn: ResponseTurn, trace: "RequestTrace | None" = None):
        self.store, self.who, self.turn, self.trace = store, who, turn, trace
        self.id, self.model = turn.response.id, turn.response.model
        self.error: str | None = None  # its span's error.type, when the job itself saw why it ended
        self.events: list[Event] = []
        self.first = 0  # the sequence number of events[0] (the oldest are dropped past EVENTS_MAX)
        self.done = False
        self.shutdown = False  # cancelled by a gateway shutdown, not by a client: ends `failed`
        self.ending = False  # its end is being stored: a cancel or a shutdown waits for it instead
        self.task: asyncio.Task | None = None
        self.stored = asyncio.Event()  # its record is in the store: the job may write it
        self._wake = asyncio.Event()

    def publish(self, event: Event) -> None:
        self.events.append(event)
        if len(self.events) > EVENTS_MAX:
            drop = len(self.events) - EVENTS_MAX // 2
            del self.events[:drop]
            self.first += drop
        self._wake.set()
        self._wake = asyncio.Event()

    def finish(self) -> None:
        self.done = True
        self._wake.set()

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """The events after sequence number `after`, then each new one as it is published."""
        check_window(self.first, after)
        at = after + 1
        while True:
            if at < self.first:  # this reader fell EVENTS_MAX / 2 events behind: it cannot catch up
                raise HTTPError(400, "This stream fell too far behind its response; resume it with starting_after.",
                                code="invalid_request")
            while at - self.first < len(self.events):
                yield self.events[at - self.first]
                at += 1
            if self.done:
                return
            await self._wake.wait()


def check_window(first: int, after: int) -> None:
    if after + 1 < first:
        raise HTTPError(400, f"Events before sequence number {first} of this response are no longer kept "
                             f"(at most {EVENTS_MAX} are); resume with starting_after >= {first - 1}.",
                        param="starting_after", code="invalid_value")


def meta(**more: Any) -> dict[str, Any]:
    return {"owner": PROCESS, "lease_until": time.time() + LEASE_S, **more}


# -- running ------------------------------------------------------------------------------


async def start(store: Store, who: str, turn: ResponseTurn, opener: Opener, remember: Remember,
                input_items: list[dict[str, Any]], trace: "RequestTrace | None" = None) -> Job:
    """Store the response `queued` and start its job; the caller answers with the response (or follows it).
    `trace`: the job's own span (RequestTrace.detach), which `_end` ends with its outcome."""
    job = Job(store, who, turn, trace)
    turn.response.status = "queued"
    job.publish(turn.event("response.created", response=turn.dump()))
    job.publish(turn.event("response.queued", response=turn.dump()))
    # The job (and its task, which waits for its record) exists before its record does: a reader never
    # finds a record of this process without its job.
    JOBS[job.id] = job
    metrics.BACKGROUND_RUNNING.labels(job.model).inc()
    job.task = asyncio.create_task(_run(job, opener, remember), name=f"background {job.id}")
    # However the task ends, even cancelled before it ran (a delete during create, a shutdown), the job goes.
    job.task.add_done_callback(lambda _task: _release(job))
    try:
        await store.put(who, stored.RESPONSE, job.id,
                        {"response": turn.dump(), "input_items": input_items, "background": meta()})
    except BaseException as exc:
        job.task.cancel()
        _release(job)
        if trace is not None:  # no response was kept: no outcome to count, but its span ends
            trace.end(error=type(exc).__name__)
        raise
    job.stored.set()
    return job


async def _run(job: Job, opener: Opener, remember: Remember) -> None:
    turn = job.turn
    # The task was created inside the create request, with its timeline: the model notes this job's phases
    # on the job's own (or, untraced, nowhere).
    TIMELINE.set(job.trace.timeline if job.trace is not None else None)
    await job.stored.wait()
    beat = asyncio.create_task(_heartbeat(job))

    async def keep(response: dict[str, Any]) -> None:
        await _write(job, response, meta())
        await remember(response)

    try:
        handle, first, deltas = await opener()
        turn.response.model = handle.name
        turn.response.status = "in_progress"
        job.publish(turn.event("response.in_progress", response=turn.dump()))
        try:
            await _write(job, turn.dump(), meta())
        except Exception as exc:  # noqa: BLE001 - a store blip (a failover) must not fail the generation
            log.warning("background response %s: could not store in_progress: %s", job.id, exc,
                        extra={"event": "background_store_failed", "response_id": job.id})
        async for event in generate(turn, first, deltas, keep):
            job.publish(event)
    except asyncio.CancelledError:
        if turn.finished:
            pass  # the answer was complete when the cancel came: it stands, as OpenAI answers a finished one
        elif job.shutdown:
            job.error = "shutdown"
            job.publish(turn.fail(RuntimeError("the gateway shut down before this background response finished")))
        else:
            turn.response.status = "cancelled"
    except Exception as exc:  # noqa: BLE001 - the job's failure is its response's
        job.publish(turn.fail(exc))
    finally:
        beat.cancel()
    job.ending = True
    await _end(job)


async def _end(job: Job) -> None:
    """Store the finished response with its events, then let its followers and `cancel` go."""
    _observe_end(job)
    try:
        await asyncio.shield(_write(job, job.turn.dump(), meta(lease_until=0, events=job.events,
                                                               first_event=job.first)))
    except Exception as exc:  # noqa: BLE001 - nothing to answer: reading it later settles it as failed
        log.error("background response %s: could not store its end: %s", job.id, exc,
                  extra={"event": "background_store_failed", "response_id": job.id})
    finally:
        _release(job)


def _release(job: Job) -> None:
    """The job is over: its followers wake, and it leaves JOBS and the running gauge (once)."""
    job.finish()
    if JOBS.pop(job.id, None) is not None:
        metrics.BACKGROUND_RUNNING.labels(job.model).dec()


def _observe_end(job: Job) -> None:
    """Count the job's outcome and end its span, when its generation ended (before storing it)."""
    status = job.turn.response.status
    metrics.BACKGROUND_FINISHED.labels(job.model, status).inc()
    if job.trace is None:
        return
    failure = job.turn.failure
    error = job.error or ("cancelled" if status == "cancelled" else None)
    if error is None and failure is not None:  # HTTP semantic conventions: a status code is its error type
        error = str(failure.status) if isinstance(failure, HTTPError) else type(failure).__name__
    job.trace.end_job(status, error)


async def _write(job: Job, response: dict[str, Any], background: dict[str, Any]) -> None:
    """Replace the stored response and its `background` record, unless someone cancelled it meanwhile
    (a cancel on another gateway): then it stays `cancelled`."""
    def change(record: dict[str, Any]) -> dict[str, Any]:
        if record["response"]["status"] == "cancelled" and response["status"] not in ("cancelled",):
            response.update(status="cancelled", error=None)
        return {**record, "response": response, "background": background}

    await job.store.update(job.who, stored.RESPONSE, job.id, change)


async def _heartbeat(job: Job) -> None:
    """Renew the lease; stop the job when its record says `cancelled` (a cancel another gateway took)
    or is gone (deleted)."""
    while True:
        await asyncio.sleep(LEASE_S / 3)
        try:
            def renew(record: dict[str, Any]) -> dict[str, Any]:
                return {**record, "background": {**record.get("background", {}), "lease_until": time.time() + LEASE_S}}

            record = await job.store.update(job.who, stored.RESPONSE, job.id, renew)
        except Exception as exc:  # noqa: BLE001 - the store may be back by the next beat
            log.warning("background response %s: lease not renewed: %s", job.id, exc,
                        extra={"event": "background_lease", "response_id": job.id})
            continue
        if record is None or record["response"]["status"] == "cancelled":
            job.task.cancel()
            return


# -- reading ------------------------------------------------------------------------------


def _dead(response_id: str, background: dict[str, Any]) -> bool:
    owner = background.get("owner", "")
    if owner == PROCESS:
        return response_id not in JOBS  # its job ended without storing its end (the store was down)
    if time.time() > background.get("lease_until", 0):
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True  # an earlier gateway in this pid namespace, whose pid this one now has
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


async def settle(store: Store, who: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as it stands, after settling a job whose owner died as `failed`."""
    background = record.get("background")
    response_id = record["response"]["id"]
    if not background or record["response"]["status"] in TERMINAL or not _dead(response_id, background):
        return record
    owner = background.get("owner")
    message = (f"The gateway process that ran this background response ({owner}) stopped before it finished "
               "(it was killed, or crashed); send the request again.")

    def fail(current: dict[str, Any]) -> dict[str, Any]:
        if current["response"]["status"] not in TERMINAL and _dead(response_id, current.get("background", {})):
            current["response"].update(status="failed", error={"code": "server_error", "message": message})
            current["background"] = {**current.get("background", {}), "lease_until": 0}
        return current

    log.warning("background response %s: its owner %s is gone; settled as failed", response_id, owner,
                extra={"event": "background_orphaned", "response_id": response_id, "owner": owner})
    return await store.update(who, stored.RESPONSE, response_id, fail) or record


async def cancel(store: Store, who: str, record: dict[str, Any]) -> dict[str, Any]:
    """Cancel a queued or running background response; a finished one is answered as it is."""
    response_id = record["response"]["id"]
    job = JOBS.get(response_id)
    if job is not None:
        if not job.ending:  # one whose end is being stored has ended: it is answered as it ends
            job.task.cancel()
        try:
            await asyncio.shield(job.task)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # this request was cancelled (its client left), not the job
                raise
        if job.task.cancelled():  # cancelled before its first step: `_run` never ran to store its end
            job.turn.response.status = "cancelled"
            await _end(job)
        return (await stored.load_response(store, who, response_id))["response"]
    record = await settle(store, who, record)
    if record["response"]["status"] in TERMINAL:
        return record["response"]

    def mark(current: dict[str, Any]) -> dict[str, Any]:
        if current["response"]["status"] not in TERMINAL:
            current["response"]["status"] = "cancelled"
        return current

    changed = await store.update(who, stored.RESPONSE, response_id, mark)
    if changed is None:
        raise stored.response_not_found(response_id)
    return changed["response"]


async def events(store: Store, who: str, record: dict[str, Any], after: int) -> AsyncIterator[Event]:
    """A background response's events after `after`: live from this process's job, replayed from the
    store once finished, and, for a job another gateway runs, replayed when it has finished."""
    response_id = record["response"]["id"]
    job = JOBS.get(response_id)
    if job is None:
        while record["response"]["status"] not in TERMINAL:
            await asyncio.sleep(POLL_S)
            record = await settle(store, who, await stored.load_response(store, who, response_id))
            job = JOBS.get(response_id)
            if job is not None:
                break
    if job is not None:
        async for event in job.follow(after):
            yield event
        return
    kept, first = record["background"].get("events"), record["background"].get("first_event", 0)
    if kept is None:  # its gateway died while this stream waited: its end is the one event there is
        yield {"type": f"response.{record['response']['status']}", "sequence_number": after + 1,
               "response": record["response"]}
        return
    check_window(first, after)
    for event in kept[max(0, after + 1 - first):]:
        yield event


async def in_band(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """A background stream's events; a refusal found once its headers went out (a reader that fell too far
    behind, a response deleted while a stream waited for it) ends it with the Responses API's `error` event
    instead of a cut connection."""
    last = -1
    try:
        async for event in events:
            last = event.get("sequence_number", last)
            yield event
    except HTTPError as exc:
        yield {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
               "sequence_number": last + 1}


def forget(response_id: str) -> None:
    """Its record was deleted: stop its job if this process runs it (its end then writes nothing)."""
    job = JOBS.get(response_id)
    if job is not None and job.task is not None:
        job.task.cancel()


def replayable(record: dict[str, Any], after: int) -> None:
    """Refuse, before the stream's headers, what `events` could only refuse in the middle of it."""
    background = record.get("background")
    if not background:
        raise HTTPError(400, "Only responses created with background=true can be streamed again.",
                        param="stream", code="invalid_request")
    if record["response"]["id"] in JOBS:
        check_window(JOBS[record["response"]["id"]].first, after)
    elif record["response"]["status"] in TERMINAL:
        if background.get("events") is None:
            raise HTTPError(400, f"The events of response {record['response']['id']!r} were not kept (its gateway "
                                 "stopped before it finished); retrieve it without stream.", code="invalid_request")
        check_window(background.get("first_event", 0), after)


async def drain(grace_s: float) -> None:
    """At shutdown: let running jobs finish for up to half the grace, then stop the rest, which end
    `failed` ("the gateway shut down") in the store, so no record is left in progress."""
    jobs = list(JOBS.values())
    if not jobs:
        return
    log.info("waiting for %d background response(s)", len(jobs), extra={"event": "background_drain"})
    await asyncio.wait([job.task for job in jobs], timeout=grace_s / 2)
    left = [job for job in jobs if not job.task.done()]
    for job in left:
        if not job.ending:  # one storing its end finishes that (the wait below)
            job.shutdown = True
            job.task.cancel()
    if left:
        log.warning("shutdown: %d background response(s) stopped unfinished", len(left),
                    extra={"event": "background_stopped"})
        await asyncio.wait([job.task for job in left], timeout=max(1.0, grace_s / 2))
