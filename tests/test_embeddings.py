"""The embedding backends in-process: real engines, real all-MiniLM-L6-v2 files.

The ONNX model comes from the catalog (package index wheels); the GGUF one is
converted from the fp32 safetensors of the same model (tests/synth/bert_gguf.py),
so the two engines can be checked against each other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from backends.embeddings import EmbeddingBackend, l2_normalize, special_frame
from backends.errors import BackendError, LoadError
from backends.registry import ENGINES
from schemas.embeddings import EmbeddingRequest
from schemas.manifest import ModelFormat, ModelSpec, ModelType
from tests.conftest import fetch_catalog
from tests.synth.bert_gguf import minilm_gguf, read_safetensors

pytestmark = pytest.mark.timeout(300)

SENTENCES = ["A man is eating food.", "A man eats something.", "The stock market fell sharply."]


def spec(name: str, path: Path, fmt: str, **extra) -> ModelSpec:
    return ModelSpec(name=name, source=str(path), type="TEXT_EMBEDDING", format=fmt, **extra)


@pytest.fixture(scope="module")
def onnx_dir() -> Path:
    return fetch_catalog("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return minilm_gguf()


@pytest.fixture(scope="module")
def onnx(onnx_dir: Path):
    from backends.fastembed import FastembedBackend

    backend = FastembedBackend.load(spec("minilm", onnx_dir, "onnx"), onnx_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def gguf(gguf_path: Path):
    from backends.llama_embed import LlamaEmbedBackend

    backend = LlamaEmbedBackend.load(spec("minilm-gguf", gguf_path, "gguf", nctx=512), gguf_path)
    yield backend
    backend.close()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=1)


# -- registry and helpers --------------------------------------------------------


def test_registry_serves_both_formats():
    onnx_cls = ENGINES[(ModelType.TEXT_EMBEDDING, ModelFormat.onnx)].load_class()
    gguf_cls = ENGINES[(ModelType.TEXT_EMBEDDING, ModelFormat.gguf)].load_class()
    assert onnx_cls.__name__ == "FastembedBackend" and gguf_cls.__name__ == "LlamaEmbedBackend"
    assert onnx_cls.capabilities == gguf_cls.capabilities == frozenset({"embed"})


def test_special_frame_and_fit():
    assert special_frame([101, 7, 8, 102], [7, 8]) == ([101], [102])
    assert special_frame([1, 7], [7]) == ([1], [])
    backend = EmbeddingBackend.__new__(EmbeddingBackend)
    backend.prefix, backend.suffix, backend.max_tokens, backend.n_vocab = [101], [102], 5, 200
    assert backend.frame_ids([7, 8]) == [101, 7, 8, 102]
    assert backend.frame_ids([101, 7, 8, 102]) == [101, 7, 8, 102]
    assert backend.fit(0, [101, 1, 2, 3, 4, 5, 102], truncate=True) == [101, 1, 2, 3, 102]
    with pytest.raises(BackendError, match="7 tokens long, more than this model's maximum of 5"):
        backend.fit(3, [101, 1, 2, 3, 4, 5, 102], truncate=False)
    with pytest.raises(BackendError, match="outside this model's vocabulary"):
        backend.check_ids(0, [5, 500])


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("value, expected", [
    ("hi", ["hi"]),
    (["a", "b"], ["a", "b"]),
    ([5, 6], [[5, 6]]),
    ([[5], [6, 7]], [[5], [6, 7]]),
])
def test_request_inputs(value, expected):
    assert EmbeddingRequest(input=value).inputs() == expected


@pytest.mark.parametrize("value", ["", [], [""], [[]], [1, "a"], True, [True], [[1.5]], [-1], {"a": 1}])
def test_request_rejects_bad_input(value):
    with pytest.raises(ValueError):
        EmbeddingRequest(input=value)


def test_safetensors_reader(onnx_dir: Path):
    from gateway.manifest import hub
    from tests.synth.bert_gguf import SAFETENSORS_SHA256, SAFETENSORS_SOURCE

    weights = hub.fetch(ModelSpec(name="st", source=SAFETENSORS_SOURCE, sha256=SAFETENSORS_SHA256))
    tensors = read_safetensors(Path(weights))
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert tensors["encoder.layer.5.output.dense.weight"].dtype == np.float32


# -- ONNX through fastembed ------------------------------------------------------


def test_onnx_raw_vectors_and_normalize(onnx):
    raw = onnx.embed(SENTENCES, normalize=False)
    unit = onnx.embed(SENTENCES, normalize=True)
    norms = np.linalg.norm(raw.vectors, axis=1)
    assert raw.vectors.shape == (3, 384) and raw.vectors.dtype == np.float32
    assert np.all(norms > 2.0), "the engine must hand back unnormalized mean-pooled vectors"
    assert np.allclose(np.linalg.norm(unit.vectors, axis=1), 1.0, atol=1e-3)
    assert np.allclose(unit.vectors, raw.vectors / norms[:, None], atol=1e-6)
    sims = cosine(raw.vectors[[0]], raw.vectors)
    assert sims[1] > 0.6 > 0.2 > sims[2], sims


def test_onnx_token_counts_are_the_tokenizers(onnx, onnx_dir: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    expected = sum(len(tok.encode(s).ids) for s in SENTENCES)
    assert onnx.embed(SENTENCES).prompt_tokens == expected == 23


def test_onnx_token_ids_match_text(onnx):
    ids = [onnx.tokenizer.encode(s, add_special_tokens=False).ids for s in SENTENCES]
    framed = [onnx.tokenizer.encode(s).ids for s in SENTENCES]
    text = onnx.embed(SENTENCES)
    assert np.allclose(onnx.embed(ids).vectors, text.vectors, atol=1e-5)
    assert np.allclose(onnx.embed(framed).vectors, text.vectors, atol=1e-5)
    assert onnx.embed(ids).prompt_tokens == text.prompt_tokens


def test_onnx_truncation(onnx):
    long = ["word " * 600]
    assert onnx.embed(long, truncate=True).prompt_tokens == 512
    with pytest.raises(BackendError, match=r"input\[0\] is 602 tokens long.*maximum of 512"):
        onnx.embed(long, truncate=False)
    with pytest.raises(BackendError, match=r"input\[1\] is 602"):
        onnx.embed([[2773] * 5, [2773] * 600], truncate=False)


class Counting:
    """Wraps an engine object and counts calls to one of its methods."""

    def __init__(self, inner, method: str):
        self._inner, self._method, self.calls = inner, method, 0

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_onnx_batch_is_one_engine_call_and_one_tokenization(onnx):
    session, tokenizer = onnx.engine.model.model, onnx._unpadded
    onnx.engine.model.model = runs = Counting(session, "run")
    onnx._unpadded = encodes = Counting(tokenizer, "encode_batch")
    try:
        out = onnx.embed([f"sentence number {i}" for i in range(16)])
        assert out.vectors.shape == (16, 384)
        assert runs.calls == 1 and encodes.calls == 1, "texts are tokenized once: counted ids are the ids run"
        onnx.embed([[2773, 2773]] * 16)
        assert runs.calls == 2 and encodes.calls == 1
        # A request too big to pad into one run is split into consecutive chunks, same answer.
        onnx.max_batch_tokens = 40
        chunked = onnx.embed([f"sentence number {i}" for i in range(16)])
        assert runs.calls == 2 + 2  # 16 x 5 tokens, 8 per chunk of 40
        assert np.allclose(chunked.vectors, out.vectors, atol=1e-5)
        assert chunked.prompt_tokens == out.prompt_tokens
    finally:
        onnx.engine.model.model = session
        onnx._unpadded = tokenizer
        onnx.max_batch_tokens = 8192


def test_onnx_text_path_equals_fastembeds_own(onnx):
    """Our single tokenization + ONNX run gives fastembed's own `TextEmbedding.embed` vectors."""
    theirs = np.stack(list(onnx.engine.embed(SENTENCES, batch_size=len(SENTENCES))))
    assert np.array_equal(onnx.embed(SENTENCES).vectors, theirs)


@pytest.mark.parametrize("which", ["onnx", "gguf"])
def test_embed_many_answers_each_request_as_alone(which, request):
    backend = request.getfixturevalue(which)
    long = "word " * 600
    requests = [(SENTENCES, True), (["one more sentence"], True), (["fine", long], False), ([long], True),
                ([[2773, 2773, 2773]], True), ([[2773] * 700], False)]
    merged = backend.embed_many(requests)
    assert len(merged) == len(requests)
    for (inputs, truncate), got in zip(requests, merged):
        try:
            alone = backend.embed(inputs, truncate=truncate)
        except BackendError as exc:
            assert isinstance(got, BackendError) and str(got) == str(exc), "a bad request fails alone"
            continue
        assert got.prompt_tokens == alone.prompt_tokens
        assert got.vectors.shape == alone.vectors.shape
        # ONNX: only the padding differs (summation order); llama.cpp picks its matmul kernels by
        # batch shape, so one decode of several sequences differs from each alone by up to ~4e-4
        # (cosine 1 - 1e-7), exactly as a request of several inputs always has.
        assert np.allclose(got.vectors, alone.vectors, rtol=1e-5, atol=1e-6 if which == "onnx" else 1e-3)
        assert np.all(cosine(got.vectors, alone.vectors) > 1 - 1e-6)
    assert isinstance(merged[2], BackendError) and "input[1] is 602 tokens" in str(merged[2])
    assert merged[3].prompt_tokens == 512
    # Text the tokenizer cannot take (a lone surrogate) fails its own request only, never its batch-mates.
    broken, fine = backend.embed_many([(["a\ud800b"], True), (["one more sentence"], True)])
    assert isinstance(broken, Exception) and fine.prompt_tokens == merged[1].prompt_tokens


def test_chunks():
    from backends.fastembed import chunks

    assert chunks([5] * 4, 100) == [range(0, 4)]
    assert chunks([5, 5, 50, 5], 100) == [range(0, 2), range(2, 4)]
    assert chunks([200, 1], 100) == [range(0, 1), range(1, 2)]  # an input over budget still runs, alone


def test_onnx_bad_tokenizer_config_gets_a_shadow_folder(onnx_dir: Path, tmp_path: Path):
    from backends.fastembed import FastembedBackend

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json", "vocab.txt", "config.json"):
        shutil.copy(onnx_dir / name, folder / name)
    (folder / "model.onnx").symlink_to(onnx_dir / "model.onnx")
    config = json.loads((onnx_dir / "tokenizer_config.json").read_text())
    config["model_max_length"] = 1000000000000000019884624838656  # transformers' "unknown"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    backend = FastembedBackend.load(spec("shadow", folder, "onnx", options={"max_length": 128}), folder)
    try:
        assert backend.max_tokens == 128
        assert backend.embed(["word " * 300]).prompt_tokens == 128
        shadow = backend._shadow
        assert shadow is not None and shadow.exists()
        assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] > 10**20
    finally:
        backend.close()
    assert not shadow.exists()


def test_onnx_missing_tokenizer_is_a_load_error(tmp_path: Path, onnx_dir: Path):
    from backends.fastembed import FastembedBackend

    (tmp_path / "model.onnx").symlink_to(onnx_dir / "model.onnx")
    with pytest.raises(LoadError, match="tokenizer.json"):
        FastembedBackend.load(spec("x", tmp_path, "onnx"), tmp_path)


# -- GGUF through llama.cpp --------------------------------------------------------


def test_gguf_matches_onnx(gguf, onnx):
    g = gguf.embed(SENTENCES)
    o = onnx.embed(SENTENCES)
    assert g.vectors.shape == (3, 384)
    assert np.all(cosine(g.vectors, o.vectors) > 0.99)
    assert g.prompt_tokens == o.prompt_tokens == 23
    assert np.allclose(np.linalg.norm(gguf.embed(SENTENCES, normalize=True).vectors, axis=1), 1.0, atol=1e-3)


def test_gguf_token_ids_and_truncation(gguf, onnx):
    ids = [onnx.tokenizer.encode(s, add_special_tokens=False).ids for s in SENTENCES]
    assert np.allclose(gguf.embed(ids).vectors, gguf.embed(SENTENCES).vectors, atol=1e-4)
    assert gguf.embed(["word " * 600]).prompt_tokens == 512
    with pytest.raises(BackendError, match="maximum of 512"):
        gguf.embed(["word " * 600], truncate=False)


def test_gguf_batch_is_one_decode(gguf):
    ctx = gguf.llm._ctx
    original = ctx.decode
    calls = []
    ctx.decode = lambda batch: (calls.append(batch.batch.n_tokens), original(batch))[1]
    try:
        out = gguf.embed([f"sentence number {i}" for i in range(16)])
        assert out.vectors.shape == (16, 384)
        assert len(calls) == 1 and calls[0] == out.prompt_tokens
        gguf.embed(["word " * 300, "word " * 300])  # 2 x 302 tokens > n_ctx 512: two decodes
        assert len(calls) == 3
    finally:
        ctx.decode = original


def test_gguf_batch_order_independent(gguf):
    together = gguf.embed(SENTENCES).vectors
    alone = np.stack([gguf.embed([s]).vectors[0] for s in SENTENCES])
    assert np.all(cosine(together, alone) > 0.9999)


def test_gguf_pooling_override_and_fallback(gguf_path: Path, gguf):
    from backends.llama_embed import LlamaEmbedBackend

    mean = gguf.embed(SENTENCES).vectors
    fallback = LlamaEmbedBackend.load(spec("none", gguf_path, "gguf", nctx=512, options={"pooling_type": 0}), gguf_path)
    try:
        assert fallback.info()["pooling"] == "none"
        assert np.all(cosine(fallback.embed(SENTENCES).vectors, mean) > 0.9999)
    finally:
        fallback.close()
    cls_pool = LlamaEmbedBackend.load(spec("cls", gguf_path, "gguf", nctx=512, options={"pooling": "cls"}), gguf_path)
    try:
        assert cls_pool.info()["pooling"] == "cls"
        assert np.all(cosine(cls_pool.embed(SENTENCES).vectors, mean) < 0.99)
    finally:
        cls_pool.close()
    with pytest.raises(LoadError, match="pooling must be"):
        LlamaEmbedBackend.load(spec("bad", gguf_path, "gguf", options={"pooling": "max"}), gguf_path)


def test_onnx_bad_options_and_garbage_model(onnx_dir: Path, tmp_path: Path):
    from backends.fastembed import FastembedBackend

    with pytest.raises(LoadError, match="max_length is 1024, but the model has 512 positions"):
        FastembedBackend.load(spec("x", onnx_dir, "onnx", options={"max_length": 1024}), onnx_dir)
    with pytest.raises(LoadError, match="pooling must be"):
        FastembedBackend.load(spec("x", onnx_dir, "onnx", options={"pooling": "max"}), onnx_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(onnx_dir / name, tmp_path / name)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(LoadError, match="fastembed could not load"):
        FastembedBackend.load(spec("x", tmp_path, "onnx"), tmp_path)
