"""Bad input from outside, against a real gateway on loopback (SmolLM2, all-MiniLM, Whisper
tiny.en and the synthetic SDXS checkpoint): first one targeted test per fuzzing finding, then
property-based fuzzing (hypothesis) over the request schemas of the JSON routes and the audio
upload. The contract: a 4xx in the OpenAI envelope, never a 5xx, and a healthy server after.

The fuzzing is bounded by a wall-clock budget (BUDGET_S in all, shared out per route) as well as
by `max_examples`, so it costs about two minutes whatever the machine's speed; generation is kept
cheap (SmolLM2's max_tokens_limit is 8, so no answer is longer; 64-pixel images, one diffusion step).
"""

from __future__ import annotations

import io
import json
import math
import time
import wave
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import Server, fetch_catalog, write_manifest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BUDGET_S = 120.0
SHARES = {"chat": 0.3, "completions": 0.12, "function-calling": 0.12, "embeddings": 0.12, "images": 0.17,
          "audio": 0.17}
VOCAB = {"smollm2": 49152, "all-minilm-l6-v2": 30522}


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path: Path) -> Iterator[Server]:
    fetch_catalog("all-minilm-l6-v2")
    fetch_catalog("whisper-tiny-en")
    from tests.synth.sd_checkpoint import sdxs_checkpoint

    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "outputs").mkdir()
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "smollm2", "source": "smollm2", "nctx": 2048, "preload": True, "max_tokens_limit": 8},
        {"name": "all-minilm-l6-v2", "source": "all-minilm-l6-v2", "preload": True},
        {"name": "whisper-tiny-en", "source": "whisper-tiny-en", "device": "cpu", "preload": True},
        {"name": "sdxs", "type": "COMPUTER_VISION", "format": "gguf", "source": str(sdxs_checkpoint()),
         "preload": True, "n_threads": 2, "options": {"default_steps": 1, "default_cfg_scale": 1.0}},
    ], server={"image_output_dir": str(tmp / "outputs"), "image_url_hosts": ["127.0.0.1"]})
    server = Server(["-c", str(manifest)], tmp, ready_timeout=300)
    yield server
    server.stop()


def post(server: Server, path: str, body: Any = None, *, raw: bytes | None = None, **kwargs) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()  # ensure_ascii: surrogates as \\udXXX
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"},
                      timeout=120, **kwargs)


def assert_client_error(answer: httpx.Response, param: str | None = None, code: str | None = None) -> dict:
    assert answer.status_code == 400, answer.text[:2000]
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


# -- one test per finding --------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, param", [
    (CHAT, {"messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 2}, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}], "max_tokens": 2},
     "messages[0].content[0].text"),
    (CHAT, {"messages": HI, "stop": ["\ud83d"], "max_tokens": 2}, "stop[0]"),
    ("/v1/completions", {"prompt": "x\udc00", "max_tokens": 2}, "prompt"),
    ("/v1/embeddings", {"input": ["ok", "\ud800"]}, "input[1]"),
    ("/v1/embeddings", {"input": "\ud800", "\udc01": 1}, "input"),
    ("/v1/images/generations", {"prompt": "\ud800", "size": "64x64"}, "prompt"),
])
def test_lone_surrogates_are_a_400_naming_the_field(server, path, body, param):
    raw = json.dumps(body).encode()
    assert b"\\ud" in raw  # a JSON escape of a lone surrogate: valid JSON, but not Unicode text
    error = assert_client_error(post(server, path, raw=raw), param, "invalid_value")
    assert "surrogate" in error["message"]
    # A surrogate pair is one real character: fine.
    if path == "/v1/embeddings":
        assert post(server, path, {"input": "\ud83d\ude00"}).status_code == 200


def test_json_nested_too_deep_and_huge_integers_are_400s(server):
    deep = post(server, CHAT, raw=b"[" * 100_000 + b"]" * 100_000)
    assert_client_error(deep, code="invalid_json")
    nested: Any = {"type": "object"}
    for _ in range(200):
        nested = {"type": "object", "properties": {"a": nested}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": nested}}]
    assert_client_error(post(server, CHAT, {"messages": HI, "tools": tools, "max_tokens": 2}), code="invalid_value")
    huge = post(server, CHAT, raw=b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"7" * 5000 + b"}")
    assert "4300 digits" in assert_client_error(huge, code="invalid_json")["message"]
    nan = post(server, CHAT, raw=b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}')
    assert_client_error(nan, code="invalid_json")


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$defs": []}}}]},
     "tools[0].function.parameters"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function"),
    ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice.function"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": 5}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": []}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"functions": [{"name": "f", "parameters": "x"}]}, "functions[0].parameters"),
    ({"functions": [{"name": "f"}], "function_call": {"name": 5}}, "function_call.name"),
    ({"functions": [{"name": "f"}], "function_call": "f"}, "function_call"),
    ({"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": 5}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [*HI, {"role": "assistant", "tool_calls": [{"id": "c1", "function": "f"}]}]},
     "messages[1].tool_calls[0].function"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
])
@pytest.mark.parametrize("path", [CHAT, "/v1/function-calling"])
def test_malformed_tools_and_formats_are_400s_with_the_param_path(server, path, extra, param):
    assert_client_error(post(server, path, {"messages": HI, "max_tokens": 2, **extra}), param, "invalid_value")


def test_what_valid_clients_send_is_still_accepted(server):
    """Extensions stay allowed, and shapes OpenAI clients send get through the typed schemas."""
    tool = {"type": "function", "function": {"name": "get_weather", "description": "d", "strict": True,
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"], "additionalProperties": False},
                                             "x-vendor": 1}, "x-extension": True}
    history = [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    bodies = [
        {"messages": history, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"messages": HI, "tools": [tool], "tool_choice": "none", "parallel_tool_calls": False},
        {"messages": HI, "functions": [tool["function"]], "function_call": {"name": "get_weather"}},
        {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
            "name": "a", "strict": True, "schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}}},
        {"messages": HI, "response_format": {"type": "json_object"}, "some_future_field": {"a": [1]}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi \ud83d\ude00"}]}],
         "response_format": {"type": "text"}},
    ]
    for body in bodies:
        answer = post(server, CHAT, {**body, "max_tokens": 8, "temperature": 0})
        # A tool call cut short by max_tokens may be a 400 of its own; never a refusal of the schema.
        assert answer.status_code == 200 or (
            answer.status_code == 400 and "max_tokens" in answer.json()["error"]["message"]), (body, answer.text)
    # The assistant's arguments as an object (some clients echo them parsed) are taken as their JSON text.
    parsed = [*HI, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                          "function": {"name": "get_weather", "arguments": {"city": "P"}}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert post(server, CHAT, {"messages": parsed, "max_tokens": 2}).status_code == 200


# -- property-based fuzzing ------------------------------------------------------------------------

_deadlines: dict[str, float] = {}


def time_left(route: str) -> bool:
    """False once this route's share of BUDGET_S is spent (later examples return at once)."""
    deadline = _deadlines.setdefault(route, time.monotonic() + BUDGET_S * SHARES[route])
    return time.monotonic() < deadline


ODD_TEXT = st.sampled_from(["", " ", "\ud800", "a\udfffb", "\udbff\udbff", "\x00", "\x1b[31m", "\u202e", "🙂",
                            "{{ bad }}", "<tool_call>", "</s>", "<|im_end|>", "%s%n", "\\", "\"", "a" * 40])
TEXT = st.one_of(st.text(max_size=24), ODD_TEXT)
NUMBERS = st.one_of(st.integers(-(2 ** 70), 2 ** 70), st.integers(-3, 70),
                    st.floats(allow_nan=False, allow_infinity=False), st.floats(-3, 3))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
ANY_JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
SCHEMAS = st.one_of(
    st.sampled_from([{"type": "object"}, {"type": "object", "properties": {}},
                     {"type": "object", "properties": {"x": {"type": "integer"}, "s": {"type": "string"}},
                      "required": ["x"]},
                     {"type": "object", "properties": {"e": {"enum": ["a", "b"]}}},
                     {"type": "array", "items": {"type": "number"}}, {"type": "string", "maxLength": 3},
                     {"$ref": "#/$defs/missing"}, {"type": "object", "$defs": {"a": {"type": "string"}},
                                                   "properties": {"a": {"$ref": "#/$defs/a"}}},
                     {"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": "wat"}, {}]),
    st.dictionaries(st.sampled_from(["type", "properties", "items", "required", "enum", "$ref", "anyOf", "const",
                                     "minimum", "pattern", "additionalProperties"]), ANY_JSON, max_size=3))


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the well-formed value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, ANY_JSON)


NAMES = st.sampled_from(["f", "get_weather", "", "a b", "\ud800"]) | TEXT
FUNCTION = st.fixed_dictionaries({"name": maybe(NAMES)}, optional={"description": maybe(TEXT),
                                                                   "parameters": maybe(SCHEMAS),
                                                                   "strict": maybe(st.booleans())})
TOOLS = st.lists(maybe(st.fixed_dictionaries({"type": maybe(st.just("function")), "function": maybe(FUNCTION)})),
                 max_size=2)
TOOL_CHOICE = st.one_of(st.sampled_from(["none", "auto", "required", "any"]),
                        st.fixed_dictionaries({"type": maybe(st.just("function")),
                                               "function": maybe(st.fixed_dictionaries({"name": maybe(NAMES)}))}))
TOOL_CALLS = st.lists(st.fixed_dictionaries({"id": maybe(TEXT), "type": maybe(st.just("function")), "function": maybe(
    st.fixed_dictionaries({"name": maybe(NAMES), "arguments": maybe(st.sampled_from(["{}", '{"x": 1}', "not json"]))}))}),
    max_size=2)
IMAGE_URLS = st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "AAAA", "http://127.0.0.1:9/x.png",
                              "http://127.0.0.1\t@example.com/x.png", "http://u@127.0.0.1/x.png", "file:///etc/passwd",
                              "data:,", "javascript:alert(1)"])
PARTS = st.lists(maybe(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(TEXT)}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_image", "image", "audio", "x"]),
                           "image_url": maybe(st.one_of(IMAGE_URLS, st.fixed_dictionaries({"url": maybe(IMAGE_URLS)})))}))),
    max_size=3)
MESSAGE = st.fixed_dictionaries(
    {"role": maybe(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "robot"])),
     "content": maybe(st.one_of(TEXT, PARTS, st.none()))},
    optional={"name": maybe(TEXT), "tool_calls": maybe(TOOL_CALLS), "tool_call_id": maybe(TEXT)})
RESPONSE_FORMAT = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])}),
    st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": maybe(st.fixed_dictionaries(
        {"name": maybe(TEXT), "schema": maybe(SCHEMAS)}, optional={"strict": maybe(st.booleans())}))}))
SAMPLING = {
    "model": maybe(st.sampled_from(["smollm2", "nope", "all-minilm-l6-v2", ""])),
    "temperature": maybe(st.floats(-1, 3)), "top_p": maybe(st.floats(-0.5, 1.5)), "top_k": maybe(NUMBERS),
    "min_p": maybe(st.floats(-1, 2)), "seed": maybe(NUMBERS), "n": maybe(st.integers(-1, 3)),
    "stop": maybe(st.one_of(TEXT, st.lists(TEXT, max_size=4))), "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
    "presence_penalty": maybe(st.floats(-3, 3)), "frequency_penalty": maybe(st.floats(-3, 3)),
    "repeat_penalty": maybe(st.floats(-1, 3)), "user": maybe(TEXT), "max_tokens": maybe(st.integers(-2, 4)),
}
def with_unknown_fields(body: st.SearchStrategy) -> st.SearchStrategy:
    """`body`, sometimes with fields no schema knows (clients send extensions: they are ignored)."""
    return st.builds(lambda known, unknown: {**unknown, **known}, body,
                     st.one_of(st.just({}), st.dictionaries(TEXT, ANY_JSON, max_size=2)))


CHAT_BODY = with_unknown_fields(st.fixed_dictionaries(
    {"messages": maybe(st.lists(maybe(MESSAGE), min_size=1, max_size=3))}, optional={
        **SAMPLING, "tools": maybe(TOOLS), "tool_choice": maybe(TOOL_CHOICE), "response_format": maybe(RESPONSE_FORMAT),
        "functions": maybe(st.lists(maybe(FUNCTION), max_size=2)),
        "function_call": maybe(st.one_of(st.sampled_from(["none", "auto", "f"]), st.fixed_dictionaries({"name": NAMES}))),
        "logprobs": maybe(st.booleans()), "top_logprobs": maybe(st.integers(-1, 25)),
        "parallel_tool_calls": maybe(st.booleans())}))
TOKEN_IDS = st.lists(st.integers(0, 1000), min_size=1, max_size=8)
COMPLETION_BODY = st.fixed_dictionaries({"prompt": maybe(st.one_of(TEXT, st.lists(TEXT, max_size=2), TOKEN_IDS))},
                                        optional={**SAMPLING, "echo": maybe(st.booleans()), "suffix": maybe(TEXT),
                                                  "logprobs": maybe(st.one_of(st.booleans(), st.integers(-1, 25))),
                                                  "max_new_tokens": maybe(st.integers(-1, 4)),
                                                  "stop_words": maybe(st.lists(TEXT, max_size=3))})
EMBEDDING_BODY = st.fixed_dictionaries(
    {"input": maybe(st.one_of(TEXT, st.lists(TEXT, max_size=4), TOKEN_IDS, st.lists(TOKEN_IDS, max_size=3)))},
    optional={"model": maybe(st.sampled_from(["all-minilm-l6-v2", "smollm2", "x"])),
              "encoding_format": maybe(st.sampled_from(["float", "base64", "hex"])),
              "dimensions": maybe(st.integers(-1, 400)), "normalize": maybe(st.booleans()),
              "truncate": maybe(st.booleans()), "user": maybe(TEXT)})
SIDES = st.integers(-1, 96)  # small: every valid request really runs the diffusion model
IMAGE_COMMON = {"negative_prompt": maybe(TEXT), "cfg_scale": maybe(st.floats(-1, 40)),
                "sample_steps": maybe(st.integers(-1, 1)), "seed": maybe(NUMBERS), "model": maybe(st.just("sdxs"))}
IMAGE_BODIES = st.one_of(
    st.tuples(st.just("/v1/images/generations"), st.fixed_dictionaries({"prompt": maybe(TEXT)}, optional={
        **IMAGE_COMMON, "n": maybe(st.integers(-1, 2)),
        "size": maybe(st.one_of(st.sampled_from(["64x64", "auto", "0x0", "64x", "x", "1025x64", "64X64"]),
                                st.builds("{}x{}".format, SIDES, SIDES))),
        "response_format": maybe(st.sampled_from(["b64_json", "url", "png"])), "stream": maybe(st.booleans())})),
    st.tuples(st.just("/v1/txt2img"), st.fixed_dictionaries({"prompt": maybe(TEXT)}, optional={
        **IMAGE_COMMON, "width": maybe(SIDES), "height": maybe(SIDES), "image_path": maybe(TEXT)})),
    st.tuples(st.just("/v1/img2img"), st.fixed_dictionaries({"prompt": maybe(TEXT)}, optional={
        **IMAGE_COMMON, "width": maybe(SIDES), "height": maybe(SIDES), "strength": maybe(st.floats(-1, 2)),
        "image": maybe(st.sampled_from(["", "AAAA", "data:image/png;base64,iVBORw0KGgo=", "\ud800"])),
        "image_path": maybe(st.sampled_from(["/etc/passwd", "../x.png", "", "\x00"]))})))

SMALL_IMAGES = {"/v1/images/generations": {"size": "64x64"}, "/v1/txt2img": {"width": 64, "height": 64},
                "/v1/img2img": {}}
FUZZ = settings(deadline=None, database=None, derandomize=False, phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck))


def cheap(body: Any) -> Any:
    """Keep generation short: any small budget a request asks for stays; bigger ones shrink."""
    if isinstance(body, dict):
        for key in ("max_tokens", "max_new_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 4:
                body[key] = 4
        if "n" in body and isinstance(body["n"], int) and body["n"] > 2:
            body["n"] = 2
    return body


def out_of_vocab(body: Any, key: str, model: str) -> bool:
    """Token ids outside the model's vocabulary are another fix's (fix-grammar); not fuzzed here."""
    value = body.get(key) if isinstance(body, dict) else None
    ids = [v for item in (value if isinstance(value, list) else []) for v in (item if isinstance(item, list) else [item])]
    return any(isinstance(v, int) and not isinstance(v, bool) and not 0 <= v < VOCAB[model] for v in ids)


def check(server: Server, path: str, body: Any, answer: httpx.Response) -> None:
    shown = json.dumps(body)[:1500]
    assert answer.status_code < 500, f"{path} {shown}\n-> {answer.status_code} {answer.text[:1500]}"
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, answer.text
    elif answer.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", answer.text[-500:]
        for event in events[:-1]:
            data = json.loads(event)
            assert data.get("error", {}).get("type") != "server_error", f"{path} {shown}\n-> {event}"


@settings(FUZZ, max_examples=250)
@given(body=CHAT_BODY)
def test_fuzz_chat(server, body):
    if time_left("chat"):
        check(server, CHAT, body, post(server, CHAT, cheap(body)))


@settings(FUZZ, max_examples=120)
@given(body=COMPLETION_BODY)
def test_fuzz_completions(server, body):
    if time_left("completions") and not out_of_vocab(body, "prompt", "smollm2"):
        check(server, "/v1/completions", body, post(server, "/v1/completions", cheap(body)))


@settings(FUZZ, max_examples=120)
@given(body=CHAT_BODY)
def test_fuzz_function_calling(server, body):
    if time_left("function-calling"):
        check(server, "/v1/function-calling", body, post(server, "/v1/function-calling", cheap(body)))


@settings(FUZZ, max_examples=150)
@given(body=EMBEDDING_BODY)
def test_fuzz_embeddings(server, body):
    if time_left("embeddings") and not out_of_vocab(body, "input", "all-minilm-l6-v2"):
        check(server, "/v1/embeddings", body, post(server, "/v1/embeddings", body))


@settings(FUZZ, max_examples=120)
@given(route=IMAGE_BODIES)
def test_fuzz_images(server, route):
    path, body = route
    if time_left("images"):
        if isinstance(body, dict):  # the default sizes (256 and 512 pixels) would cost seconds per request
            body = {**SMALL_IMAGES[path], **body}
        check(server, path, body, post(server, path, cheap(body)))


def tone_wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"".join(int(8000 * math.sin(i / 8)).to_bytes(2, "little", signed=True)
                                 for i in range(int(seconds * rate))))
    return out.getvalue()


FORM_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "en", "xx", "json", "verbose_json", "srt", "vtt",
                                                             "text", "0", "-1", "1e309", "nan", "word", "segment",
                                                             "whisper-tiny-en", "smollm2"]))
AUDIO_FORM = st.dictionaries(st.sampled_from(["model", "language", "prompt", "response_format", "temperature",
                                              "beam_size", "timestamp_granularities[]", "x"]), FORM_TEXT, max_size=4)
AUDIO_FILE = st.one_of(st.just(tone_wav()), st.binary(max_size=64), st.just(b""), st.just(tone_wav()[:60]))


@settings(FUZZ, max_examples=80)
@given(form=AUDIO_FORM, audio=AUDIO_FILE, route=st.sampled_from(["transcriptions", "translations"]),
       field=st.sampled_from(["file", "file", "audio"]))
def test_fuzz_audio_uploads(server, form, audio, route, field):
    if not time_left("audio"):
        return
    path = f"/v1/audio/{route}"
    answer = httpx.post(server.url + path, data=form, files={field: ("a.wav", audio, "audio/wav")}, timeout=120)
    check(server, path, form, answer)


def test_the_server_is_healthy_after_the_fuzzing(server):
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert httpx.get(server.url + "/ready", timeout=10).status_code == 200
    assert server.proc.poll() is None
    log = server.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
    chat = post(server, CHAT, {"messages": HI, "max_tokens": 2})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"
