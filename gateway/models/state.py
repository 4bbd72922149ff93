"""What a declared model is between requests: its state, why it cannot take a request
now, and what it offers before it loads (so routing never loads the wrong model first).

Kept apart from `gateway.models.handle`, which runs the model (threads, queue, admission).
"""

from __future__ import annotations

import asyncio
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from backends.errors import Unavailable
from backends.registry import backend_for
from gateway.manifest import hub
from schemas.manifest import ModelSpec, ServerSettings


class ModelState(str, Enum):
    unloaded = "unloaded"
    loading = "loading"
    ready = "ready"
    unloading = "unloading"
    failed = "failed"


class ModelUnavailable(Unavailable):
    """The model cannot take the request now: answered 503 (or 429, 404 when it was removed, 504
    when it took too long) with Retry-After."""


class Owner(Protocol):
    """What a handle asks of the pool that owns it: its event loop, the server settings, the
    stream buffer size, and room to load (the pool may unload idle models first)."""

    loop: asyncio.AbstractEventLoop
    settings: ServerSettings
    stream_buffer: int

    async def make_room(self, handle: Any) -> None: ...


def capabilities_before_load(spec: ModelSpec) -> frozenset[str]:
    """What /v1/models and routing see before the model loads: the engine's, narrowed by
    the catalog entry's `capabilities` or, for a local path, by the model's own files."""
    engine = backend_for(spec)
    try:
        source = hub.parse_source(spec.source)
    except ValueError:
        return engine.capabilities
    if source.entry is not None and source.entry.capabilities is not None:
        return engine.capabilities & frozenset(source.entry.capabilities)
    path = Path(source.value).expanduser() if source.kind == "local" else None
    return engine.capabilities_of(spec, path if path is not None and path.exists() else None)
