"""Stop sequences in streamed text, for every engine whose token loop is ours.

Text that could still grow into a stop sequence is held back, so a client never
sees half of a stop sequence that the final answer then drops.
"""

from __future__ import annotations


def first_stop(text: str, stops: list[str], start: int) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def partial_stop_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop sequence."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-size:]):
                best = size
                break
    return best


class StopScanner:
    """Feed decoded pieces; get back what is safe to send. `matched` names the stop that ended it."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.matched: str | None = None

    def feed(self, piece: str) -> str:
        self.text += piece
        cut = first_stop(self.text, self.stops, max(0, self.sent - self.holdback))
        if cut is not None:
            self.matched = next(s for s in self.stops if self.text.startswith(s, cut))
            self.text = self.text[:cut]
            return self._take(len(self.text))
        return self._take(len(self.text) - partial_stop_len(self.text, self.stops))

    def rest(self, tail: str = "") -> str:
        """At the end: what was held back (plus a decoder's last bytes), unless a stop ended the text."""
        if self.matched is None:
            self.text += tail
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:upto], upto
        return out
