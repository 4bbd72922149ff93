"""The Responses API's stored responses: bounded, in memory, per API key.

`store: true` (OpenAI's default) keeps a response so that `previous_response_id`
can continue the conversation and `GET /v1/responses/{id}` can read it back. A
gateway is not a database: entries live at most `server.responses_ttl_s`
seconds, the oldest go first beyond `server.responses_max_stored`, and a restart
forgets them all. Entries are keyed by the caller's API key too, so a key can
neither read nor delete nor even detect another key's responses.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from schemas.manifest import ApiKey


@dataclass
class Stored:
    response: dict[str, Any]  # the response object as answered
    input_items: list[dict[str, Any]]  # every item the model saw (earlier turns first), with ids
    expires: float = 0.0


@dataclass
class ResponseStore:
    max_items: int = 1000
    ttl_s: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    _entries: "OrderedDict[tuple[str, str], Stored]" = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def owner(key: ApiKey | None) -> str:
        """Who a response belongs to: a digest of the API key (never the key itself); "" without keys."""
        return hashlib.sha256(key.key.encode()).hexdigest() if key is not None else ""

    def put(self, owner: str, response_id: str, entry: Stored) -> None:
        with self._lock:
            self._expire()
            if self.max_items <= 0:
                return
            entry.expires = self.clock() + self.ttl_s
            self._entries[(owner, response_id)] = entry
            self._entries.move_to_end((owner, response_id))
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)

    def get(self, owner: str, response_id: str) -> Stored | None:
        with self._lock:
            self._expire()
            entry = self._entries.get((owner, response_id))
            if entry is not None and entry.expires <= self.clock():  # stored under an older, longer TTL
                del self._entries[(owner, response_id)]
                return None
            return entry

    def delete(self, owner: str, response_id: str) -> bool:
        with self._lock:
            self._expire()
            return self._entries.pop((owner, response_id), None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def _expire(self) -> None:
        """Entries are in insertion order and share one TTL, so the expired ones are at the front."""
        now = self.clock()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[key]
