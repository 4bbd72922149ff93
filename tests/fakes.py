"""A controllable fake engine for tests about the gateway rather than the engine."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

from pydantic import ConfigDict

from backends.base import Backend, Delta, SamplingParams, Usage
from backends.errors import BackendError, LoadError
from backends.options import EngineOptions
from backends.registry import Engine

EVENTS: list[tuple[str, Any]] = []  # (what, detail) in the order things happened


class FakeBackend(Backend):
    """Emits `max_tokens` words, sleeping `options.delay` seconds per token."""

    capabilities = frozenset({"complete", "chat"})

    @classmethod
    def load(cls, spec, path):
        if spec.options.get("fail_load"):
            raise LoadError("fake load failure")
        time.sleep(float(spec.options.get("load_delay", 0)))
        backend = cls(spec, path)
        backend.thread = threading.current_thread().name
        backend.produced = 0
        return backend

    def complete(self, prompt: Any, params: SamplingParams, cancelled) -> Iterator[Delta]:
        EVENTS.append(("start", prompt))
        delay = float(self.spec.options.get("delay", 0))
        for i in range(params.max_tokens):
            if cancelled():
                EVENTS.append(("cancelled", prompt))
                yield Delta(finish_reason="cancelled", usage=Usage(1, i))
                return
            time.sleep(delay)
            if i == self.spec.options.get("fail_after"):  # a failure mid-stream, after some text
                raise BackendError("fake failure mid-stream")
            self.produced += 1
            yield Delta(text=f" w{i}")
        EVENTS.append(("end", prompt))
        yield Delta(finish_reason="length", usage=Usage(1, params.max_tokens))

    def chat(self, messages, params, cancelled, options=None) -> Iterator[Delta]:
        return self.complete(messages[-1]["content"], params, cancelled)


class ProcessProbe(Backend):
    """An engine the gateway runs in a worker process (gateway.models.worker): it can block for a
    while, crash, fail a call, and tell which process it runs in."""

    capabilities = frozenset({"probe"})
    in_child_process = True

    @classmethod
    def load(cls, spec, path):
        if spec.options.get("fail_load"):
            raise LoadError("probe load failure")
        return cls(spec, path)

    def pid(self) -> int:
        import os

        return os.getpid()

    def block(self, seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    def crash(self) -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)

    def refuse(self) -> None:
        from backends.errors import BackendError

        raise BackendError("the probe refuses this input")


class AnyOptions(EngineOptions):
    """A test double's `options:` are its own business: anything goes."""

    model_config = ConfigDict(extra="allow")


def engine(target: str) -> Engine:
    """A registry entry for a test double (`monkeypatch.setitem(ENGINES, key, engine("tests.fakes:X"))`)."""
    return Engine(target, "a test double", AnyOptions, batched=target)
