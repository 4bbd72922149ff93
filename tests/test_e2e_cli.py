"""End to end for the one-model CLI path and process lifecycle."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_nexa_server_gemma_serves_completions(start_server, gemma_path):
    server = start_server(["gemma", "--nctx", "512"])
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    models = client.models.list().data
    assert [m.id for m in models] == ["gemma"]
    answer = client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert answer.choices[0].text.strip()
    assert answer.usage.completion_tokens == 6
    # The original clients send no model at all.
    raw = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", "max_new_tokens": 3}, timeout=60)
    assert raw.status_code == 200 and raw.json()["result"] == raw.json()["choices"][0]["text"]


def test_local_path_flags_serve_the_file(start_server, smollm2_path):
    server = start_server([str(smollm2_path), "-lp", "-mt", "NLP", "--nctx", "1024"])
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["id"] == "SmolLM2-135M-Instruct.Q4_1"
    assert card["type"] == "NLP" and card["state"] == "ready"
    answer = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1


def test_sigterm_lets_an_in_flight_stream_finish(start_server, smollm2_path):
    server = start_server(["smollm2"])
    lines: list[str] = []

    def consume() -> None:
        with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                          json={"prompt": "1, 2, 3, 4, 5,", "max_tokens": 200, "temperature": 0, "stream": True}) as response:
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 30
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines, "the stream never started"
    at_signal = len(lines)
    server.proc.send_signal(signal.SIGTERM)
    reader.join(60)
    assert server.proc.wait(60) == 0
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in lines[-2]
    assert len(lines) > at_signal + 50  # it was still generating when the signal came, and went on to the end
