"""The published contract: the OpenAPI 3.1 document built from the route table.

Unit tests check the document itself (valid per openapi-spec-validator, every route in
it, the served-routes filter, generic bodies for routes without declared models, the CLI).
The end-to-end tests serve it from a real gateway (SmolLM2 chat, all-MiniLM embeddings,
Whisper tiny speech, with an API key) and run schemathesis against that gateway: generated
requests for every operation, bounded, with no 5xx, no hang, and every answer matching the
schema its operation declares.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from openapi_spec_validator import validate

from gateway.api import table as routes
from gateway.api.ops.playground import playground_paths
from gateway.cli import main
from gateway.http import openapi
from gateway.http.core import Route
from schemas.embeddings import EmbeddingRequest, EmbeddingResponse
from tests.conftest import Server, write_manifest

pytestmark = pytest.mark.timeout(600)

KEY = "sk-openapi-test-key"


def test_document_of_every_route_is_valid_openapi_31():
    doc = openapi.document(routes.TABLE)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    for route in routes.TABLE:
        template = route.path.replace(":path}", "}")
        operation = doc["paths"][template][route.method.lower()]
        # Every error is in OpenAI's envelope, except on routes whose API has its own (Anthropic's).
        error = "ErrorResponse" if route.path in routes.ERROR_STYLES else "ErrorEnvelope"
        assert operation["responses"]["default"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{error}"}
        if route.request is not None:
            assert operation["requestBody"]["required"] is True
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), "operation ids name generated client functions: unique"
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    messages = doc["paths"]["/v1/messages"]["post"]
    assert messages["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessagesRequest"}
    responses = doc["paths"]["/v1/responses"]["post"]
    assert responses["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ResponseObject"}
    audio = doc["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert "file" in doc["components"]["schemas"]["AudioUpload"]["properties"] and "multipart/form-data" in audio
    assert doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["in"] == "path"
    assert "security" not in doc, "no api_keys: no authentication declared"


def test_only_the_served_routes_unless_all():
    doc = openapi.document(routes.TABLE, openapi.offered([{"embed"}]))
    validate(doc)
    assert "/v1/embeddings" in doc["paths"] and "/health" in doc["paths"] and "/openapi.json" in doc["paths"]
    assert "/v1/chat/completions" not in doc["paths"] and "/v1/txt2img" not in doc["paths"]
    assert "ChatRequest" not in doc["components"]["schemas"]
    without_playground = openapi.document(routes.TABLE, openapi.offered([{"embed"}], playground_paths(False)))
    assert "/playground" not in without_playground["paths"] and "/static/{name}" not in without_playground["paths"]
    assert "/playground" in doc["paths"] and playground_paths(True) == []


async def _handler(gw, request):
    """Says hello."""


def test_registration_is_one_line_and_undeclared_bodies_are_generic():
    plain = Route(*("POST", "/v1/plain", "chat", _handler))  # what a module's 4-tuple becomes
    typed = Route("POST", "/v1/typed", "embed", _handler, request=EmbeddingRequest, response=EmbeddingResponse)
    doc = openapi.document([plain, typed], auth=True)
    validate(doc)
    op = doc["paths"]["/v1/plain"]["post"]
    assert op["summary"] == "Says hello." and op["tags"] == ["chat"]
    assert op["requestBody"] == {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    assert op["responses"]["200"]["content"] == {"application/json": {"schema": {}}}
    typed_op = doc["paths"]["/v1/typed"]["post"]
    assert typed_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")
    assert typed_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EmbeddingResponse")
    assert doc["security"] == [{"bearer": []}] and doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_cli_writes_the_document(tmp_path: Path):
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "e", "source": "all-minilm-l6-v2"}],
                              server={"api_keys": [KEY]})
    served, everything = tmp_path / "served.json", tmp_path / "all.json"
    assert main(["schema", "--openapi", "-c", str(manifest), "-o", str(served)]) == 0
    assert main(["schema", "--openapi", "-o", str(everything)]) == 0
    one, every = json.loads(served.read_text()), json.loads(everything.read_text())
    validate(one)
    validate(every)
    assert "/v1/embeddings" in one["paths"] and "/v1/completions" not in one["paths"]
    assert one["security"] == [{"bearer": []}] and one["paths"]["/health"]["get"]["security"] == []
    assert {"/v1/completions", "/v1/txt2img", "/v1/audio/translations"} <= set(every["paths"])
    bad = write_manifest(tmp_path / "bad.yaml", [{"name": "e", "source": "all-minilm-l6-v2", "nctx": -1}])
    assert main(["schema", "--openapi", "-c", str(bad)]) == 2


# -- a live gateway --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("openapi")
    manifest = write_manifest(tmp / "nexa.yaml", [
        # max_tokens_limit keeps generated chat requests short: a few hundred of them in about two minutes.
        {"name": "smollm2", "source": "smollm2", "nctx": 512, "max_tokens_limit": 8, "preload": True},
        {"name": "all-minilm-l6-v2", "source": "all-minilm-l6-v2", "preload": True},
        {"name": "whisper-tiny-en", "source": "whisper-tiny-en"},
    ], server={"api_keys": [KEY]})
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


@pytest.mark.e2e
def test_openapi_json_is_open_and_lists_the_served_routes(server: Server):
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
    answer = httpx.get(server.url + "/openapi.json", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    doc = answer.json()
    validate(doc)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/audio/transcriptions"} <= set(doc["paths"])
    assert "/v1/txt2img" not in doc["paths"], "no image model declared"
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/openapi.json"]["get"]["security"] == []
    every = httpx.get(server.url + "/openapi.json?all=true", timeout=30).json()
    validate(every)
    assert "/v1/txt2img" in every["paths"]
    refused = httpx.get(server.url + "/openapi.json?all=maybe", timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "all"
    assert 'href="openapi.json"' in httpx.get(server.url + "/", timeout=30).text, "the playground links to it"


@pytest.mark.e2e
def test_schemathesis_finds_no_5xx_no_hang_and_answers_match_their_schemas(server: Server, tmp_path: Path):
    """Bounded: 12 generated requests per operation plus the schema's examples (about 150 requests
    in ~2 minutes here), fixed seed so a failure reproduces. Schemathesis' `coverage` phase (1,208
    boundary-value requests, ~10 minutes on this machine) passed when run by hand; it is too slow
    for the suite. No generator is excluded: none of the 5xx that branch fix-fuzz fixes (lone
    surrogates, deep JSON, huge integers, malformed tools / tool_choice / response_format) came up
    with this seed; if one does after a schema change, exclude it narrowly here, naming fix-fuzz."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", server.url + "/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "--phases", "examples,fuzzing", "--max-examples", "12", "--seed", "20261130",
        "--request-timeout", "60", "--workers", "2", "--suppress-health-check", "all",
        "-H", f"Authorization: Bearer {KEY}", "--report", "junit", "--report-dir", str(tmp_path),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=480)  # its cache dir
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:] + "\n--- server log ---\n" + server.log(3000)
    assert " 0 passed" not in output and "passed" in output
    assert '"status": 500' not in server.log() and "unhandled error" not in server.log()
