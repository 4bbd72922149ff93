"""A bounded hand-off from one producer thread to one asyncio consumer.

The engine thread blocks when the buffer is full, so it never runs more than a
few items ahead of the client; closing the channel from the consumer side makes
the producer's next `put` return False, which is how a departed client stops
generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any


class Channel:
    """A bounded hand-off from one producer thread to one asyncio consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 4):
        self._loop = loop
        self._maxsize = maxsize
        self._items: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._ready = asyncio.Event()

    # producer side (engine thread)
    def put(self, kind: str, value: Any = None) -> bool:
        """Block while the buffer is full. Returns False once the consumer has gone."""
        with self._cond:
            while len(self._items) >= self._maxsize and not self._closed and kind == "item":
                self._cond.wait(0.05)
            if self._closed:
                return False
            self._items.append((kind, value))
        self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def closed(self) -> bool:
        return self._closed

    # consumer side (event loop)
    async def get(self) -> tuple[str, Any]:
        while True:
            with self._cond:
                if self._items:
                    item = self._items.popleft()
                    self._cond.notify_all()
                    return item
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
