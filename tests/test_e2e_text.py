"""End to end: a real `nexa server` with the real SmolLM2 and Gemma files,
spoken to with the official openai SDK and httpx over loopback."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def client(text_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=text_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_completion_is_a_full_openai_object(client):
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0,
    )
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "smollm2"
    assert answer.created > 1_700_000_000
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 5
    assert 0 < answer.usage.completion_tokens <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_alias_and_missing_model_pick_a_chat_model(client, text_server):
    by_alias = client.chat.completions.create(
        model="chat-default", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert by_alias.model == "smollm2"
    # No `model` at all (the original server's clients never send one): the first model that can chat.
    raw = httpx.post(text_server.url + "/v1/chat/completions",
                     json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}, timeout=60)
    assert raw.status_code == 200
    assert raw.json()["model"] == "smollm2"


def test_max_tokens_is_honoured_with_finish_reason_length(client):
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=7, temperature=0,
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 7


def test_greedy_generation_is_deterministic_and_seed_is_accepted(client):
    kwargs = dict(model="smollm2", messages=[{"role": "user", "content": "Count: one, two,"}], max_tokens=10)
    a = client.chat.completions.create(temperature=0, **kwargs).choices[0].message.content
    b = client.chat.completions.create(temperature=0, **kwargs).choices[0].message.content
    assert a == b
    s1 = client.chat.completions.create(temperature=1.0, seed=42, **kwargs).choices[0].message.content
    s2 = client.chat.completions.create(temperature=1.0, seed=42, **kwargs).choices[0].message.content
    assert s1 == s2


def test_whole_history_reaches_the_model(client):
    system = {"role": "system", "content": "You are terse."}
    last = {"role": "user", "content": "What did I just tell you?"}
    alone = client.chat.completions.create(model="smollm2", messages=[system, last], max_tokens=1)
    history = [
        system,
        {"role": "user", "content": "My favourite animal is the giant pacific octopus of the northern seas."},
        {"role": "assistant", "content": "Noted: the giant pacific octopus."},
        last,
    ]
    full = client.chat.completions.create(model="smollm2", messages=history, max_tokens=1)
    # Every earlier turn is in the prompt (the original server used only the last message).
    assert full.usage.prompt_tokens >= alone.usage.prompt_tokens + 25


def stop_inside(text: str) -> str:
    """A stop string taken from the middle of the model's own free answer (never words named
    in the test, which depend on the CPU's kernels): its second word, with the space before it."""
    words = text.split(" ")
    assert len([w for w in words if w]) >= 3, text
    index = next(i for i, w in enumerate(words) if w and i > 0 and any(words[:i]))
    return " " + words[index]


def test_stop_sequence_cuts_the_answer(client):
    prompt = "1, 2, 3, 4, 5, 6, 7, 8,"
    free = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0)
    stop = stop_inside(free.choices[0].text)
    stopped = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text
    assert stopped.choices[0].text == free.choices[0].text[:free.choices[0].text.index(stop)]


def test_nexa_field_names_and_documented_result(text_server):
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "temperature": 0, "max_new_tokens": 12, "top_k": 50, "top_p": 1,
            "stream": False}
    free = httpx.post(text_server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    stop = stop_inside(free)
    answer = httpx.post(text_server.url + "/v1/completions", json={**body, "stop_words": [stop]}, timeout=60).json()
    assert answer["object"] == "text_completion"
    assert answer["result"] == answer["choices"][0]["text"]
    assert answer["result"] == free[:free.index(stop)]
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] >= 1


def test_chat_stream_is_standard_sse(client, text_server):
    with httpx.stream("POST", text_server.url + "/v1/chat/completions", timeout=60, json={
        "model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True,
        "stream_options": {"include_usage": True},
    }) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert content and all(isinstance(e["choices"][0]["delta"]["content"], str) for e in content)
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1

    # The SDK reads the same stream.
    pieces = []
    for chunk in client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces).strip()


def test_streamed_text_equals_the_non_streamed_text(client):
    kwargs = dict(model="smollm2", prompt="The capital of France is", max_tokens=16, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole


def test_gemma_serves_completions(client):
    answer = client.completions.create(model="gemma", prompt="The first three planets are Mercury,",
                                       max_tokens=8, temperature=0)
    assert answer.model == "gemma"
    assert answer.choices[0].text.strip()
    assert answer.usage.completion_tokens >= 1


def test_unknown_model_is_404_in_the_openai_envelope(client, text_server):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    error = info.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]"])
def test_bad_json_is_400(text_server, body):
    response = httpx.post(text_server.url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_invalid_fields_are_400_with_the_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[], max_tokens=5)
    assert info.value.response.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert info.value.response.json()["error"]["param"] == "temperature"


def test_over_long_prompt_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="gemma", prompt="word " * 3000, max_tokens=5)
    assert "context" in info.value.response.json()["error"]["message"]


def test_models_list_health_and_ready(client, text_server):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"smollm2", "gemma"}
    raw = httpx.get(text_server.url + "/v1/models").json()
    card = next(m for m in raw["data"] if m["id"] == "smollm2")
    assert card["type"] == "NLP" and card["format"] == "gguf" and card["state"] == "ready"
    assert card["aliases"] == ["chat-default"]
    assert httpx.get(text_server.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(text_server.url + "/ready").json()
    assert ready["ready"] is True and ready["models"] == {"smollm2": "ready", "gemma": "ready"}


def test_unserved_and_unknown_routes(text_server):
    embeddings = httpx.post(text_server.url + "/v1/embeddings", json={"input": "x"})
    assert embeddings.status_code == 404
    assert embeddings.json()["error"]["code"] == "route_not_served"
    missing = httpx.get(text_server.url + "/v2/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(text_server.url + "/v1/chat/completions")
    assert wrong_method.status_code == 405


def test_client_disconnect_frees_the_model(text_server):
    """A client that leaves mid-stream must not keep the model busy."""
    url = text_server.url + "/v1/completions"
    body = {"model": "smollm2", "prompt": "Write a very long essay about the sea.", "max_tokens": 1500,
            "temperature": 1.0, "stream": True}
    started = time.monotonic()
    received = 0
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += 1
            if received >= 20:
                break
    rate = received / (time.monotonic() - started)  # tokens per second, measured here
    left = time.monotonic()
    quick = httpx.post(url, json={"model": "smollm2", "prompt": "Hello", "max_tokens": 2}, timeout=120)
    waited = time.monotonic() - left
    assert quick.status_code == 200
    # Finishing the abandoned stream would take ~1480 more tokens; the next request must not wait for that.
    remaining_time = (1500 - received) / rate
    assert waited < remaining_time / 4, (waited, remaining_time)


def test_completion_logprobs_are_the_models_distribution(client):
    answer = client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=5, temperature=0, logprobs=3)
    lp = answer.choices[0].logprobs
    assert len(lp.tokens) == answer.usage.completion_tokens == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert "".join(lp.tokens) == answer.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) == 3
        # greedy: the chosen token is the most likely one
        assert abs(max(top.values()) - logprob) < 1e-6 and token in top


def test_chat_logprobs_streamed_and_not(client):
    kwargs = dict(model="smollm2", messages=[{"role": "user", "content": "Say yes."}], max_tokens=4, temperature=0,
                  logprobs=True, top_logprobs=2)
    answer = client.chat.completions.create(**kwargs)
    content = answer.choices[0].logprobs.content
    assert "".join(c.token for c in content) == answer.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 and bytes(c.bytes).decode() == c.token for c in content)
    streamed = [c for chunk in client.chat.completions.create(stream=True, **kwargs)
                if chunk.choices and chunk.choices[0].logprobs for c in chunk.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    plain = client.chat.completions.create(**{**kwargs, "logprobs": False})
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("model, prompt", [("smollm2", [49152]), ("smollm2", [-1]), ("smollm2", [1, 2, 10**12]),
                                           ("gemma", [262144])])
def test_prompt_token_ids_outside_the_vocabulary_are_400(client, text_server, model, prompt):
    """They used to reach llama_decode and come back a 500 (issue 13 §5)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=prompt, max_tokens=2)
    error = info.value.response.json()["error"]
    assert error["param"] == "prompt" and error["type"] == "invalid_request_error" and "token ids" in error["message"]
    assert client.completions.create(model=model, prompt=[1, 2, 3], max_tokens=2).usage.prompt_tokens == 3
    assert httpx.get(text_server.url + "/health", timeout=10).status_code == 200


def test_the_stop_list_is_bounded_with_a_400(client, text_server):
    too_many = httpx.post(text_server.url + "/v1/completions", timeout=30, json={
        "model": "smollm2", "prompt": "1, 2,", "max_tokens": 2, "stop_words": [f"s{i}" for i in range(17)]})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] in ("stop", "stop_words")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       stop=["x" * 257])
    assert info.value.response.json()["error"]["param"] == "stop"
    at_limit = client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=8, temperature=0,
                                         stop=[" 5"] + [(f"{i}," * 256)[:256] for i in range(15)])
    assert at_limit.choices[0].finish_reason == "stop" and " 5" not in at_limit.choices[0].text
