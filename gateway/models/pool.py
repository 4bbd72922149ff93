"""The model pool: every model of the active manifest, and which of them stay resident.

Loading, running and unloading one model is `gateway.models.handle.ModelHandle`'s job;
the pool adds what needs the whole picture: lookup by name or alias, preloading,
idle expiry (`ttl_s`), least-recently-used eviction under `max_loaded` and
`memory_budget`, and applying a reload's plan. It is the only code that changes
which handles exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Iterator

from gateway.manifest import hub
from gateway.manifest.plan import Plan
from gateway.models.handle import ModelHandle
from gateway.models.replicas import size_on_disk
from gateway.models.state import ModelState, ModelUnavailable
from schemas.manifest import ModelSpec, ServerSettings

log = logging.getLogger("nexa.gateway.models.pool")

__all__ = ["ModelHandle", "ModelPool", "ModelState", "ModelUnavailable"]


class ModelPool:
    """Every model of the active manifest, addressable by name or alias, with residency limits."""

    def __init__(self, specs: list[ModelSpec], loop: asyncio.AbstractEventLoop, settings: ServerSettings | None = None):
        self.loop = loop
        self.settings = settings or ServerSettings.model_construct()
        self.stream_buffer = getattr(self.settings, "stream_buffer", 4)
        self.handles: dict[str, ModelHandle] = {}
        self._by_name: dict[str, ModelHandle] = {}
        self._room = asyncio.Lock()
        self._janitor: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        for spec in specs:
            self.handles[spec.name] = ModelHandle(spec, self)
        self.required = {spec.name for spec in specs if spec.preload}
        self.reindex()

    def reindex(self) -> None:
        self._by_name = {name: h for h in self.handles.values() for name in h.spec.names}

    def get(self, name: str) -> ModelHandle | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(list(self.handles.values()))

    def loaded(self) -> list[ModelHandle]:
        return [h for h in self if h.state in (ModelState.ready, ModelState.loading)]

    def preload(self) -> None:
        for handle in self:
            if handle.spec.preload:
                handle.start_loading()
        if self._janitor is None:
            self._janitor = self.loop.create_task(self._expire_idle())

    def is_ready(self) -> bool:
        """Every preload model of the starting manifest is loaded. Models a reload adds do not
        count: otherwise one bad reload would take every replica of a deployment out of service."""
        return all(h.state == ModelState.ready for h in self if h.name in self.required)

    async def make_room(self, incoming: ModelHandle) -> None:
        """Evict least-recently-used idle, unpinned models until `incoming` fits. Busy models are never evicted."""
        max_loaded = getattr(self.settings, "max_loaded", None)
        budget = getattr(self.settings, "memory_budget", None)
        if not max_loaded and not budget:
            return
        async with self._room:
            need = incoming.size_bytes or await asyncio.to_thread(_estimate, incoming.spec)
            while True:
                others = [h for h in self.loaded() if h is not incoming]
                used = sum(h.size_bytes for h in others)
                over_count = max_loaded is not None and len(others) + 1 > max_loaded
                over_bytes = budget is not None and used + need > budget
                if not over_count and not over_bytes:
                    return
                victims = sorted((h for h in others if not h.spec.pinned and h.idle() and h.state == ModelState.ready),
                                 key=lambda h: h.last_used)
                if not victims:
                    raise ModelUnavailable(f"no room to load model {incoming.name!r}: every loaded model is busy or "
                                           "pinned (server.max_loaded / server.memory_budget)", retry_after=5,
                                           code="no_capacity")
                await victims[0].unload("evicted")

    async def _expire_idle(self) -> None:
        """Unload models idle for longer than their `ttl_s`."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for handle in self:
                ttl = handle.spec.ttl_s
                if ttl and handle.state == ModelState.ready and handle.idle() and now - handle.last_used > ttl:
                    await handle.unload("ttl")

    async def aclose(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        await asyncio.gather(*(h.unload("shutdown") for h in self), return_exceptions=True)

    def close(self, timeout: float | None = None) -> None:
        """Synchronous shutdown for servers whose loop has already stopped."""
        for handle in self:
            handle.stop_threads(timeout)

    # -- reload ----------------------------------------------------------------

    async def apply(self, plan: Plan, specs: list[ModelSpec]) -> list[str]:
        """Apply a manifest diff: `specs` are the new manifest's models. Returns the models whose
        replacement failed (their old version keeps serving)."""
        by_name = {spec.name: spec for spec in specs}
        for name in plan.update:
            self.handles[name].spec = by_name[name]
        for name in plan.add:
            handle = ModelHandle(by_name[name], self)
            self.handles[name] = handle
            if handle.spec.preload and await self._room_for(handle):
                handle.start_loading()
        for name in plan.remove:
            old = self.handles.pop(name, None)
            if old is not None:
                old.retire()
                self._in_background(old.unload("removed"))
        replaced = await asyncio.gather(*(self._replace(self.handles[n], by_name[n]) for n in plan.replace))
        self.handles = {spec.name: self.handles[spec.name] for spec in specs if spec.name in self.handles}
        self.reindex()
        return [name for name, ok in zip(plan.replace, replaced) if not ok]

    async def _replace(self, old: ModelHandle, spec: ModelSpec) -> bool:
        """Load the new version beside the old one, then switch; requests never see a gap."""
        new = ModelHandle(spec, self)
        if (old.state in (ModelState.ready, ModelState.loading) or spec.preload) and await self._room_for(new):
            await asyncio.shield(new.start_loading())
            if new.state != ModelState.ready:
                log.error("replacement of model %s failed, the old version keeps serving: %s", old.name, new.error,
                          extra={"event": "replace_failed", "model": old.name})
                return False
        self.handles[old.name] = new
        self.reindex()
        old.retire(successor=new)
        self._in_background(old.unload("replaced"))
        return True

    async def _room_for(self, handle: ModelHandle) -> bool:
        """Residency limits hold for reloads too; without room, the model stays lazy (loads on first use)."""
        try:
            await self.make_room(handle)
        except ModelUnavailable as exc:
            log.warning("not preloading %s after the reload: %s", handle.name, exc,
                        extra={"event": "reload_no_room", "model": handle.name})
            return False
        return True

    def _in_background(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _estimate(spec: ModelSpec) -> int:
    try:
        return size_on_disk(Path(hub.fetch(spec, offline=True))) + int(spec.prompt_cache or 0)
    except (hub.FetchError, OSError):
        return 0
