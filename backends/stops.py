"""Stop sequences in streamed text, for every engine whose token loop is ours.

Text that could still grow into a stop sequence is held back, so a client never
sees half of a stop sequence that the final answer then drops.

The scan is an Aho-Corasick automaton over all stop strings: each generated
character costs one (amortized) step whatever the number and length of the
stops, where testing every stop against the text after every token made a long
stop list multiply generation time. A stop ends the text where it is first
complete; when several end on the same character, the longest one (which starts
earliest) is cut. The result does not depend on how the text is split into pieces.
"""

from __future__ import annotations


class _Automaton:
    """Trie of the stop strings with failure links. A state stands for the longest tail of the
    text so far that is a prefix of some stop; `depth` is its length (what must be held back)
    and `found` the longest stop that ends there (0 if none)."""

    def __init__(self, stops: list[str]):
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        self.found = [0]
        for stop in stops:
            state = 0
            for char in stop:
                nxt = self.goto[state].get(char)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto[state][char] = nxt
                    self.goto.append({})
                    self.depth.append(self.depth[state] + 1)
                    self.found.append(0)
                state = nxt
            self.found[state] = len(stop)
        self.fail = [0] * len(self.goto)
        queue = list(self.goto[0].values())
        for state in queue:  # breadth first: a state's failure link is shallower, so already done
            for char, nxt in self.goto[state].items():
                back = self.fail[state]
                while back and char not in self.goto[back]:
                    back = self.fail[back]
                self.fail[nxt] = self.goto[back].get(char, 0)
                self.found[nxt] = self.found[nxt] or self.found[self.fail[nxt]]
                queue.append(nxt)

    def step(self, state: int, char: str) -> int:
        while state and char not in self.goto[state]:
            state = self.fail[state]
        return self.goto[state].get(char, 0)


class StopScanner:
    """Feed decoded pieces; get back what is safe to send. `matched` names the stop that ended it."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._auto = _Automaton(self.stops)
        self._state = 0
        self.text = ""  # what is not sent yet (the held-back tail, then the new piece)
        self.matched: str | None = None

    def feed(self, piece: str) -> str:
        if self.matched is not None:
            return ""
        auto, state = self._auto, self._state
        for index, char in enumerate(piece):
            state = auto.step(state, char)
            if auto.found[state]:
                end = len(self.text) + index + 1
                size = auto.found[state]
                whole = self.text + piece[:index + 1]
                self.matched = whole[end - size:end]
                self.text = ""
                self._state = 0
                return whole[:end - size]
        self._state = state
        self.text += piece
        return self._take(len(self.text) - auto.depth[state])

    def rest(self, tail: str = "") -> str:
        """At the end: what was held back (plus a decoder's last bytes), unless a stop ended the text."""
        if self.matched is not None:
            return ""
        out = self.feed(tail)
        if self.matched is not None:
            return out
        out, self.text, self._state = out + self.text, "", 0
        return out

    def _take(self, upto: int) -> str:
        out, self.text = self.text[:upto], self.text[upto:]
        return out
