"""Chat templates for the text backends: the fallback template, the Jinja environment for engines
that render templates themselves (ONNX), and the one error every template failure becomes.

llama.cpp models render with llama-cpp-python's `Jinja2ChatFormatter`, vision models inside
their chat handler, ONNX models with `environment()` here (set up as transformers and the
formatter set theirs up). However a template fails (a syntax error in a manifest's
`chat_template`, a `raise_exception(...)` in the template, an undefined name), `rendering()`
turns it into the same `ChatTemplateError`, which the gateway answers as a 400
`invalid_request` like every other `BackendError`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from backends.errors import BackendError

# Used when a model brings no chat template (e.g. base models such as Gemma 3 270M).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Where an answer under CHATML_TEMPLATE ends. A model that brings no template does not know these markers
# as special tokens, so no end-of-generation token ends its turn: having read them in the prompt, a base
# model writes them as text and goes on inventing the next turns (Gemma 3 270M under Claude Code's and
# Codex's prompts: thousands of tokens, "<|im_start|>user" and all, until its output cap). The engines that
# chose this template stop at them, as chat models trained on ChatML stop at their own `<|im_end|>`.
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")

REJECTED = "the model's chat template rejected these messages"


class ChatTemplateError(BackendError):
    """A chat template could not render these messages (or could not be read at all)."""


def template_error(exc: BaseException) -> ChatTemplateError:
    """The error a template failure becomes, whichever engine rendered it."""
    return ChatTemplateError(f"{REJECTED}: {exc}")


@contextmanager
def rendering() -> Iterator[None]:
    """Wrap a template render: jinja raises many kinds of exception, and all of them mean
    "these messages do not fit the template"."""
    try:
        yield
    except ChatTemplateError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise template_error(exc) from exc


def environment() -> Any:
    """The sandboxed environment transformers (and llama-cpp-python's formatter) render chat
    templates in: trimmed blocks, loop controls, `{% generation %}` ignored, `tojson` keeping
    non-ASCII, `raise_exception` and `strftime_now`."""
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"{REJECTED}: {message}")

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[IgnoreGenerationTags, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
