"""One Responses API turn, assembled from engine deltas.

The same object builds the JSON answer and the event stream: every delta
updates the response and returns the events that say so, in OpenAI's order
(`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`..., `.done` events,
function-call items with their argument events, then exactly one terminal
`response.completed` / `response.incomplete` / `response.failed`). A non-streamed
call just drops the events, so the final object is the one a streaming client
accumulates, by construction.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from backends.base import Delta
from gateway.api.chat import chain, usage_of
from gateway.http.errors import classify
from schemas.responses import (
    FunctionCallItem,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponseUsage,
)

Event = dict[str, Any]
Keep = Callable[[dict[str, Any]], Awaitable[None]]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseTurn:
    def __init__(self, response: ResponseObject, namespaces: dict[str, str] | None = None):
        self.response = response
        self.namespaces = namespaces or {}  # function name -> the `namespace` tool it came in
        self.sequence = 0
        self.message: OutputMessage | None = None  # the assistant text item, once text arrives
        self.finished = False
        self.calls: dict[str, FunctionCallItem] = {}  # calls streamed as generated, by call id
        self.call: FunctionCallItem | None = None  # the one being generated
        self.failure: BaseException | None = None  # what failed it (`fail`), for a background job's span

    def dump(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    def event(self, kind: str, **data: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return event

    def start(self) -> list[Event]:
        return [self.event("response.created", response=self.dump()),
                self.event("response.in_progress", response=self.dump())]

    def feed(self, delta: Delta) -> list[Event]:
        events: list[Event] = []
        if delta.text:
            if self.message is None:
                events += self._open_message()
            self.message.content[0].text += delta.text
            events.append(self.event("response.output_text.delta", item_id=self.message.id,
                                     output_index=self._index(self.message), content_index=0, delta=delta.text,
                                     logprobs=[]))
        for part in delta.tool_call_deltas or []:
            events += self._grow_call(part)
        if delta.finish_reason:
            events += self._finish(delta)
        return events

    def _grow_call(self, part: Any) -> list[Event]:
        """A call being generated: its item when it starts, then its arguments as they grow."""
        events: list[Event] = []
        if part.name is not None:
            if self.message is not None and self.message.status == "in_progress":
                events += self._close_message("completed")  # text before the call is complete
            item = FunctionCallItem(id=_id("fc"), call_id=part.id, name=part.name, arguments="", status="in_progress",
                                    namespace=self.namespaces.get(part.name))
            self.response.output.append(item)
            self.calls[part.id] = self.call = item
            events.append(self.event("response.output_item.added", output_index=self._index(item),
                                     item=item.model_dump(mode="json")))
        elif part.arguments and self.call is not None:
            self.call.arguments += part.arguments
            events.append(self.event("response.function_call_arguments.delta", item_id=self.call.id,
                                     output_index=self._index(self.call), delta=part.arguments))
        return events

    def _end_call(self, item: FunctionCallItem, arguments: str, status: str) -> list[Event]:
        index = self._index(item)
        item.arguments, item.status = arguments, status
        return [self.event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                           arguments=arguments),
                self.event("response.output_item.done", output_index=index, item=item.model_dump(mode="json"))]

    def fail(self, exc: BaseException) -> Event:
        """The terminal event of a stream whose generation failed after the headers were sent."""
        err = classify(exc, f"generation failed: {exc}")
        code, message = err.code or "server_error", err.message
        self.failure = exc
        self.response.status = "failed"
        self.response.error = {"code": code, "message": message}
        self.finished = True
        return self.event("response.failed", response=self.dump())

    # -- items ------------------------------------------------------------------------------

    def _index(self, item: Any) -> int:
        return next(i for i, candidate in enumerate(self.response.output) if candidate is item)

    def _open_message(self) -> list[Event]:
        self.message = OutputMessage(id=_id("msg"), status="in_progress", content=[])
        self.response.output.append(self.message)
        index = self._index(self.message)
        added = self.event("response.output_item.added", output_index=index, item=self.message.model_dump(mode="json"))
        self.message.content.append(OutputText(text=""))
        part = self.event("response.content_part.added", item_id=self.message.id, output_index=index, content_index=0,
                          part=self.message.content[0].model_dump(mode="json"))
        return [added, part]

    def _close_message(self, status: str) -> list[Event]:
        message, index = self.message, self._index(self.message)
        message.status = status
        text = message.content[0]
        return [
            self.event("response.output_text.done", item_id=message.id, output_index=index, content_index=0,
                       text=text.text, logprobs=[]),
            self.event("response.content_part.done", item_id=message.id, output_index=index, content_index=0,
                       part=text.model_dump(mode="json")),
            self.event("response.output_item.done", output_index=index, item=message.model_dump(mode="json")),
        ]

    def _call(self, call: dict[str, Any]) -> list[Event]:
        arguments = call["function"]["arguments"]
        name = call["function"]["name"]
        item = FunctionCallItem(id=_id("fc"), call_id=call["id"], name=name, arguments="", status="in_progress",
                                namespace=self.namespaces.get(name))
        self.response.output.append(item)
        index = self._index(item)
        events = [self.event("response.output_item.added", output_index=index, item=item.model_dump(mode="json"))]
        events.append(self.event("response.function_call_arguments.delta", item_id=item.id, output_index=index,
                                 delta=arguments))
        item.arguments, item.status = arguments, "completed"
        events.append(self.event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                 arguments=arguments))
        events.append(self.event("response.output_item.done", output_index=index, item=item.model_dump(mode="json")))
        return events

    def _finish(self, delta: Delta) -> list[Event]:
        incomplete = delta.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        events: list[Event] = []
        if self.message is None and not delta.tool_calls and not self.calls:
            events += self._open_message()  # an empty answer is still one (empty) message, as OpenAI answers
        if self.message is not None and self.message.status == "in_progress":
            events += self._close_message(status)
        final = {call["id"]: call for call in delta.tool_calls or []}
        for call_id, item in self.calls.items():  # streamed calls end with the final arguments (the same text)
            call = final.pop(call_id, None)
            events += self._end_call(item, call["function"]["arguments"] if call else item.arguments,
                                     "completed" if call else "incomplete")
        for call in final.values():
            events += self._call(call)
        usage = usage_of(delta)
        response = self.response
        response.status = status
        response.usage = ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                                       total_tokens=usage.total_tokens, input_tokens_details=InputTokensDetails(
                                           cached_tokens=usage.prompt_tokens_details.cached_tokens))
        if incomplete:
            response.incomplete_details = {"reason": "max_output_tokens"}
        else:
            response.completed_at = int(time.time())
        self.finished = True
        events.append(self.event("response.incomplete" if incomplete else "response.completed", response=self.dump()))
        return events


async def generate(turn: ResponseTurn, first: Delta | None, deltas: AsyncIterator[Delta], keep: Keep
                   ) -> AsyncIterator[Event]:
    """The events of one turn after its start, from the engine's deltas to exactly one terminal event:
    the one generation loop of a foreground stream and of a background job (gateway/api/openai/background.py).
    `keep` stores the finished response before its terminal event goes out, so a client that reads the
    terminal event may retrieve the response at once. A cancellation (the client left, or the job was
    cancelled) propagates, which closes the engine's stream and stops its decoding."""
    try:
        async for delta in chain(first, deltas):
            batch = turn.feed(delta)
            if turn.finished:
                await keep(turn.dump())
            for event in batch:
                yield event
    except Exception as exc:  # noqa: BLE001 - reported in-band: the answer has begun
        yield turn.fail(exc)
        return
    if not turn.finished:  # the engine ended without a finish reason: never leave the stream open
        yield turn.fail(RuntimeError("generation ended without a finish reason"))
