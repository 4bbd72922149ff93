"""The state store's contract: JSON objects owned by an API key, bounded in age, count and bytes.

The Responses and Conversations APIs keep their objects here, whatever the backend
(`memory://`, `sqlite:///path`, `redis://host`). Every object is addressed by
(owner, kind, key): the owner is a digest of the caller's API key, so a request can
only name its own objects. Values are stored encoded (JSON bytes), so every backend
counts the same bytes, and a value read back is a copy nobody else holds.

Read-modify-write goes through `update`: it reads an object with its version (a digest of its
stored bytes) and writes only if nobody changed it meanwhile, trying again otherwise, so two
requests (or two gateways sharing a store) appending to one conversation both keep their items.

A backend that cannot answer raises `StateUnavailable`, a 503 with a clear message:
stateless requests never touch the store, so they are served while it is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from backends.errors import NexaError


class StateUnavailable(NexaError):
    """The store cannot be reached or read (down, timed out, corrupt, refused schema): a 503."""

    def __init__(self, message: str):
        super().__init__(message, status=503, code="state_unavailable", headers={"retry-after": "5"})


class ObjectTooLarge(NexaError):
    """One object is larger than the whole store may hold (`server.state_max_bytes`)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"This object would take {size} bytes in the state store, more than its bound of "
                              f"{limit} bytes (server.state_max_bytes); send it with `store: false`, or shorter.",
                         status=400, code="state_object_too_large")


@dataclass
class Limits:
    """The bounds every backend enforces. The oldest objects go first: beyond `max_count[kind]`
    objects of one kind, beyond `max_bytes` in all, and every object `ttl_s` after it was put."""

    ttl_s: float = 3600.0
    max_bytes: int = 256 * 1024 * 1024
    max_count: dict[str, int] = field(default_factory=dict)  # kinds not named are bounded by bytes and age only


OFF_LOOP_BYTES = 64 * 1024  # larger objects are encoded and decoded on a worker thread
UPDATE_ATTEMPTS = 20  # `update` gives up (a 503) after this many writers got in first in a row


def owner_of(api_key: str | None) -> str:
    """Who an object belongs to: a digest of the API key (never the key itself); "" without keys."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes | str) -> dict[str, Any]:
    return json.loads(data)


def version_of(data: bytes) -> str:
    """An object's version: the SHA-1 of its stored bytes (what Redis's `redis.sha1hex` gives, so a
    Lua script can compare it where the object is)."""
    return hashlib.sha1(data).hexdigest()


class Store(ABC):
    """get / put / delete / list of JSON objects per (owner, kind, key), all async: a backend
    that does I/O does it off the event loop (a thread, or an async client) with bounded timeouts."""

    scheme = ""

    def __init__(self, url: str, limits: Limits | None = None, clock: Callable[[], float] = time.time):
        self.url = url  # as shown: credentials already redacted by open_store
        self.limits = limits or Limits()
        self.clock = clock

    async def start(self) -> None:
        """Connect or open; a failure is logged by the caller and every call retries (never fatal)."""

    async def close(self) -> None:
        """Release connections and files."""

    async def ping(self) -> None:
        """Raise StateUnavailable unless the store answers now (before work that will need it)."""

    @abstractmethod
    async def get(self, owner: str, kind: str, key: str) -> dict[str, Any] | None:
        """The object, or None when it was never stored, was deleted or has expired."""

    @abstractmethod
    async def put(self, owner: str, kind: str, key: str, value: dict[str, Any]) -> None:
        """Store (or replace) an object; it expires `limits.ttl_s` from now and counts as the newest."""

    @abstractmethod
    async def read(self, owner: str, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        """The object and its version (`version_of` its stored bytes), for `replace`; None as `get`."""

    @abstractmethod
    async def replace(self, owner: str, kind: str, key: str, value: dict[str, Any], version: str) -> bool:
        """`put` only if the live object is still the one `read` saw at `version`, in one step no
        other writer can come between; False (nothing written) when it changed, expired or went."""

    async def update(self, owner: str, kind: str, key: str,
                     change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any] | None:
        """Read, `change`, write back unless another writer got in first, then again from its
        version; the value written, or None when there is no such object."""
        for attempt in range(UPDATE_ATTEMPTS):
            found = await self.read(owner, kind, key)
            if found is None:
                return None
            value, version = found
            value = change(value)
            if await self.replace(owner, kind, key, value, version):
                return value
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # let the other writer finish
        raise StateUnavailable(f"{kind} {key!r} changed {UPDATE_ATTEMPTS} times while this request tried to "
                               "update it; try again.")

    @abstractmethod
    async def delete(self, owner: str, kind: str, key: str) -> bool:
        """Whether an object was there to delete."""

    @abstractmethod
    async def list(self, owner: str, kind: str) -> list[str]:
        """The keys of an owner's live objects of one kind, oldest first."""

    @abstractmethod
    async def stats(self) -> dict[str, int]:
        """{"objects": n, "bytes": b} over every owner: for /admin and the tests of the bounds."""

    def sized(self, value: dict[str, Any]) -> bytes:
        data = encode(value)
        if len(data) > self.limits.max_bytes:
            raise ObjectTooLarge(len(data), self.limits.max_bytes)
        return data

    async def encoded(self, value: dict[str, Any]) -> bytes:
        """`sized(value)` on a worker thread: a stored response may hold a 32 MiB input, whose JSON
        takes tens of milliseconds to write, which the event loop must not wait for."""
        return await asyncio.to_thread(self.sized, value)


async def decoded(data: bytes | str) -> dict[str, Any]:
    """`decode` off the event loop when the object is large (small ones are not worth a thread)."""
    return decode(data) if len(data) < OFF_LOOP_BYTES else await asyncio.to_thread(decode, data)


async def versioned(data: bytes) -> tuple[dict[str, Any], str]:
    """(`decode`, `version_of`) of stored bytes, off the event loop when they are large."""
    if len(data) < OFF_LOOP_BYTES:
        return decode(data), version_of(data)
    return await asyncio.to_thread(lambda: (decode(data), version_of(data)))
