"""The ONNX text backend on the tiny synthetic decoder (tests/synth/onnx_lm.py), without a server:
cache handling, decoding, sampling, stop sequences, cancellation and load errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from backends.base import ChatOptions, SamplingParams
from backends.errors import BackendError, LoadError
from schemas.manifest import ModelFormat, ModelSpec, ModelType

pytest.importorskip("onnx")
from backends.onnx_text import OnnxTextBackend, find_model  # noqa: E402
from backends.sampling import IncrementalDecoder, sample  # noqa: E402
from tests.synth.onnx_lm import tiny_onnx_lm, write_folder  # noqa: E402

pytestmark = pytest.mark.timeout(120)
NEVER = lambda: False  # noqa: E731
GREEDY = dict(temperature=0.0)


def spec_for(path: Path, **fields) -> ModelSpec:
    return ModelSpec(name="tiny", source=str(path), type=ModelType.NLP, format=ModelFormat.onnx, **fields)


def load(path: Path, **fields) -> OnnxTextBackend:
    return OnnxTextBackend.load(spec_for(path, **fields), path)


@pytest.fixture(scope="module")
def folder() -> Path:
    return tiny_onnx_lm()


@pytest.fixture(scope="module")
def model(folder) -> OnnxTextBackend:
    return load(folder)


def run(deltas) -> tuple[str, list, object]:
    deltas = list(deltas)
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].finish_reason
    return "".join(d.text for d in deltas), deltas, deltas[-1]


def test_greedy_follows_the_planted_rule_with_exact_usage(model):
    text, _, last = run(model.complete("Count: one", SamplingParams(max_tokens=12, **GREEDY), NEVER))
    assert text == " two three four five six seven eight nine ten one two three"
    assert (last.finish_reason, last.usage.prompt_tokens, last.usage.completion_tokens) == ("length", 3, 12)


def test_end_of_sequence_token_stops_and_is_not_counted(model):
    text, _, last = run(model.complete("colours: red", SamplingParams(max_tokens=50, **GREEDY), NEVER))
    assert text == " green blue"
    assert last.finish_reason == "stop" and last.usage.completion_tokens == 2 and last.stop_sequence is None


def test_cached_generation_matches_an_export_without_a_cache(model, tmp_path):
    """Same weights, no past_key_values: the backend recomputes the whole sequence each step.
    Logits must agree step by step, which fails if positions, mask or cache are fed wrongly."""
    plain = load(write_folder(tmp_path / "nopast", with_past=False))
    assert not plain.layout.past and len(model.layout.past) == 4
    tokens = model.tokenize("Count: one, two. colours: red")
    past, cached = model._empty_past(), []
    for step in range(6):
        logits, past = model._forward(tokens, len(tokens) if step == 0 else 1, past)
        full, _ = plain._forward(tokens, len(tokens), {})
        np.testing.assert_allclose(logits, full, atol=1e-4)
        cached.append(logits)
        tokens = tokens + [int(np.argmax(logits))]
    params = SamplingParams(max_tokens=8, temperature=0.8, seed=3)
    assert run(plain.complete("Count: one", params, NEVER))[0] == run(model.complete("Count: one", params, NEVER))[0]


def test_chat_uses_the_template_and_its_tokens(model):
    prompt = model.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                      "<|im_start|>assistant\n")
    hello = [{"role": "user", "content": "hello"}]
    text, _, last = run(model.chat(hello, SamplingParams(max_tokens=5, **GREEDY), NEVER))
    assert text == " one two three four five"
    assert last.usage.prompt_tokens == len(model.tokenize(model.render_chat(hello), special=False)) == 9
    assert model.tokenize("<|im_start|>", special=False) == [model.tokenizer.token_to_id("<|im_start|>")]


def test_stop_sequence_across_tokens_never_leaks_while_streaming(model):
    messages = [{"role": "user", "content": "hello"}]
    params = SamplingParams(max_tokens=12, stop=["ee fo", "zzz"], **GREEDY)
    text, deltas, last = run(model.chat(messages, params, NEVER))
    assert text == " one two thr"
    assert last.finish_reason == "stop" and last.stop_sequence == "ee fo" and last.usage.completion_tokens == 4
    assert all("ee" not in d.text for d in deltas)  # " three" was held back until the stop was decided
    # A stop sequence that only starts to match is released at the end.
    text, _, last = run(model.chat(messages, SamplingParams(max_tokens=3, stop=[" threeX"], **GREEDY), NEVER))
    assert text == " one two three" and last.finish_reason == "length"


def test_cancellation_is_checked_between_tokens(model):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    text, _, last = run(model.complete("Count: one", SamplingParams(max_tokens=20, **GREEDY), cancelled))
    assert last.finish_reason == "cancelled"
    assert last.usage.completion_tokens == 3 and text == " two three four"


def test_seeded_sampling_repeats_and_different_seeds_differ(model):
    def draw(seed: int) -> str:
        return run(model.complete("Count: one", SamplingParams(max_tokens=10, temperature=1.0, seed=seed), NEVER))[0]

    assert draw(7) == draw(7)
    assert len({draw(seed) for seed in range(4)}) > 1
    top1 = SamplingParams(max_tokens=6, temperature=1.0, top_k=1, seed=5)
    assert run(model.complete("Count: one", top1, NEVER))[0] == " two three four five six seven"


def test_penalties_steer_away_from_repeats(model):
    messages = [{"role": "user", "content": "hello"}]
    plain = run(model.chat(messages, SamplingParams(max_tokens=11, **GREEDY), NEVER))[0]
    assert plain.endswith(" ten one")
    penalised = run(model.chat(messages, SamplingParams(max_tokens=11, frequency_penalty=5.0, **GREEDY), NEVER))[0]
    assert penalised.startswith(" one two three four five six seven eight nine ten")
    assert not penalised.endswith(" ten one")


def test_sample_filters():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    base = dict(temperature=1.0, top_k=0, min_p=0.0)
    assert sample(logits, SamplingParams(**{**base, "temperature": 0.0}), [], rng) == 0
    assert {sample(logits, SamplingParams(**base, top_p=0.75), [], rng) for _ in range(200)} == {0, 1}
    assert {sample(logits, SamplingParams(**{**base, "top_k": 3}), [], rng) for _ in range(300)} == {0, 1, 2}
    assert {sample(logits, SamplingParams(**{**base, "min_p": 0.5}), [], rng) for _ in range(200)} == {0, 1}
    # repeat_penalty divides a positive logit: token 0 falls below token 1
    assert sample(np.array([2.0, 1.5, 0.0]), SamplingParams(temperature=0.0, repeat_penalty=2.0), [0], rng) == 1
    assert sample(np.array([2.0, 1.5, 0.0]), SamplingParams(temperature=0.0, presence_penalty=1.0), [0], rng) == 1


def test_incremental_decoding_never_splits_a_character(model):
    text = "héllo wörld 日本 😀 one"
    ids = model.tokenize(text)
    assert len(ids) > len(text.split())  # multi-byte characters span several byte tokens
    detok = IncrementalDecoder(model.tokenizer, model.tokenize("Count:"))
    pieces = [detok.push(token) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + detok.flush() == text


def test_token_id_prompts_and_bad_requests(model):
    ids = model.tokenize("Count: one")
    assert run(model.complete(ids, SamplingParams(max_tokens=2, **GREEDY), NEVER))[0] == " two three"
    with pytest.raises(BackendError, match="token ids"):
        model.complete([10**9], SamplingParams(), NEVER)
    with pytest.raises(BackendError, match="empty"):
        model.complete("", SamplingParams(), NEVER)
    with pytest.raises(BackendError, match="does not fit"):
        model.complete(" one" * 600, SamplingParams(), NEVER)
    with pytest.raises(BackendError, match="tool calling"):
        model.chat([{"role": "user", "content": "x"}], SamplingParams(), NEVER,
                   ChatOptions(tools=[{"type": "function", "function": {"name": "f"}}]))
    with pytest.raises(BackendError, match="response_format"):
        model.chat([{"role": "user", "content": "x"}], SamplingParams(), NEVER, ChatOptions(response_format={"type": "json_object"}))
    # tool_choice "none" drops the tools and answers as text
    text, _, _ = run(model.chat([{"role": "user", "content": "x"}], SamplingParams(max_tokens=2, **GREEDY), NEVER,
                                ChatOptions(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none")))
    assert text == " one two"


def test_template_errors_and_template_files(folder, tmp_path):
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    (copy / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | tojson }}\n{% endfor %}")
    model = load(copy, nctx=64)
    assert model.n_ctx == 64
    assert model.render_chat([{"role": "user", "content": "é"}]) == '[user] "é"\n'
    with pytest.raises(BackendError, match="first message must be from the user"):
        model.render_chat([{"role": "assistant", "content": "x"}])


def test_model_files_are_found_in_the_usual_layouts(folder, tmp_path):
    community = tmp_path / "community"
    (community / "onnx").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        shutil.copy(folder / name, community / name)
    shutil.copy(folder / "model.onnx", community / "onnx" / "model_quantized.onnx")
    assert find_model(community) == (community / "onnx" / "model_quantized.onnx", community)
    shutil.copy(folder / "model.onnx", community / "onnx" / "model_fp16.onnx")
    with pytest.raises(LoadError, match="2 .onnx files"):
        find_model(community)
    model = load(community / "onnx" / "model_fp16.onnx")  # a file named directly (`file:` in a manifest)
    assert run(model.complete("colours: red", SamplingParams(**GREEDY), NEVER))[0] == " green blue"


def test_broken_folders_fail_to_load_with_a_reason(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="no .onnx file"):
        load(empty)
    garbage = Path(shutil.copytree(folder, tmp_path / "garbage"))
    (garbage / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(LoadError, match="onnxruntime could not load model.onnx"):
        load(garbage)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(folder / "model.onnx", no_tokenizer / "model.onnx")
    with pytest.raises(LoadError, match="no tokenizer.json"):
        load(no_tokenizer)
    not_lm = Path(shutil.copytree(folder, tmp_path / "not_lm"))
    _write_identity_graph(not_lm / "model.onnx")
    with pytest.raises(LoadError, match="not a text-generation export"):
        load(not_lm)
    with pytest.raises(LoadError, match="unknown options for an ONNX text model: n_batch"):
        load(folder, options={"n_batch": 8})


def _write_identity_graph(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["last_hidden_state"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.INT64, ["b", "s"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
