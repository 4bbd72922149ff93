"""End to end: POST /v1/rerank (and /v1/reranking) on a real `nexa server`, with httpx
(the openai SDK has no rerank call; Jina's, Cohere's and llama-server's clients post this JSON).

Served: the synthetic bag-of-words ONNX cross-encoder (through fastembed; its scores mean
something, so relevant documents must come first) and the MiniLM GGUF reranker with a random
head (through llama.cpp rank pooling; its answers are compared with the same engine in-process).
No real cross-encoder ships in any package here: tests/synth/cross_encoder.py says why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import Server, metric, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

QUERY = "What is the capital of France?"
DOCS = ["The cat sleeps on the sofa.", "Paris is the capital of France.", "Python is a programming language.",
        "Berlin is a large city in Germany."]


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> Path:
    from tests.synth.cross_encoder import onnx_cross_encoder

    return onnx_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from tests.synth.cross_encoder import minilm_reranker_gguf

    return minilm_reranker_gguf()


@pytest.fixture(scope="module")
def server(tmp_path_factory, onnx_folder: Path, gguf_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rerank")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "bow-reranker", "aliases": ["rerank-default"], "type": "RERANK", "format": "onnx",
         "source": str(onnx_folder), "preload": True, "embed_batch_wait_ms": 50,
         "options": {"max_documents": 20, "max_document_chars": 300}},
        {"name": "minilm-reranker", "type": "RERANK", "format": "gguf", "source": str(gguf_path), "nctx": 512,
         "preload": True},
    ])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


def post(server: Server, path: str = "/v1/rerank", **body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_relevant_documents_come_first(server):
    answer = post(server, model="bow-reranker", query=QUERY, documents=DOCS).json()
    assert [r["index"] for r in answer["results"]][0] == 1
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == len(DOCS)
    assert answer["model"] == "bow-reranker" and answer["object"] == "list" and answer["id"].startswith("rerank-")
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 4 * 4
    assert "document" not in answer["results"][0]


def test_top_n_return_documents_objects_and_the_alias(server):
    documents = [{"text": d} for d in DOCS]
    answer = post(server, "/v1/reranking", model="rerank-default", query="python programming", documents=documents,
                  top_n=2, return_documents=True).json()
    assert len(answer["results"]) == 2
    assert answer["results"][0] == {**answer["results"][0], "index": 2, "document": {"text": DOCS[2]}}
    assert answer["results"][1]["document"]["text"] == DOCS[answer["results"][1]["index"]]


def test_the_first_rerank_model_serves_requests_without_a_model(server):
    answer = post(server, query=QUERY, documents=DOCS).json()
    assert answer["model"] == "bow-reranker" and answer["results"][0]["index"] == 1


def test_gguf_reranker_answers_the_engines_own_scores(server, gguf_path):
    from backends.llama_rerank import LlamaRerankBackend
    from schemas.manifest import ModelSpec

    answer = post(server, model="minilm-reranker", query=QUERY, documents=DOCS).json()
    served = {r["index"]: r["relevance_score"] for r in answer["results"]}
    backend = LlamaRerankBackend.load(ModelSpec(name="x", type="RERANK", format="gguf", source=str(gguf_path),
                                                nctx=512, n_threads=1), gguf_path)
    try:
        local = backend.rerank(QUERY, DOCS)
    finally:
        backend.close()
    assert np.allclose([served[i] for i in range(len(DOCS))], local.scores, atol=1e-3)
    assert answer["usage"]["prompt_tokens"] == local.prompt_tokens


@pytest.mark.parametrize("body, param", [
    ({"documents": DOCS}, "query"),
    ({"query": QUERY}, "documents"),
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": [1, 2]}, "documents"),
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": ["a"] * 21}, "documents"),
    ({"query": QUERY, "documents": ["a", "b" * 301]}, "documents[1]"),
    ({"query": "q" * 301, "documents": ["a"]}, "query"),
])
def test_bad_requests_are_400s_naming_the_field(server, body, param):
    calls = metric(server.url, "nexa_rerank_batch_requests_count", model="bow-reranker")
    response = post(server, model="bow-reranker", **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    # refused before the model's queue: no engine call was made for it
    assert metric(server.url, "nexa_rerank_batch_requests_count", model="bow-reranker") == calls


def test_concurrent_requests_are_merged_and_each_gets_its_own_answer(server):
    queries = [QUERY, "python programming", "a large city in germany", "the cat sleeps"] * 4
    alone = {q: post(server, model="bow-reranker", query=q, documents=DOCS).json()["results"] for q in set(queries)}
    before = metric(server.url, "nexa_rerank_batch_requests_count", model="bow-reranker")

    async def run() -> list[dict]:
        async with httpx.AsyncClient(timeout=120) as client:
            responses = await asyncio.gather(*[
                client.post(server.url + "/v1/rerank", json={"model": "bow-reranker", "query": q, "documents": DOCS})
                for q in queries])
        return [r.json() for r in responses]

    answers = asyncio.run(run())
    for query, answer in zip(queries, answers):
        assert [r["index"] for r in answer["results"]] == [r["index"] for r in alone[query]]
        assert np.allclose([r["relevance_score"] for r in answer["results"]],
                           [r["relevance_score"] for r in alone[query]], atol=1e-5)
    calls = metric(server.url, "nexa_rerank_batch_requests_count", model="bow-reranker") - before
    assert calls < len(queries)  # some requests shared an engine call


def test_openapi_document_lists_both_routes(server):
    document = httpx.get(server.url + "/openapi.json", timeout=30).json()
    for path in ("/v1/rerank", "/v1/reranking"):
        operation = document["paths"][path]["post"]
        assert "RerankRequest" in str(operation["requestBody"]) and "RerankResponse" in str(operation["responses"])
    assert "/v1/audio/speech" not in document["paths"]  # no voice is served here
