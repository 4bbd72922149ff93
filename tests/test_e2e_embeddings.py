"""End to end: POST /v1/embeddings on a real `nexa server`, with the official openai
SDK (which asks for base64 by default and decodes it) and with httpx.

Served: all-MiniLM-L6-v2 as ONNX (catalog, through fastembed), the same model
converted to GGUF (through llama.cpp), and the ONNX one again with
`options.normalize: true`.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import Server, fetch_catalog, metric, write_manifest
from tests.synth.bert_gguf import minilm_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PARAPHRASES = ["A man is eating food.", "A man eats something.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return minilm_gguf()


@pytest.fixture(scope="module")
def onnx_dir() -> Path:
    return fetch_catalog("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def server(tmp_path_factory, gguf_path: Path, onnx_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("embeddings")
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "all-minilm-l6-v2", "aliases": ["text-embedding-3-small"], "source": "all-minilm-l6-v2",
         "preload": True},
        {"name": "minilm-gguf", "source": str(gguf_path), "type": "TEXT_EMBEDDING", "format": "gguf", "nctx": 512,
         "preload": True},
        {"name": "minilm-unit", "source": "all-minilm-l6-v2", "options": {"normalize": True}, "preload": True},
    ])
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(server: Server, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/embeddings", json=body, timeout=120)


def vectors(answer: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in answer["data"]], dtype=np.float32)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def tokenizer(onnx_dir: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_openai_sdk_base64_default_and_semantics(client):
    answer = client.embeddings.create(model="all-minilm-l6-v2", input=PARAPHRASES)
    assert answer.object == "list" and answer.model == "all-minilm-l6-v2"
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert all(d.object == "embedding" and len(d.embedding) == 384 for d in answer.data)
    a, b, c = (np.array(d.embedding) for d in answer.data)
    assert cos(a, b) > 0.6 and cos(a, c) < 0.2, (cos(a, b), cos(a, c))
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0


def test_openai_alias_float_equals_base64(client, server):
    as_float = client.embeddings.create(model="text-embedding-3-small", input="hello world", encoding_format="float")
    raw = post(server, model="text-embedding-3-small", input="hello world", encoding_format="base64").json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,)
    assert np.array_equal(np.array(as_float.data[0].embedding, dtype=np.float32), decoded)
    sdk_default = client.embeddings.create(model="text-embedding-3-small", input="hello world")  # base64 on the wire
    assert np.array_equal(np.array(sdk_default.data[0].embedding, dtype=np.float32), decoded)


def test_normalize_flag_and_default(server):
    default = vectors(post(server, input=PARAPHRASES[:2]).json())
    unit = vectors(post(server, input=PARAPHRASES[:2], normalize=True).json())
    assert np.all(np.linalg.norm(default, axis=1) > 2.0), "SERVER-API: normalize defaults to false"
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-3)
    assert np.allclose(unit, default / np.linalg.norm(default, axis=1, keepdims=True), atol=1e-5)
    model_default = vectors(post(server, model="minilm-unit", input=PARAPHRASES[:2]).json())
    assert np.allclose(np.linalg.norm(model_default, axis=1), 1.0, atol=1e-3)
    explicit = vectors(post(server, model="minilm-unit", input=PARAPHRASES[:2], normalize=False).json())
    assert np.all(np.linalg.norm(explicit, axis=1) > 2.0)


def test_batch_keeps_order_and_matches_single_requests(server):
    texts = [f"Sentence {i}: {word}" for i, word in enumerate(["apple", "river", "engine", "violin", "desert"])]
    answer = post(server, input=texts, normalize=True).json()
    assert [d["index"] for d in answer["data"]] == list(range(5))
    batch = vectors(answer)
    for i, text in enumerate(texts):
        single = vectors(post(server, input=text, normalize=True).json())[0]
        assert np.allclose(batch[i], single, atol=1e-5)


def test_usage_is_the_tokenizers_real_count(server, onnx_dir: Path):
    tok = tokenizer(onnx_dir)
    texts = ["Hello, world!", "Embeddings are vectors of floats.", "supercalifragilistic"]
    expected = sum(len(tok.encode(t).ids) for t in texts)
    usage = post(server, input=texts).json()["usage"]
    assert usage == {"prompt_tokens": expected, "total_tokens": expected}
    assert post(server, model="minilm-gguf", input=texts).json()["usage"]["prompt_tokens"] == expected


def test_token_arrays(server, onnx_dir: Path):
    tok = tokenizer(onnx_dir)
    ids = [tok.encode(t, add_special_tokens=False).ids for t in PARAPHRASES]
    by_text = vectors(post(server, input=PARAPHRASES).json())
    single = post(server, input=ids[0]).json()  # one text as a list of ints
    assert len(single["data"]) == 1
    assert np.allclose(vectors(single)[0], by_text[0], atol=1e-5)
    several = post(server, input=ids).json()  # a list of token lists
    assert np.allclose(vectors(several), by_text, atol=1e-5)
    assert several["usage"]["prompt_tokens"] == sum(len(i) + 2 for i in ids)  # + [CLS] and [SEP]
    gguf = vectors(post(server, model="minilm-gguf", input=ids).json())
    assert np.allclose(gguf, vectors(post(server, model="minilm-gguf", input=PARAPHRASES).json()), atol=1e-4)


def test_truncate(server):
    long = "word " * 600  # 602 tokens with [CLS] and [SEP]
    cut = post(server, input=long)
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 512
    for model in ("all-minilm-l6-v2", "minilm-gguf"):
        refused = post(server, model=model, input=["short", long], truncate=False)
        assert refused.status_code == 400, refused.text
        message = refused.json()["error"]["message"]
        assert "input[1]" in message and "602" in message and "512" in message


def test_dimensions(server):
    answer = post(server, input=PARAPHRASES[:2], dimensions=64).json()
    short = vectors(answer)
    assert short.shape == (2, 64)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-3)
    full = vectors(post(server, input=PARAPHRASES[:2]).json())
    assert np.allclose(short, full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True), atol=1e-5)
    too_many = post(server, input="x", dimensions=385)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("body", [{"input": ""}, {"input": []}, {"input": ["ok", ""]}, {"input": [[]]},
                                  {"input": [1, "a"]}, {}, {"input": "x", "encoding_format": "hex"},
                                  {"input": [99999999]}])
def test_bad_requests_are_400(server, body):
    answer = post(server, **body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("ids", [[-1], [30522], [101, 10**9]])
def test_gguf_token_ids_outside_the_vocabulary_are_400(server, ids):
    answer = post(server, model="minilm-gguf", input=[ids])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input" and "token id" in answer.json()["error"]["message"]


def test_unknown_model_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-model", input="hi")
    assert caught.value.status_code == 404
    assert post(server, model="no-such-model", input="hi").json()["error"]["code"] == "model_not_found"


def test_gguf_model_end_to_end_matches_onnx(client):
    onnx = client.embeddings.create(model="all-minilm-l6-v2", input=PARAPHRASES)
    gguf = client.embeddings.create(model="minilm-gguf", input=PARAPHRASES)
    assert gguf.model == "minilm-gguf" and len(gguf.data) == 3
    for a, b in zip(onnx.data, gguf.data):
        assert cos(np.array(a.embedding), np.array(b.embedding)) > 0.99
    assert gguf.usage.prompt_tokens == onnx.usage.prompt_tokens


def test_models_list_embedding_capability(server):
    models = {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}
    assert models["all-minilm-l6-v2"]["capabilities"] == ["embed"]
    assert models["all-minilm-l6-v2"]["type"] == "TEXT_EMBEDDING" and models["all-minilm-l6-v2"]["format"] == "onnx"
    assert models["minilm-gguf"]["format"] == "gguf" and models["minilm-gguf"]["state"] == "ready"


def test_one_model_cli_local_gguf(start_server, gguf_path: Path):
    """`nexa server FILE.gguf -lp -mt TEXT_EMBEDDING`: the original CLI's way to serve an embedding model."""
    server = start_server([str(gguf_path), "-lp", "-mt", "TEXT_EMBEDDING", "--nctx", "512"])
    answer = httpx.post(server.url + "/v1/embeddings", json={"input": "I love Nexa AI.", "normalize": True},
                        timeout=60).json()
    assert len(answer["data"][0]["embedding"]) == 384
    assert answer["usage"]["prompt_tokens"] == 8


# -- micro-batching: concurrent requests share engine calls ---------------------------------


def merged_calls(server: Server, model: str) -> tuple[float, float]:
    """(engine calls, calls that merged more than one request) from the batch-size histogram."""
    calls = metric(server.url, "nexa_embedding_batch_requests_count", model=model)
    alone = metric(server.url, "nexa_embedding_batch_requests_bucket", model=model, le="1.0")
    return calls, calls - alone


def concurrent_bodies(model: str) -> list[dict]:
    """Requests with every per-request option, so a merged batch must keep them apart."""
    words = ["apple", "river", "engine", "violin", "desert", "harbour", "lantern", "meadow"]
    bodies: list[dict] = []
    for i, word in enumerate(words * 2):
        body: dict = {"model": model, "input": f"Sentence {i} is about a {word}."}
        kind = i % 6
        if kind == 1:
            body.update(input=[f"First of {i}: {word}", f"second of {i}"], normalize=True)
        elif kind == 2:
            body.update(dimensions=32)
        elif kind == 3:
            body.update(encoding_format="base64", normalize=False)
        elif kind == 4 and i == 4:
            body.update(input="word " * 600, truncate=True)  # cut to 512 tokens
        elif kind == 5:
            body.update(input=[101, 2773, 2773, 102])  # token ids, framed already
        bodies.append(body)
    bodies.append({"model": model, "input": ["fine", "word " * 600], "truncate": False})  # a 400, alone
    bodies.append({"model": model, "input": "x", "dimensions": 4096})  # a 400, alone
    return bodies


def decoded(answer: dict) -> np.ndarray:
    return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
                     else d["embedding"] for d in answer["data"]], dtype=np.float32)


@pytest.mark.parametrize("model", ["all-minilm-l6-v2", "minilm-gguf"])
def test_concurrent_requests_are_merged_and_answer_as_alone(server, model):
    bodies = concurrent_bodies(model)
    alone = [post(server, **body) for body in bodies]  # one at a time: never merged
    calls_before, merged_before = merged_calls(server, model)

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            # A big request first keeps the engine busy while the others queue behind it.
            blocker = asyncio.ensure_future(client.post(server.url + "/v1/embeddings", json={
                "model": model, "input": [f"{i} " + "lorem ipsum " * 30 for i in range(8)]}))
            await asyncio.sleep(0.05)
            answers = await asyncio.gather(*(client.post(server.url + "/v1/embeddings", json=b) for b in bodies))
            assert (await blocker).status_code == 200
            return answers

    merged_answers = asyncio.run(together())
    calls, merged = merged_calls(server, model)
    assert merged > merged_before, "concurrent requests must share engine calls"
    assert calls - calls_before < len(bodies), (calls - calls_before, len(bodies))
    for body, one, many in zip(bodies, alone, merged_answers):
        assert many.status_code == one.status_code, (body, many.text)
        if one.status_code != 200:
            assert many.json()["error"] == one.json()["error"]
            continue
        a, b = one.json(), many.json()
        assert b["usage"] == a["usage"] and b["model"] == a["model"] == model
        assert [d["index"] for d in b["data"]] == [d["index"] for d in a["data"]]
        assert type(b["data"][0]["embedding"]) is type(a["data"][0]["embedding"])
        # Same engine, other batch-mates: ONNX differs by padding (summation order) only; llama.cpp
        # picks matmul kernels by batch shape (see tests/test_embeddings.py).
        atol = 1e-6 if model == "all-minilm-l6-v2" else 1e-3
        assert np.allclose(decoded(b), decoded(a), rtol=1e-5, atol=atol), body
    assert alone[-2].status_code == 400 and "input[1]" in alone[-2].json()["error"]["message"]
    assert alone[-1].json()["error"]["param"] == "dimensions"
    assert decoded(alone[2].json()).shape[1] == 32


def test_float_answers_are_shortest_float32(server):
    raw = httpx.post(server.url + "/v1/embeddings", json={"input": "hello world"}, timeout=60).text
    floats = post(server, input="hello world").json()["data"][0]["embedding"]
    as_base64 = post(server, input="hello world", encoding_format="base64").json()["data"][0]["embedding"]
    exact = np.frombuffer(base64.b64decode(as_base64), dtype="<f4")
    assert np.array_equal(np.array(floats, dtype=np.float32), exact)
    assert all(repr(f) == str(np.float32(f)) for f in floats), "each float is its float32's shortest repr"
    assert max(len(repr(f)) for f in floats) <= 16, "float32 needs at most 9 significant digits"
    assert len(raw) < 384 * 14, len(raw)
