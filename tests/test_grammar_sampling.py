"""Candidate-first grammar sampling (backends/grammar_sampling.py) on the real SmolLM2 and Gemma 3.

Greedy decoding must give the same tokens, one by one, as llama-cpp-python's chain with the grammar
inside (the reference, `candidate_first = False`): JSON mode, a json_schema the model's own choices
break (so the resampling branch runs), and a forced tool call, alone (`parallel: 1`) and batched
(`parallel: 2`). Logprobs come from the model's logits, before the grammar, as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.base import ChatOptions, SamplingParams

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ASK = [{"role": "user", "content": "Describe the city of Lyon as a JSON object: name, country, population."}]
COLOR = {"type": "json_schema", "json_schema": {"name": "pick", "strict": True, "schema": {
    "type": "object", "properties": {"colour": {"type": "string", "enum": ["zq-violet", "xk-amber"]},
                                     "count": {"type": "integer"}},
    "required": ["colour", "count"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
CASES = {
    "json_object": (ASK, ChatOptions(response_format={"type": "json_object"})),
    "json_schema": ([{"role": "user", "content": "Pick a colour and a count, as JSON."}], ChatOptions(response_format=COLOR)),
    "tool_call": ([{"role": "user", "content": "What is the weather in Paris?"}],
                  ChatOptions(tools=[WEATHER], tool_choice="required")),
}


def _load(path: Path, name: str, parallel: int):
    from backends.registry import backend_for
    from schemas.manifest import ModelSpec

    spec = ModelSpec(name=name, source=name, nctx=1024, n_threads=2, parallel=parallel, prompt_cache=0)
    return backend_for(spec).load(spec, path)


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def backends(request, smollm2_path: Path, gemma_path: Path):
    """(alone, batched) engines of one model."""
    path = smollm2_path if request.param == "smollm2" else gemma_path
    alone = _load(path, request.param, 1)
    batched = _load(path, request.param, 2)
    yield alone, batched
    batched.close()
    alone.close()


def _run(backend, case: str, candidate_first: bool, max_tokens: int = 40, repeat_penalty: float = 1.0
         ) -> tuple[list, list]:
    """(sampled tokens with their logprobs, the deltas' text/finish/tool calls) of one greedy chat."""
    from backends.llama_batch import BatchedLlamaBackend

    target = backend.engine if isinstance(backend, BatchedLlamaBackend) else backend
    target.candidate_first = candidate_first
    sampled: list = []
    inner = backend.sample_tokens

    def recording(*args, **kwargs):
        for item in inner(*args, **kwargs):
            token, logprob = item
            sampled.append((token, logprob.logprob if logprob else None,
                            [(t, round(p, 4)) for t, p in logprob.top] if logprob else None))
            yield item

    backend.sample_tokens = recording
    try:
        messages, options = CASES[case]
        params = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=2, seed=0,
                                repeat_penalty=repeat_penalty)
        deltas = list(backend.chat(messages, params, lambda: False, options))
    finally:
        del backend.sample_tokens
        target.candidate_first = True
    shown = [(d.text, d.finish_reason, d.tool_calls and [c["function"] for c in d.tool_calls]) for d in deltas]
    return sampled, shown


# repeat_penalty 1.0 (the default): llama.cpp builds the first pick's candidates; with a penalty numpy does
@pytest.mark.parametrize("case, repeat_penalty", [(case, 1.0) for case in CASES] + [("json_schema", 1.3)])
@pytest.mark.parametrize("engine", ["alone", "batched"])
def test_greedy_output_equals_the_grammar_in_the_chain(backends, case, engine, repeat_penalty, monkeypatch):
    from backends.grammar_sampling import CandidateFirstSampler

    backend = backends[0] if engine == "alone" else backends[1]
    checks = {"allowed": 0, "rejected": 0}
    allows = CandidateFirstSampler.allows

    def counting(self, token):
        ok = allows(self, token)
        checks["allowed" if ok else "rejected"] += 1
        return ok

    monkeypatch.setattr(CandidateFirstSampler, "allows", counting)
    # Both runs below reuse this run's prompt KV and evaluate only the prompt's last token again (two
    # tokens, so the context holds more than the prompt and `Llama.generate` re-evaluates it): logits of a
    # prompt prefilled in one batch differ slightly from a re-evaluated last token's (llama.cpp's numerics
    # across batch shapes), enough to move a near tie.
    _run(backend, case, candidate_first=False, max_tokens=2)
    checks.update(allowed=0, rejected=0)
    reference = _run(backend, case, candidate_first=False, repeat_penalty=repeat_penalty)
    assert checks == {"allowed": 0, "rejected": 0}  # the reference never went through the new sampler
    fast = _run(backend, case, candidate_first=True, repeat_penalty=repeat_penalty)
    assert fast == reference
    tokens = len(fast[0])
    assert tokens >= 2 and checks["allowed"] + checks["rejected"] >= tokens  # a check per sampled token
    if case == "json_schema":  # the model would write other colours: the resampling branch ran
        assert checks["rejected"] >= 1


def test_alone_and_batched_agree_under_a_grammar(backends):
    alone, batched = backends
    assert _run(alone, "tool_call", True) == _run(batched, "tool_call", True)


def test_sampled_output_keeps_to_the_grammar(backends):
    """At temperature 1 with top-k off, the chosen token is checked and replaced when the grammar refuses
    it: every answer is valid JSON of the schema's shape."""
    alone, batched = backends
    for backend in (alone, batched):
        for seed in range(3):
            params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=60, seed=seed)
            text = "".join(d.text for d in backend.chat(CASES["json_schema"][0], params, lambda: False,
                                                        ChatOptions(response_format=COLOR)))
            answer = json.loads(text)
            assert answer["colour"] in ("zq-violet", "xk-amber") and isinstance(answer["count"], int)
