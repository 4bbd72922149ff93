"""What a declared model is between requests: its state, why it cannot take a request
now, and what it offers before it loads (so routing never loads the wrong model first).

Kept apart from `gateway.handle`, which runs the model (threads, queue, admission).
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path

from backends.base import backend_for
from gateway import hub
from schemas.manifest import ModelSpec


class ModelState(str, Enum):
    unloaded = "unloaded"
    loading = "loading"
    ready = "ready"
    unloading = "unloading"
    failed = "failed"


class ModelUnavailable(Exception):
    """The model cannot take the request now: answered 503 (or 429) with Retry-After."""

    def __init__(self, message: str, *, status: int = 503, retry_after: float = 5, code: str = "model_unavailable"):
        super().__init__(message)
        self.status = status
        self.retry_after = max(1, math.ceil(retry_after))
        self.code = code


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
