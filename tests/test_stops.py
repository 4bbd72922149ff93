"""Stop sequences (backends/stops.py): the streaming scanner against a plain reference, for random
texts, stop lists and ways of cutting the text into pieces, and the bound on the request's list."""

from __future__ import annotations

import random

import pytest

from backends.stops import StopScanner
from schemas.openai import MAX_STOP_CHARS, MAX_STOPS, ChatRequest


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The text up to the first place where a stop is complete (the longest one ending there)."""
    stops = [s for s in stops if s]
    for end in range(1, len(text) + 1):
        hits = [s for s in stops if text[:end].endswith(s)]
        if hits:
            stop = max(hits, key=len)
            return text[:end - len(stop)], stop
    return text, None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is the start of some stop."""
    return max((k for k in range(1, len(text) + 1) for s in stops if s and len(s) > k and s.startswith(text[-k:])),
               default=0)


def pieces(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("alphabet", ["ab", "abc\n", "aé🙂"])
def test_the_scanner_equals_the_reference_and_never_leaks(alphabet):
    rng = random.Random(alphabet)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(0, 4))]
        want, want_stop = reference(text, stops)
        scanner, fed, sent = StopScanner(stops), "", ""
        for piece in pieces(rng, text):
            fed += piece
            sent += scanner.feed(piece)
            if scanner.matched is not None:
                break
            # Everything that cannot still become a stop is out; nothing that can is.
            assert sent == fed[:len(fed) - held_back(fed, stops)], (text, stops)
        sent += scanner.rest()
        assert (sent, scanner.matched) == (want, want_stop), (text, stops)


def test_a_stop_inside_one_piece_and_across_pieces():
    scanner = StopScanner(["</s>", "END"])
    assert scanner.feed("Hello </") == "Hello "
    assert scanner.feed("s> more") == ""
    assert scanner.matched == "</s>" and scanner.rest() == ""
    scanner = StopScanner(["abcd", "bc"])
    assert scanner.feed("xabc") == "xa" and scanner.matched == "bc"  # "bc" is complete first
    scanner = StopScanner(["ab"])
    assert scanner.feed("xa") == "x" and scanner.rest("!") == "a!" and scanner.matched is None


def test_the_longest_allowed_stop_list():
    """The most a request may send, against text that keeps almost matching every stop."""
    stops = [("ab" * MAX_STOP_CHARS)[i:i + MAX_STOP_CHARS - 1] + "!" for i in range(MAX_STOPS)]
    scanner = StopScanner(stops)
    text = "ab" * 5000
    out = "".join(scanner.feed(text[i:i + 7]) for i in range(0, len(text), 7))
    assert scanner.matched is None and len(out) == len(text) - (MAX_STOP_CHARS - 1)  # the rest may still be a stop
    assert out + scanner.feed("!") == text[:-(MAX_STOP_CHARS - 1)] and scanner.matched in stops
    assert scanner.rest() == ""


def test_the_stop_list_is_bounded():
    ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "stop": ["a" * MAX_STOP_CHARS] * MAX_STOPS})
    for stop in (["s"] * (MAX_STOPS + 1), ["a" * (MAX_STOP_CHARS + 1)]):
        with pytest.raises(ValueError, match="stop"):
            ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "stop": stop})
