"""Tool-call arguments as they are generated, for streaming.

A call is generated under a JSON grammar as `{"name": "...", "arguments": {...}}` (several calls are
separated by the call markers; backends/tools.py). `CallStream` reads that text as it grows and gives
each call's start (its name, once complete) and then the raw characters of its `arguments` value as
they arrive, so an agent sees a call being written instead of one burst at the end. The arguments of
the final answer are the same raw characters (`arguments()`), so the streamed fragments always
concatenate to them.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

_HEAD = re.compile(r'\s*\}?\s*(?:</tool_call>)?\s*(?:<tool_call>)?\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*'
                   r'"arguments"\s*:\s*', re.DOTALL)


@dataclass
class CallEvent:
    """A call started (`id` and `name` set, `arguments` empty) or its arguments grew by `arguments`."""

    index: int
    name: str | None = None
    arguments: str = ""
    id: str | None = None


class CallStream:
    """Feed generated text; get CallEvents. Knows JSON strings and nesting, nothing of schemas."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0  # where scanning resumes in `text`
        self.index = -1  # the call being read
        self.raw: list[str] = []  # each call's arguments text so far
        self.ids: list[str] = []  # each call's id, sent with its start and kept in the final answer
        self._in_args = False  # inside a call's arguments value
        self._depth = 0  # open braces and brackets in it
        self._in_string = False
        self._escaped = False

    def feed(self, piece: str) -> list[CallEvent]:
        self.text += piece
        events: list[CallEvent] = []
        while self.pos < len(self.text):
            if not self._in_args:
                head = _HEAD.match(self.text, self.pos)
                if head is None or head.end() >= len(self.text):
                    break  # the head is not complete yet, or the value has not begun
                self.index += 1
                self.raw.append("")
                self.ids.append(f"call_{uuid.uuid4().hex[:24]}")
                events.append(CallEvent(self.index, name=json.loads(head.group(1)), id=self.ids[-1]))
                self.pos = head.end()
                self._in_args, self._depth, self._in_string, self._escaped = True, 0, False, False
                continue
            start = self.pos
            self._scan()
            fragment = self.text[start:self.pos]
            if fragment:
                self.raw[self.index] += fragment
                events.append(CallEvent(self.index, arguments=fragment))
            if self._in_args:
                break  # the value goes on in text not generated yet
        return events

    def _scan(self) -> None:
        """Advance `pos` over the arguments value, as far as the text goes or to the value's end
        (then `_in_args` turns false). The value starts at a non-space character (the head's regex
        took the spaces before it)."""
        text, i = self.text, self.pos
        while i < len(text):
            char = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
                    if self._depth == 0:  # a bare string value ended
                        i += 1
                        break
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]" or (char in ", \t\r\n" and self._depth == 0):
                if self._depth == 0:  # the value (a number, true, ...) ended before this character
                    self._in_args = False
                    self.pos = i
                    return
                self._depth -= 1
                if self._depth == 0:
                    i += 1
                    break
            i += 1
        else:
            self.pos = i
            return
        self._in_args = False
        self.pos = i

    def arguments(self) -> list[str]:
        """Each call's raw arguments text, as streamed."""
        return list(self.raw)
