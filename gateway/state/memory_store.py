"""`memory://`: the state store inside this process (tests, throw-away runs).

A restart forgets everything and another process sees nothing; the bounds are
the same as every backend's. Objects are kept encoded, so the bytes counted are
the bytes held, and one ordered dict gives the oldest object first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gateway.state.base import Store, decoded, version_of, versioned

Address = tuple[str, str, str]  # (owner, kind, key)


@dataclass
class _Entry:
    data: bytes
    expires: float


class MemoryStore(Store):
    scheme = "memory"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._entries: OrderedDict[Address, _Entry] = OrderedDict()
        self._bytes = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # the loop is one thread, but benches and tests call from others

    async def get(self, owner: str, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._live((owner, kind, key))
        return await decoded(entry.data) if entry is not None else None

    async def put(self, owner: str, kind: str, key: str, value: dict[str, Any]) -> None:
        data = await self.encoded(value)
        with self._lock:
            self._store((owner, kind, key), data)

    async def read(self, owner: str, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        with self._lock:
            entry = self._live((owner, kind, key))
        return await versioned(entry.data) if entry is not None else None

    async def replace(self, owner: str, kind: str, key: str, value: dict[str, Any], version: str) -> bool:
        data = await self.encoded(value)
        with self._lock:
            entry = self._live((owner, kind, key))
            if entry is None or version_of(entry.data) != version:
                return False
            self._store((owner, kind, key), data)
            return True

    def _live(self, address: Address) -> _Entry | None:
        entry = self._entries.get(address)
        return entry if entry is not None and entry.expires > self.clock() else None

    def _store(self, address: Address, data: bytes) -> None:
        self._drop(address)
        self._entries[address] = _Entry(data, self.clock() + self.limits.ttl_s)
        self._bytes += len(data)
        self._counts[address[1]] = self._counts.get(address[1], 0) + 1
        self._evict(address[1])

    async def delete(self, owner: str, kind: str, key: str) -> bool:
        with self._lock:
            entry = self._entries.get((owner, kind, key))
            live = entry is not None and entry.expires > self.clock()
            self._drop((owner, kind, key))
            return live

    async def list(self, owner: str, kind: str) -> list[str]:
        with self._lock:
            now = self.clock()
            return [address[2] for address, entry in self._entries.items()
                    if address[0] == owner and address[1] == kind and entry.expires > now]

    async def stats(self) -> dict[str, int]:
        with self._lock:
            self._expire()
            return {"objects": len(self._entries), "bytes": self._bytes}

    def _drop(self, address: Address) -> None:
        entry = self._entries.pop(address, None)
        if entry is not None:
            self._bytes -= len(entry.data)
            self._counts[address[1]] -= 1

    def _expire(self) -> None:
        """Objects get the same TTL when put, so the expired ones are at the front (a lowered
        TTL leaves some behind for a while; `get` never returns them)."""
        now = self.clock()
        while self._entries:
            address, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            self._drop(address)

    def _evict(self, kind: str) -> None:
        self._expire()
        limit = self.limits.max_count.get(kind)
        if limit is not None:
            while self._counts.get(kind, 0) > limit:
                self._drop(next(a for a in self._entries if a[1] == kind))
        while self._bytes > self.limits.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
