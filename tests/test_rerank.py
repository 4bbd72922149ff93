"""The rerank engines in-process, on the synthetic models of tests/synth/cross_encoder.py.

No cross-encoder ships in any package on the index (shared/MODELS.md), so:
- ONNX (fastembed's TextCrossEncoder): a bag-of-words cross-encoder whose score
  means something (shared words), so ranking can be checked, and whose scores
  are compared with fastembed's own `TextCrossEncoder.rerank`;
- GGUF (llama.cpp rank pooling): MiniLM's real encoder with a random head, so
  the scores are compared with the same engine pair by pair, not with relevance.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GGML_NO_BACKTRACE", "1")

from backends.errors import BackendError, LoadError  # noqa: E402
from backends.registry import ENGINES  # noqa: E402
from backends.rerank import cut_pair  # noqa: E402
from schemas.manifest import ModelFormat, ModelSpec, ModelType  # noqa: E402

QUERY = "What is the capital of France?"
DOCS = ["The cat sleeps on the sofa.", "Paris is the capital of France.", "Python is a programming language.",
        "Berlin is a large city in Germany."]


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> Path:
    from tests.synth.cross_encoder import onnx_cross_encoder

    return onnx_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="module")
def onnx_backend(onnx_folder: Path):
    from backends.fastembed_rerank import FastembedRerankBackend

    spec = ModelSpec(name="ce", type="RERANK", format="onnx", source=str(onnx_folder), n_threads=1,
                     options={"max_documents": 8, "max_document_chars": 200})
    backend = FastembedRerankBackend.load(spec, onnx_folder)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def gguf_backend():
    from backends.llama_rerank import LlamaRerankBackend
    from tests.synth.cross_encoder import minilm_reranker_gguf

    path = minilm_reranker_gguf()
    spec = ModelSpec(name="ggr", type="RERANK", format="gguf", source=str(path), nctx=512, n_threads=2)
    backend = LlamaRerankBackend.load(spec, path)
    yield backend
    backend.close()


def test_registry_serves_both_formats():
    from backends.fastembed_rerank import FastembedRerankBackend
    from backends.llama_rerank import LlamaRerankBackend

    assert ENGINES[(ModelType.RERANK, ModelFormat.onnx)].load_class() is FastembedRerankBackend
    assert ENGINES[(ModelType.RERANK, ModelFormat.gguf)].load_class() is LlamaRerankBackend
    assert FastembedRerankBackend.capabilities == LlamaRerankBackend.capabilities == {"rerank"}


def test_cut_pair_keeps_the_query_and_cuts_the_document_first():
    assert cut_pair([1, 2], [3, 4, 5], 10) == ([1, 2], [3, 4, 5])
    assert cut_pair([1, 2], [3, 4, 5, 6, 7, 8], 5) == ([1, 2], [3, 4, 5])
    query, document = cut_pair(list(range(10)), list(range(10)), 8)
    assert (len(query), len(document)) == (4, 4)


# -- ONNX through fastembed -------------------------------------------------------------------

def test_onnx_ranks_the_document_that_shares_the_query_words_first(onnx_backend):
    result = onnx_backend.rerank(QUERY, DOCS)
    assert int(np.argmax(result.scores)) == 1
    assert onnx_backend.rerank("python programming", DOCS).scores.argmax() == 2
    assert onnx_backend.rerank("a large city in germany", DOCS).scores.argmax() == 3


def test_onnx_scores_are_fastembeds_own(onnx_backend):
    expected = list(onnx_backend.engine.rerank(QUERY, DOCS))
    assert np.allclose(onnx_backend.rerank(QUERY, DOCS).scores, expected, atol=1e-5)


def test_onnx_usage_counts_every_pair_token(onnx_backend):
    tokenizer = onnx_backend.tokenizer
    expected = sum(len(tokenizer.encode(QUERY, doc).ids) for doc in DOCS)
    assert onnx_backend.rerank(QUERY, DOCS).prompt_tokens == expected


def test_onnx_many_requests_in_one_call_get_what_they_get_alone(onnx_backend):
    alone = [onnx_backend.rerank(QUERY, DOCS), onnx_backend.rerank("python code", DOCS[:2])]
    merged = onnx_backend.rerank_many([(QUERY, DOCS), ("python code", DOCS[:2]), ("a query", ["x"] * 9)])
    for one, many in zip(alone, merged):
        assert np.allclose(one.scores, many.scores, atol=1e-5) and one.prompt_tokens == many.prompt_tokens
    assert isinstance(merged[2], BackendError) and merged[2].param == "documents"  # its own failure only


def test_onnx_small_chunks_give_the_same_scores(onnx_backend):
    whole = onnx_backend.rerank(QUERY, DOCS).scores
    onnx_backend.max_batch_tokens = 16  # one pair per ONNX run
    try:
        assert np.allclose(onnx_backend.rerank(QUERY, DOCS).scores, whole, atol=1e-5)
    finally:
        onnx_backend.max_batch_tokens = 8192


@pytest.mark.parametrize("query, documents, param", [
    ("", ["a"], "query"),
    ("q" * 201, ["a"], "query"),
    ("q", [], "documents"),
    ("q", ["a"] * 9, "documents"),
    ("q", ["a", "b" * 201], "documents[1]"),
])
def test_limits_are_400s_naming_the_field(onnx_backend, query, documents, param):
    with pytest.raises(BackendError) as err:
        onnx_backend.rerank(query, documents)
    assert err.value.param == param


def test_onnx_long_pairs_are_cut_to_the_model_maximum(onnx_backend):
    onnx_backend.tokenizer.enable_truncation(max_length=16)
    try:
        result = onnx_backend.rerank(QUERY, ["paris " * 30])
        assert result.prompt_tokens == 16
    finally:
        onnx_backend.tokenizer.enable_truncation(max_length=onnx_backend.max_tokens)


def test_onnx_folder_without_tokenizer_is_a_load_error(tmp_path, onnx_folder):
    from backends.fastembed_rerank import FastembedRerankBackend

    (tmp_path / "model.onnx").write_bytes((onnx_folder / "model.onnx").read_bytes())
    with pytest.raises(LoadError, match="tokenizer.json"):
        FastembedRerankBackend.load(ModelSpec(name="x", type="RERANK", format="onnx", source=str(tmp_path)), tmp_path)


# -- GGUF through llama.cpp rank pooling ------------------------------------------------------

def test_gguf_pairs_are_laid_out_as_llama_server_does(gguf_backend):
    llm = gguf_backend.llm
    cls, sep = llm.tokenize(b"", add_bos=True, special=False)  # BERT: [CLS] [SEP]
    pair = gguf_backend._pairs("capital of france", ["paris"])[0]
    query = llm.tokenize(b"capital of france", add_bos=False, special=False)
    document = llm.tokenize(b"paris", add_bos=False, special=False)
    assert pair == [cls, *query, sep, *document, sep]


def test_gguf_batched_scores_equal_one_pair_at_a_time(gguf_backend):
    together = gguf_backend.rerank(QUERY, DOCS).scores
    alone = np.array([gguf_backend.rerank(QUERY, [doc]).scores[0] for doc in DOCS])
    assert np.allclose(together, alone, atol=1e-3)
    assert len(set(np.round(together, 4))) == len(DOCS)  # a real score per pair, not a constant


def test_gguf_many_requests_in_one_call(gguf_backend):
    alone = gguf_backend.rerank("python code", DOCS[2:])
    merged = gguf_backend.rerank_many([(QUERY, DOCS), ("python code", DOCS[2:])])
    assert np.allclose(merged[1].scores, alone.scores, atol=1e-3)
    assert merged[1].prompt_tokens == alone.prompt_tokens


def test_gguf_long_pairs_are_cut(gguf_backend):
    result = gguf_backend.rerank(QUERY, ["paris " * 2000])
    assert result.prompt_tokens == gguf_backend.max_tokens
    assert np.isfinite(result.scores).all()


def test_gguf_without_a_classification_head_is_refused_before_llama_cpp_aborts():
    from backends.llama_rerank import LlamaRerankBackend
    from tests.synth.bert_gguf import minilm_gguf

    path = minilm_gguf()
    with pytest.raises(LoadError, match="no classification head"):
        LlamaRerankBackend.load(ModelSpec(name="x", type="RERANK", format="gguf", source=str(path)), path)
