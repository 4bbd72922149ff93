"""The manifest: valid files, every kind of invalid file, environment handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.manifest.load import ManifestError, _apply_catalog_defaults, build, load_file, parse_text
from schemas.manifest import ModelFormat, ModelType

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_text(text)
    return info.value.problems


def test_the_example_manifest_is_valid():
    manifest = load_file(ROOT / "nexa.yaml.example")
    assert [m.name for m in manifest.models][:2] == ["smollm2", "gemma"]
    assert manifest.models[0].type == ModelType.NLP and manifest.models[0].format == ModelFormat.gguf


def test_a_full_model_entry(tmp_path):
    manifest = parse_text("""
server: {host: 0.0.0.0, port: 9001}
models:
  - name: chat
    aliases: [gpt-4o-mini]
    type: NLP
    format: gguf
    source: /models/x.gguf
    device: cpu
    nctx: 4096
    n_threads: 2
    system_prompt: Be brief.
    options: {n_batch: 256}
""")
    spec = manifest.models[0]
    assert manifest.server.port == 9001 and manifest.server.host == "0.0.0.0"
    assert spec.names == ["chat", "gpt-4o-mini"] and spec.nctx == 4096 and spec.options == {"n_batch": 256}


def test_catalog_names_imply_type_and_format():
    spec = parse_text("models: [{name: g, source: gemma}]").models[0]
    assert (spec.type, spec.format) == (ModelType.NLP, ModelFormat.gguf)
    models = [{"name": "w", "source": "faster-whisper-large"}, {"name": "x", "source": "gemma", "type": "AUDIO"}]
    _apply_catalog_defaults(models)
    assert models[0]["type"] == "AUDIO" and models[0]["format"] == "bin"
    assert models[1]["type"] == "AUDIO"  # what the manifest says wins


def test_bad_value_names_the_key_path():
    assert problems("models: [{name: a, source: smollm2}, {name: b, source: smollm2, nctx: 0}]") == [
        "models[1].nctx: must be > 0"
    ]


def test_unknown_keys_are_rejected_everywhere():
    found = problems("colour: red\nserver: {prot: 1}\nmodels: [{name: a, source: smollm2, ctx: 5}]")
    assert "server.prot: unknown key" in found
    assert "colour: unknown key" in found
    assert "models[0].ctx: unknown key" in found


def test_duplicate_names_and_aliases():
    found = problems("""
models:
  - {name: a, source: smollm2, aliases: [x]}
  - {name: b, source: smollm2, aliases: [x]}
  - {name: a, source: smollm2}
""")
    assert "models[1].aliases: 'x' is already used by models[0]" in found
    assert "models[2].name: 'a' is already used by models[0]" in found


def test_type_and_format_without_a_backend():
    found = problems("models: [{name: a, source: /m.bin, type: NLP, format: bin}]")
    assert len(found) == 1 and found[0].startswith("models[0].format: no backend serves type NLP in format bin")


def test_bad_enum_and_missing_keys():
    found = problems("models: [{name: a, type: SPEECH}]")
    assert any(p.startswith("models[0].type: must be one of") for p in found)
    assert "models[0].source: required key is missing" in found
    assert problems("server: {}\n") == ["models: required key is missing"]
    assert problems("models: []") == ["models: list should have at least 1 item after validation, not 0"]


def test_unknown_source_is_rejected():
    found = problems("models: [{name: a, source: nosuchmodel}]")
    assert len(found) == 1 and found[0].startswith("models[0].source: 'nosuchmodel' is neither a catalog name")


def test_yaml_syntax_error_names_the_line():
    found = problems("models:\n  - name: a\n    source: [unclosed\n")
    assert found[0].startswith("line ")


def test_environment_substitution(monkeypatch):
    monkeypatch.setenv("CHAT_MODEL_PATH", "/srv/models/chat.gguf")
    monkeypatch.setenv("CTX", "3072")
    monkeypatch.delenv("UNSET_THING", raising=False)
    manifest = parse_text("""
# a comment mentioning ${NOT_A_VARIABLE} is left alone
models:
  - name: chat
    source: ${CHAT_MODEL_PATH}
    nctx: ${CTX}
    system_prompt: "hello ${UNSET_THING:-world}"
""")
    spec = manifest.models[0]
    assert spec.source == "/srv/models/chat.gguf" and spec.nctx == 3072 and spec.system_prompt == "hello world"
    assert problems("models: [{name: a, source: '${UNSET_THING}'}]") == [
        "models[0].source: environment variable UNSET_THING is not set and has no default"
    ]


def test_nexa_environment_overrides_server_settings(monkeypatch):
    monkeypatch.setenv("NEXA_PORT", "9123")
    monkeypatch.setenv("NEXA_HOST", "0.0.0.0")
    manifest = parse_text("server: {port: 8000, host: 127.0.0.1}\nmodels: [{name: a, source: smollm2}]")
    assert manifest.server.port == 9123 and manifest.server.host == "0.0.0.0"
    monkeypatch.setenv("NEXA_PORT", "not-a-port")
    assert problems("models: [{name: a, source: smollm2}]")[0].startswith("server.port:")


def test_relative_local_sources_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "models").mkdir()
    manifest_path = tmp_path / "nexa.yaml"
    manifest_path.write_text("models: [{name: a, source: ./models/a.gguf}]")
    assert load_file(manifest_path).models[0].source == str(tmp_path / "models" / "a.gguf")


def test_build_from_a_dict_is_the_same_path():
    manifest = build({"models": [{"name": "a", "source": "gemma"}]})
    assert manifest.models[0].type == ModelType.NLP


def run_nexa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_nexa_check_exit_codes_and_no_traceback(tmp_path):
    ok = run_nexa("check", "-c", str(ROOT / "nexa.yaml.example"))
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: a, source: smollm2}\n  - {name: b, source: smollm2, nctx: -5}\n")
    result = run_nexa("check", "-c", str(bad))
    assert result.returncode == 2
    assert "models[1].nctx: must be > 0" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_nexa("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_nexa_server_with_a_bad_manifest_exits_2_before_serving(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: a, source: smollm2, nctx: 0}]\n")
    result = run_nexa("server", "-c", str(bad))
    assert result.returncode == 2 and "models[0].nctx: must be > 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_http_server_setting_and_its_deprecated_alias(monkeypatch):
    """`server.engine` was renamed `server.http_server` ("engine" means the inference library
    elsewhere); the old name keeps working, and the new one wins when both are given."""
    from schemas.manifest import ServerSettings

    for name in ("NEXA_ENGINE", "NEXA_HTTP_SERVER"):
        monkeypatch.delenv(name, raising=False)
    assert ServerSettings().http_server == "granian"
    assert ServerSettings(http_server="robyn").http_server == "robyn"
    assert ServerSettings(engine="robyn").http_server == "robyn"
    assert ServerSettings(engine="robyn", http_server="granian").http_server == "granian"
    monkeypatch.setenv("NEXA_ENGINE", "robyn")
    assert ServerSettings().http_server == "robyn"


@pytest.mark.parametrize("source, options, expected", [
    ("smollm2", {"n_batchh": 1}, "models[0].options.n_batchh: unknown option for llama.cpp; did you mean n_batch?"),
    ("smollm2", {"n_batch": 0}, "models[0].options.n_batch: must be > 0"),
    ("smollm2", {"chat_template": 5}, "models[0].options.chat_template: input should be a valid string"),
    ("whisper-base", {"max_audio_seconds": 0}, "models[0].options.max_audio_seconds: must be > 0"),
    ("whisper-base", {"vad_filterr": True}, "models[0].options.vad_filterr: unknown option for faster-whisper; "
                                            "did you mean vad_filter?"),
    ("all-minilm-l6-v2", {"pooling": "max"}, "models[0].options.pooling: input should be 'mean', 'cls' or 'none'"),
])
def test_engine_options_are_checked_before_anything_loads(source, options, expected):
    """A typo in `options:` is a manifest error with its key path, not a load failure later."""
    with pytest.raises(ManifestError) as caught:
        build({"models": [{"name": "m", "source": source, "options": options}]})
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_valid_engine_options_and_custom_backends_pass():
    build({"models": [
        {"name": "a", "source": "smollm2", "options": {"n_batch": 256, "flash_attn": True, "chat_template": "{{x}}"}},
        {"name": "b", "source": "whisper-base", "options": {"vad_filter": True, "compute_type": "int8"}},
        {"name": "c", "source": "all-minilm-l6-v2", "options": {"normalize": True, "providers": ["CPUExecutionProvider"]}},
        {"name": "d", "source": "smollm2", "backend": "tests.fakes:FakeBackend", "options": {"anything": 1}},
    ]})


def test_schema_document_types_engine_options():
    import jsonschema

    from gateway.manifest.gitops import schema_document

    validator = jsonschema.Draft202012Validator(schema_document())
    model = {"name": "a", "source": "x.gguf", "type": "NLP", "format": "gguf"}
    assert not list(validator.iter_errors({"models": [{**model, "options": {"n_batch": 8}}]}))
    assert list(validator.iter_errors({"models": [{**model, "options": {"n_batchh": 8}}]}))
