"""The shared token loop (backends/textloop.py) on a scripted engine: a list of tokens whose text
is known, so stop sequences, budgets, usage, logprobs and cancellation can be checked exactly.
The real engines run through the same loop in test_e2e_text.py, test_onnx_text.py and test_batching.py."""

from __future__ import annotations

from typing import Iterator

import pytest

from backends import textloop
from backends.base import Delta, TokenLogprob
from backends.errors import BackendError

END = 0
# token id -> bytes; 7 and 8 are the two halves of "é" (UTF-8 c3 a9)
PIECES = {1: b"Hello", 2: b" wor", 3: b"ld", 4: b"!", 5: b" EN", 6: b"D", 7: b"\xc3", 8: b"\xa9", 9: b" more"}
NEVER = lambda: False  # noqa: E731


class Engine:
    """A fake engine: yields its script, records how far it was pulled and whether it was closed."""

    def __init__(self, script: list[int], logprobs: bool = False):
        self.script, self.logprobs = script, logprobs
        self.pulled = 0
        self.closed = False

    def tokens(self) -> Iterator[textloop.Sampled]:
        try:
            for token in self.script:
                self.pulled += 1
                yield token, (TokenLogprob(PIECES.get(token, b"").decode("latin-1"), -0.5) if self.logprobs else None)
        finally:
            self.closed = True


def detokenizer(prompt: list[int] = ()) -> textloop.ByteDetokenizer:
    return textloop.ByteDetokenizer(lambda token, before: PIECES[token], list(prompt))


def run(engine: Engine, *, stop: list[str] = (), budget: int = 100, cancelled=NEVER) -> list[Delta]:
    deltas = list(textloop.run([101, 102, 103], engine.tokens(), is_end=lambda t: t == END,
                               detokenizer=detokenizer([101, 102, 103]), stop=list(stop), budget=budget,
                               cancelled=cancelled))
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].finish_reason
    assert engine.closed  # whatever ended the loop, the engine's stream was closed
    return deltas


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def test_end_token_stops_and_is_not_counted():
    engine = Engine([1, 2, 3, END, 9])
    deltas = run(engine)
    assert text(deltas) == "Hello world"
    last = deltas[-1]
    assert (last.finish_reason, last.usage.prompt_tokens, last.usage.completion_tokens) == ("stop", 3, 3)
    assert last.stop_sequence is None and engine.pulled == 4


def test_stop_sequence_split_across_tokens_never_leaks():
    engine = Engine([1, 2, 3, 5, 6, 9])  # "Hello world EN" + "D": the stop " END" spans two tokens
    deltas = run(engine, stop=[" END"])
    assert text(deltas) == "Hello world"
    assert all("EN" not in d.text for d in deltas)  # " EN" was held back until the stop was decided
    last = deltas[-1]
    assert (last.finish_reason, last.stop_sequence, last.usage.completion_tokens) == ("stop", " END", 5)
    assert engine.pulled == 5  # nothing generated after the stop


def test_partial_stop_is_released_at_the_end():
    deltas = run(Engine([1, 2, 3, 5]), stop=[" ENDX"])
    assert text(deltas) == "Hello world EN" and deltas[-1].finish_reason == "length"


def test_budget_gives_length_with_exact_usage():
    engine = Engine([1, 2, 3, 4, 9])
    deltas = run(engine, budget=3)
    assert text(deltas) == "Hello world" and deltas[-1].finish_reason == "length"
    assert deltas[-1].usage.completion_tokens == 3 and engine.pulled == 3


def test_utf8_character_split_across_tokens_is_sent_whole():
    deltas = run(Engine([1, 7, 8, 4]))
    assert [d.text for d in deltas if d.text] == ["Hello", "é", "!"]
    assert deltas[-1].usage.completion_tokens == 4


def test_half_a_character_at_the_end_is_a_replacement_character():
    deltas = run(Engine([1, 7]))
    assert text(deltas) == "Hello\ufffd"


def test_cancellation_is_asked_before_each_token_and_ends_the_stream():
    calls: list[int] = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    engine = Engine([1, 2, 3, 4, 9])
    deltas = run(engine, cancelled=cancelled)
    assert text(deltas) == "Hello wor"
    last = deltas[-1]
    assert last.finish_reason == "cancelled" and last.usage.completion_tokens == 2
    assert engine.pulled == 2 and len(calls) == 3  # the engine was not asked for a third token


def test_engine_ending_its_stream_is_cancelled_or_length():
    left = [False]
    engine = Engine([1, 2])
    deltas = list(textloop.run([], _ending(engine, left), is_end=lambda t: t == END, detokenizer=detokenizer(),
                               stop=[], budget=10, cancelled=lambda: left[0]))
    assert deltas[-1].finish_reason == "cancelled" and deltas[-1].usage.completion_tokens == 2
    deltas = run(Engine([1, 2]))  # ended without the client leaving (the model is unloading)
    assert deltas[-1].finish_reason == "length" and text(deltas) == "Hello wor"


def _ending(engine: Engine, left: list[bool]) -> Iterator[textloop.Sampled]:
    """The engine's stream ends because the client left (as the batched engine's does)."""
    yield from engine.tokens()
    left[0] = True


def test_logprobs_travel_with_the_text_they_made():
    deltas = run(Engine([1, 7, 8, 5, 6], logprobs=True), stop=[" END"])
    sent = [(d.text, [lp.token for lp in d.logprobs or []]) for d in deltas if d.text or d.logprobs]
    # "é" needed two tokens; " EN" was held back and then cut by the stop: its logprob comes last, without text
    assert sent == [("Hello", ["Hello"]), ("é", ["\xc3", "\xa9"]), ("", [" EN", "D"])]
    assert deltas[-1].logprobs is None


def test_closing_the_answer_early_closes_the_engine():
    engine = Engine([1, 2, 3, 4])
    deltas = textloop.run([], engine.tokens(), is_end=lambda t: t == END, detokenizer=detokenizer(), stop=[],
                          budget=10, cancelled=NEVER)
    assert next(deltas).text == "Hello"
    deltas.close()  # the consumer stopped reading (a client that left mid-stream)
    assert engine.closed and engine.pulled == 1


def test_token_budget_is_what_the_context_leaves():
    assert textloop.token_budget([1] * 10, 100, 64) == 54
    assert textloop.token_budget([1] * 10, 5, 64) == 5
    with pytest.raises(BackendError, match="the prompt is 64 tokens, which does not fit this model's context of 64"):
        textloop.token_budget([1] * 64, 5, 64)
