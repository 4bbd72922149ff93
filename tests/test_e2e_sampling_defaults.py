"""End to end: a model's `sampling:` in the manifest is what a request that leaves a field unset gets
(Claude Code and Codex send no temperature at all), on every chat protocol; what a request sets wins.

Greedy decoding is deterministic on one machine, so a model whose manifest says `temperature: 0` must
answer a request without a temperature exactly as a greedy request; sampled at temperature 1.5 with
three seeds, at least one 24-token answer differs from it (so the test can fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ROOT, Server, models, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("sampling-defaults")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "greedy", "source": str(smollm2_path), "nctx": 1024, "preload": True,
         "sampling": {"temperature": 0, "repeat_penalty": 1.1}},
        {"name": "plain", "source": str(smollm2_path), "nctx": 1024, "preload": True}])
    started = Server(["-c", str(manifest)], tmp)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def answer(client: openai.OpenAI, model: str, **fields) -> str:
    result = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=TOKENS, **fields)
    return result.choices[0].message.content


def test_a_request_without_sampling_gets_the_manifests(client):
    greedy = answer(client, "plain", temperature=0, extra_body={"repeat_penalty": 1.1})
    assert answer(client, "greedy") == greedy
    assert answer(client, "greedy", temperature=0) == greedy
    sampled = {answer(client, "greedy", temperature=1.5, seed=seed) for seed in (1, 2, 3)}
    assert sampled != {greedy}  # the request's own temperature wins


def test_agent_protocols_get_the_defaults_too(server, client):
    greedy = answer(client, "greedy")
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    message = claude.messages.create(model="greedy", max_tokens=TOKENS, messages=MESSAGES)
    assert message.content[0].text == greedy
    response = client.responses.create(model="greedy", input=MESSAGES, max_output_tokens=TOKENS)
    assert response.output_text == greedy
    ollama = httpx.post(server.url + "/api/chat", json={"model": "greedy", "messages": MESSAGES, "stream": False,
                                                         "options": {"num_predict": TOKENS}}, timeout=120)
    assert ollama.status_code == 200 and ollama.json()["message"]["content"] == greedy


def test_the_model_card_shows_the_defaults(server):
    cards = models(server.url)
    assert cards["greedy"]["sampling"] == {"temperature": 0.0, "repeat_penalty": 1.1}
    assert cards["plain"]["sampling"] is None


def test_an_out_of_range_default_is_refused_with_its_key_path(tmp_path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [
        {"name": "hot", "source": "smollm2", "sampling": {"temperature": 5}}])
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(manifest)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "models[0].sampling.temperature" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
