"""`server.state` URLs -> a store: one backend per scheme, `${VAR}`s read, credentials never shown."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

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
    _redis_options(url)
    return RedisStore(shown, limits, connect_url=url)


def _redis_options(url: str) -> None:
    """Refuse a query option redis-py would not take here, in `nexa check` and at start: redis-py
    passes any name on to its connection class, so a misspelt one (`ssl_ca_cert`) would otherwise
    be a TypeError at the first connection. Its own parser checks the typed values (`db=x`)."""
    import inspect

    from redis.asyncio import connection  # imported only for redis URLs

    try:
        connection.parse_url(url)
    except ValueError as exc:
        raise ValueError(f"a redis URL's options: {exc}") from None
    tls = urlsplit(url).scheme == "rediss"
    accepted = {"max_connections"} | {name for cls in (connection.SSLConnection if tls else connection.Connection).__mro__
                                      if "__init__" in vars(cls) for name in inspect.signature(cls.__init__).parameters}
    unknown = sorted(set(parse_qs(urlsplit(url).query)) - accepted)
    if unknown:
        hint = " (the ssl_ options need rediss://)" if not tls and any(n.startswith("ssl_") for n in unknown) else ""
        raise ValueError(f"redis-py takes no URL option {', '.join(unknown)}{hint}; see the README's server.state "
                         "for the ones it honours")


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
