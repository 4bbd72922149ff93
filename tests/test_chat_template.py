"""Chat-template failures are one error (backends/chat_template.py): the same 400 in the same envelope
from a real gateway whether a GGUF model (llama-cpp-python's formatter) or an ONNX model (our Jinja
environment) rendered the template; plus the environment itself."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from backends.chat_template import ChatTemplateError, environment, rendering
from tests.conftest import Server, write_manifest

pytest.importorskip("onnx")
from tests.synth.onnx_lm import tiny_onnx_lm  # noqa: E402

HELLO = [{"role": "user", "content": "hello"}]
# A `for` that is never closed: a syntax error, found when the template is first compiled.
UNCLOSED = "{% for m in messages %}{{ m['content'] }}"
# A template that refuses a conversation with `raise_exception`, as many models' templates do.
REFUSING = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message must come first') }}"
            "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")


def render(template: str, **variables) -> str:
    with rendering():
        return environment().from_string(template).render(**variables)


def test_every_template_failure_becomes_one_error():
    with pytest.raises(ChatTemplateError, match=r"^the model's chat template rejected these messages: .*end of templ"):
        render(UNCLOSED, messages=HELLO)
    with pytest.raises(ChatTemplateError) as caught:
        render(REFUSING, messages=HELLO)
    assert str(caught.value) == "the model's chat template rejected these messages: a system message must come first"
    with pytest.raises(ChatTemplateError, match="rejected these messages: 'dict object' has no attribute 'nope'"):
        render("{{ messages[0].nope.deeper }}", messages=HELLO)


def test_the_environment_renders_as_transformers_does():
    assert render("{% generation %}{{ x | tojson }}{% endgeneration %}", x="é") == '"é"'  # generation tags ignored
    assert render("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "1"
    assert render("  {% if true %}\nyes{% endif %}") == "yes"  # trim_blocks, lstrip_blocks


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    """A GGUF model and an ONNX model, each with a broken template and with a refusing one."""
    tmp = tmp_path_factory.mktemp("templates")
    folder = tiny_onnx_lm()
    models = []
    for kind, template in (("unclosed", UNCLOSED), ("refusing", REFUSING)):
        options = {"chat_template": template}
        models.append({"name": f"gguf-{kind}", "source": "smollm2", "nctx": 512, "options": options})
        models.append({"name": f"onnx-{kind}", "type": "NLP", "format": "onnx", "source": str(folder), "nctx": 256,
                       "options": options})
    server = Server(["-c", str(write_manifest(tmp / "nexa.yaml", models))], tmp)
    yield server
    server.stop()


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["unclosed", "refusing"])
@pytest.mark.parametrize("stream", [False, True])
def test_gguf_and_onnx_answer_a_template_failure_alike(server, kind, stream):
    answers = {}
    for engine in ("gguf", "onnx"):
        response = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
            "model": f"{engine}-{kind}", "messages": HELLO, "max_tokens": 3, "stream": stream})
        assert response.status_code == 400, response.text
        answers[engine] = response.json()
    assert answers["gguf"] == answers["onnx"]
    error = answers["gguf"]["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("the model's chat template rejected these messages: ")
    if kind == "refusing":
        assert error["message"].endswith(": a system message must come first")
    ok = httpx.post(server.url + "/v1/completions", timeout=120, json={  # the model itself still works
        "model": f"onnx-{kind}", "prompt": "Count: one", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == " two three"
