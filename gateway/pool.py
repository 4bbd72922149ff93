"""The model pool: every model of the active manifest, and which of them stay resident.

Loading, running and unloading one model is `gateway.handle.ModelHandle`'s job;
the pool adds what needs the whole picture: lookup by name or alias, preloading,
idle expiry (`ttl_s`) and least-recently-used eviction under `max_loaded` and
`memory_budget`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

from gateway import hub
from gateway.handle import ModelHandle, ModelState, ModelUnavailable, _join, _size_of
from schemas.manifest import ModelSpec, ServerSettings

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
            threads = handle._threads
            handle.stop_workers()
            _join(threads, timeout)


def _estimate(spec: ModelSpec) -> int:
    try:
        return _size_of(Path(hub.fetch(spec, offline=True)))
    except (hub.FetchError, OSError):
        return 0
