"""`server.state` URLs -> a store: one backend per scheme, `${VAR}`s read, credentials never shown."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from gateway.observability.redact import redact_url
from gateway.state.base import Limits, Store
from gateway.state.memory_store import MemoryStore
from gateway.state.redis_store import RedisStore
from gateway.state.sqlite_store import SqliteStore

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def default_url() -> str:
    """`sqlite:///<nexa cache>/state.db`, beside the hub folder (inside NEXA_CACHE_ROOT when set)."""
    root = os.environ.get("NEXA_CACHE_ROOT")
    folder = Path(root).expanduser() if root else Path.home() / ".cache" / "nexa"
    return f"sqlite:///{folder / 'state.db'}"


def display_url(url: str) -> str:
    """The URL as it may be shown: no password, no user name (the one redaction of gateway.observability.redact)."""
    return redact_url(url)


def _expand(url: str) -> str:
    def value(match: re.Match[str]) -> str:
        if match.group(1) not in os.environ:
            raise ValueError(f"environment variable {match.group(1)} is not set")
        return os.environ[match.group(1)]

    return _VAR.sub(value, url)


def _sqlite(url: str, shown: str, limits: Limits, clock: Callable[[], float] | None) -> Store:
    parts = urlsplit(url)
    if parts.netloc or not parts.path or parts.path == "/":
        raise ValueError("a sqlite URL names a file: sqlite:///absolute/path/state.db (three slashes)")
    return SqliteStore(shown, limits, **({"clock": clock} if clock else {}), path=Path(parts.path).expanduser())


def _redis(url: str, shown: str, limits: Limits, clock: Callable[[], float] | None) -> Store:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("a redis URL names a host: redis://host:6379/0 (rediss:// for TLS)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("the port of a redis URL is a number") from None
    return RedisStore(shown, limits, connect_url=url)


def _memory(url: str, shown: str, limits: Limits, clock: Callable[[], float] | None) -> Store:
    return MemoryStore(shown, limits, **({"clock": clock} if clock else {}))


BACKENDS: dict[str, Callable[[str, str, Limits, Callable[[], float] | None], Store]] = {
    "memory": _memory, "sqlite": _sqlite, "redis": _redis, "rediss": _redis,
}


def check_url(url: str) -> str | None:
    """Why `url` cannot name a store (for the manifest's validation), or None. Variables are not
    expanded here: a missing one is reported when the store opens."""
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        return f"unknown scheme {scheme!r}: use sqlite:///path, redis://host:port/db, rediss://... or memory://"
    try:
        BACKENDS[scheme](_VAR.sub("x", url), "", Limits(), None)
    except ValueError as exc:
        return str(exc)
    return None


def open_store(url: str | None, limits: Limits | None = None, clock: Callable[[], float] | None = None) -> Store:
    """The store `url` names (None: the default SQLite file). Nothing is connected yet: `start()`
    does that, and a store that cannot be reached answers 503s until it can."""
    url = url or default_url()
    shown = display_url(url)
    problem = check_url(url)
    if problem:
        raise ValueError(f"{shown}: {problem}")
    try:
        expanded = _expand(url)
    except ValueError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    return BACKENDS[urlsplit(url).scheme](expanded, shown, limits or Limits(), clock)
