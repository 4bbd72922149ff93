"""GitOps: `nexa schema`, `nexa plan` (against a file, git and a running gateway),
GET /admin/manifest, `nexa pull` (sha256 and progress), `--offline`, and the pins
(revision, sha256) of hf:, pypi: and local sources."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from gateway.api.table import openapi_document
from gateway.manifest import gitops, hub
from gateway.manifest.load import ManifestError, parse_text
from schemas.manifest import ModelSpec
from tests.conftest import ROOT, write_manifest
from tests.pypi_index import PackageIndex

pytestmark = pytest.mark.timeout(180)

FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}


def fake(name: str, **extra) -> dict:
    return {"name": name, **FAKE, **extra}


def parse(command: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gitops.add_arguments(command, parser)
    return parser.parse_args(list(argv))


def nexa(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=timeout, env={**os.environ, **(env or {})})


# -- nexa schema --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict:
    return gitops.schema_document()


def test_schema_has_the_server_section_with_descriptions(schema, tmp_path, capsys):
    jsonschema.Draft202012Validator.check_schema(schema)
    server = schema["$defs"]["ServerSettings"]["properties"]
    assert "shutdown_grace_s" in server and "e.g. 8GiB" in json.dumps(server["memory_budget"])
    assert "remote" in schema["$defs"]["ModelFormat"]["enum"]
    assert gitops.schema(parse("schema"), openapi_document) == 0
    assert json.loads(capsys.readouterr().out) == schema
    assert gitops.schema(parse("schema", "-o", str(tmp_path / "s.json")), openapi_document) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


@pytest.mark.parametrize("models, server, valid", [
    ([{"name": "a", "source": "smollm2"}], {"api_keys": ["a-long-key-1", {"key": "another-key", "models": ["a"]}]},
     True),
    ([{"name": "r", "format": "remote", "base_url": "http://h:1/v1", "api_key": "${KEY}"}], {}, True),
    ([{"name": "r", "format": "remote", "source": "http://h:1/v1"}], {}, True),
    ([{"name": "a"}], {}, False),                                          # source missing
    ([{"name": "r", "format": "remote"}], {}, False),                     # neither base_url nor source
    ([{"name": "a", "source": "smollm2", "nctx": 0}], {}, False),
    ([{"name": "a", "source": "smollm2", "colour": "red"}], {}, False),
    ([{"name": "a", "source": "smollm2"}], {"prot": 1}, False),
])
def test_the_schema_judges_manifests_like_the_gateway(schema, models, server, valid):
    document = {"server": server, "models": models}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert (not errors) == valid, [e.message for e in errors]
    try:
        parse_text(yaml.safe_dump(document).replace("${KEY}", "k"))
        gateway_valid = True
    except ManifestError:
        gateway_valid = False
    assert gateway_valid == valid


def test_the_example_manifest_validates_against_the_schema(schema):
    document = yaml.safe_load((ROOT / "nexa.yaml.example").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)) == []


# -- nexa plan ----------------------------------------------------------------------------------

OLD = [fake("keep"), fake("alias", aliases=["x"]), fake("grow", nctx=512), fake("gone")]
NEW = [fake("keep"), fake("alias", aliases=["y"]), fake("grow", nctx=1024), fake("fresh", preload=True)]


def test_plan_against_a_file(tmp_path, capsys):
    old = write_manifest(tmp_path / "old.yaml", OLD, server={"port": 8000})
    new = write_manifest(tmp_path / "new.yaml", NEW, server={"port": 9000})
    assert gitops.plan(parse("plan", "-c", str(new), "--against", str(old))) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"plan: {new} against {old}"
    assert out[1].split() == ["+", "add", "fresh", "loads", "now", "(preload)"]
    assert out[2].split()[:3] == ["-", "remove", "gone"]
    assert out[3].split() == ["~", "replace", "grow", "new", "weights:", "nctx"]
    assert out[4].split() == ["~", "update", "alias", "in", "place,", "no", "reload:", "aliases"]
    assert out[5].split() == ["=", "unchanged", "keep"]
    assert out[6].split()[:5] == ["!", "restart", "server", "changed:", "port"]
    assert out[-1] == ("1 to add, 1 to remove, 1 to replace, 1 to update in place, 1 unchanged; "
                       "server changes need a restart")

    assert gitops.plan(parse("plan", "-c", str(new), "--against", str(old), "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["add"] == ["fresh"] and data["remove"] == ["gone"] and data["replace"] == ["grow"]
    assert data["fields"] == {"grow": ["nctx"], "alias": ["aliases"]} and data["restart_needed"] is True

    assert gitops.plan(parse("plan", "-c", str(old), "--against", str(old))) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no changes"


def test_plan_with_an_invalid_manifest_exits_2_with_key_paths(tmp_path, capsys):
    good = write_manifest(tmp_path / "good.yaml", OLD)
    bad = write_manifest(tmp_path / "bad.yaml", [fake("a", nctx=0)])
    assert gitops.plan(parse("plan", "-c", str(bad), "--against", str(good))) == 2
    assert "models[0].nctx: must be > 0" in capsys.readouterr().err
    assert gitops.plan(parse("plan", "-c", str(good), "--against", str(bad))) == 2
    assert gitops.plan(parse("plan", "-c", str(good), "--against", str(tmp_path / "missing.yaml"))) == 2


def test_plan_against_a_git_revision(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    path = write_manifest(repo / "nexa.yaml", OLD)
    subprocess.run([*git, "add", "nexa.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "old"], check=True)
    write_manifest(path, NEW)
    assert gitops.plan(parse("plan", "-c", str(path), "--against", "git:HEAD", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["add"] == ["fresh"] and data["remove"] == ["gone"] and data["unchanged"] == ["keep"]
    assert gitops.plan(parse("plan", "-c", str(path), "--against", "git:no-such-rev")) == 1
    assert "cannot read nexa.yaml at no-such-rev" in capsys.readouterr().err


# -- against a running gateway: GET /admin/manifest ----------------------------------------------

KEYS_ENV = json.dumps(["env-full-key-123", {"key": "env-limited-key-1", "models": ["a"]}])


@pytest.mark.e2e
def test_admin_manifest_and_plan_against_a_live_gateway(tmp_path, start_server, capsys):
    remote = {"name": "up", "format": "remote", "base_url": "http://user:pw-secret@127.0.0.1:9/v1",
              "api_key": "upstream-secret-1", "options": {"headers": {"x-token": "header-secret"}}}
    path = write_manifest(tmp_path / "nexa.yaml", [fake("a", preload=True), remote])
    # NEXA_API_KEYS as a JSON list, as the Helm chart passes it from a Secret.
    server = start_server(["-c", str(path)], env={"NEXA_API_KEYS": KEYS_ENV})
    url = server.url + "/admin/manifest"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer env-limited-key-1"}).status_code == 403
    answer = httpx.get(url, headers={"authorization": "Bearer env-full-key-123"})
    assert answer.status_code == 200
    for secret in ("env-full-key-123", "env-limited-key-1", "upstream-secret-1", "header-secret", "pw-secret"):
        assert secret not in answer.text
    data = answer.json()
    assert data["server"]["api_keys"][1] == {"key": "<redacted>", "models": ["a"], "name": None}
    assert data["models"][1]["api_key"] == "<redacted>" and "<redacted>@127.0.0.1:9" in data["models"][1]["base_url"]
    assert answer.headers["x-nexa-manifest-hash"] == httpx.get(server.url + "/ready").json()["manifest_hash"]
    assert "api_keys" in answer.headers["x-nexa-env-overrides"].split(",")

    # conftest starts servers with --port, which the CLI folds into the served manifest; a file that
    # says the same port shows no server change.
    new = write_manifest(tmp_path / "new.yaml", [fake("a", preload=True), remote, fake("b")],
                         server={"port": server.port})
    assert gitops.plan(parse("plan", "-c", str(new), "--against", server.url)) == 1
    assert "needs an API key: pass --api-key or set NEXA_API_KEY" in capsys.readouterr().err
    assert gitops.plan(parse("plan", "-c", str(new), "--against", server.url, "--api-key", "env-limited-key-1")) == 1
    assert "refused this API key (403)" in capsys.readouterr().err
    args = parse("plan", "-c", str(new), "--against", server.url + "/v1", "--api-key", "env-full-key-123")
    assert gitops.plan(args) == 0
    out = capsys.readouterr().out
    assert "+ add        b" in out and "= unchanged  a" in out and "= unchanged  up" in out
    assert "restart" not in out and "not compared: api_keys, log_format" in out
    # The key can also come from the environment.
    os.environ[gitops.API_KEY_ENV] = "env-full-key-123"
    try:
        assert gitops.plan(parse("plan", "-c", str(new), "--against", server.url, "--json")) == 0
    finally:
        del os.environ[gitops.API_KEY_ENV]
    assert json.loads(capsys.readouterr().out)["add"] == ["b"]


def test_plan_against_an_unreachable_gateway_is_one_line(tmp_path, capsys):
    import socket

    path = write_manifest(tmp_path / "nexa.yaml", OLD)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        target = f"http://127.0.0.1:{closed.getsockname()[1]}"
        assert gitops.plan(parse("plan", "-c", str(path), "--against", target)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nexa: cannot reach the gateway at {target}") and err.count("\n") == 1


def test_redact_hides_every_secret_and_keeps_the_shape():
    data = {"server": {"api_keys": [{"key": "k" * 10, "models": None, "name": "ci"}]},
            "models": [{"name": "r", "format": "remote", "source": "https://u:p@h/v1", "base_url": "https://u:p@h/v1",
                        "api_key": "sk-123", "options": {"headers": {"api-key": "v"}}},
                       {"name": "g", "format": "gguf", "source": "/m.gguf", "api_key": None, "options": {}}]}
    out = gitops.redact(data)
    assert out["server"]["api_keys"] == [{"key": "<redacted>", "models": None, "name": "ci"}]
    assert out["models"][0]["api_key"] == "<redacted>" and out["models"][0]["options"]["headers"] == {
        "api-key": "<redacted>"}
    assert out["models"][0]["base_url"] == "https://<redacted>@h/v1" == out["models"][0]["source"]
    assert out["models"][1] == data["models"][1] and data["server"]["api_keys"][0]["key"] == "k" * 10
    assert gitops.env_overrides({"NEXA_PORT": "1", "nexa_api_keys": "[]", "NEXA_API_KEY": "x"}) == ["port", "api_keys"]


# -- nexa pull and --offline --------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("http://user:pass-1@h:8/v1", "http://<redacted>@h:8/v1"),
    ("http://TOKEN-1@h/v1", "http://<redacted>@h/v1"),  # a lone user name is often the token itself
    ("https://h/v1?api_key=s1&api-version=2024", "https://h/v1?api_key=<redacted>&api-version=2024"),
    ("https://h/v1?token=s1&sig=s2&access_token=s3&key=s4&X-Amz-Signature=s5",
     "https://h/v1?token=<redacted>&sig=<redacted>&access_token=<redacted>&key=<redacted>"
     "&X-Amz-Signature=<redacted>"),
    ("http://h/v1", "http://h/v1"),
    ("http://u:p@ss@h/v1?auth=x#f", "http://<redacted>@h/v1?auth=<redacted>#f"),
])
def test_redact_url_hides_userinfo_and_secret_query_values(url, shown):
    from gateway.observability.redact import redact_url, scrub

    assert redact_url(url) == shown
    text = f"cannot reach upstream {url}: ConnectError ('{url}')."
    assert scrub(text) == f"cannot reach upstream {shown}: ConnectError ('{shown}')."
    assert scrub(scrub(text)) == scrub(text)


def test_plan_output_and_manifest_errors_hide_url_credentials(tmp_path, start_server, capsys):
    server = start_server(["-c", str(write_manifest(tmp_path / "old.yaml", [fake("a", preload=True)]))])
    new = write_manifest(tmp_path / "new.yaml", [fake("a", preload=True), fake("b")], server={"port": server.port})
    leaky = server.url.replace("http://", "http://plan-user:plan-secret@")
    assert gitops.plan(parse("plan", "-c", str(new), "--against", leaky)) == 0
    out = capsys.readouterr().out
    assert "+ add        b" in out and "<redacted>@127.0.0.1" in out
    assert "plan-user" not in out and "plan-secret" not in out
    # A manifest error quotes the value it rejects: without its credentials.
    bad = write_manifest(tmp_path / "bad.yaml", [{"name": "r", "format": "remote", "source": "http://u:src-secret@h/v1",
                                                  "base_url": "http://u:other-secret@h/v1"}])
    assert gitops.plan(parse("plan", "-c", str(bad), "--against", str(new))) == 2
    err = capsys.readouterr().err
    assert "differs from source" in err and "src-secret" not in err and "<redacted>@h/v1" in err


def pip_env(index_url: str, cache: Path) -> dict[str, str]:
    """The `pip download` subprocess sees only the fake index (as in tests/test_hub.py)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "HTTP_PROXY", "HTTPS_PROXY",
                                                                              "ALL_PROXY"))}
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_INDEX_URL=index_url, PIP_EXTRA_INDEX_URL="", PIP_FIND_LINKS="",
               PIP_NO_CACHE_DIR="1", PIP_TRUSTED_HOST="127.0.0.1", PIP_NO_INPUT="1", PIP_RETRIES="0",
               NO_PROXY="127.0.0.1,localhost", NEXA_CACHE_ROOT=str(cache), NEXA_LOG_FORMAT="json")
    return env


def run_with(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=120, env=env)


@pytest.mark.timeout(240)
def test_pull_downloads_verifies_and_shows_progress(tmp_path):
    data = b"GGUF" + os.urandom(3_000_000)
    source = "pypi:pulled-model==1.0#pulled_model/m.gguf"
    with PackageIndex(tmp_path / "wheels") as index:
        index.add("pulled-model", "1.0", {"pulled_model/m.gguf": data})
        index.add("tampered-model", "1.0", {"tampered_model/m.gguf": b"not what was pinned"})
        env = pip_env(index.url, tmp_path / "cache")
        good = write_manifest(tmp_path / "good.yaml", [
            {"name": "m", "source": source, "sha256": hashlib.sha256(data).hexdigest()}])
        result = run_with(env, "pull", "-c", str(good))
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        kinds = [e.get("event") for e in events]
        assert "fetch" in kinds and "fetched" in kinds
        progress = [e["done"] for e in events if e.get("event") == "progress"]
        assert progress and progress[-1] == len(data) and progress == sorted(progress)
        cached = tmp_path / "cache" / "pypi" / "pulled-model-1.0" / "pulled_model" / "m.gguf"
        assert cached.read_bytes() == data

        bad = write_manifest(tmp_path / "bad.yaml", [
            {"name": "t", "source": "pypi:tampered-model==1.0#tampered_model/m.gguf", "sha256": "0" * 64}])
        result = run_with(env, "pull", "-c", str(bad))
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("nexa: cannot fetch model 't'") and "checksum mismatch" in last and "0" * 64 in last
        assert not (tmp_path / "cache" / "pypi" / "tampered-model-1.0" / "tampered_model" / "m.gguf").exists()


def test_server_offline_with_an_uncached_model_fails_with_one_clear_line(tmp_path):
    from tests.test_deploy import dockerfile

    cmd = dockerfile()["CMD"]  # the container's own command: server -c /etc/nexa/nexa.yaml --offline
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "m", "source": "pypi:never-cached==1.0#n/m.gguf"}])
    args = [str(manifest) if a == "/etc/nexa/nexa.yaml" else a for a in cmd]
    assert "--offline" in args
    env = {**os.environ, "NEXA_CACHE_ROOT": str(tmp_path / "empty"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple/"}
    result = run_with(env, *args)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["nexa: cannot fetch model 'm' from package index never-cached==1.0#n/m.gguf: "
                     "not in the cache and --offline forbids downloading"]


# -- pins: revision and sha256 --------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_hf_sources_honour_revision_and_sha256_online_and_offline(cache, monkeypatch):
    import huggingface_hub

    served = {"v1": b"weights of v1", "main": b"weights of main"}
    calls = []

    def download(repo, filename, revision=None, local_dir=None, **_):
        calls.append((repo, filename, revision))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(served[revision or "main"])
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    spec = ModelSpec(name="h", source="hf:owner/repo/w.gguf", revision="v1", sha256=sha(served["v1"]))
    path = hub.fetch(spec)
    assert path == cache / "hf" / "owner" / "repo" / "v1" / "w.gguf" and path.read_bytes() == served["v1"]
    assert calls == [("owner/repo", "w.gguf", "v1")]
    assert hub.fetch(spec) == path and hub.fetch(spec, offline=True) == path and len(calls) == 1

    wrong = ModelSpec(name="h", source="hf:owner/repo/w.gguf", sha256=sha(b"something else"))
    with pytest.raises(hub.FetchError, match="checksum mismatch") as info:
        hub.fetch(wrong)
    assert "\n" not in str(info.value) and not (cache / "hf" / "owner" / "repo" / "main" / "w.gguf").exists()

    path.write_bytes(b"tampered after the download")  # offline starts check a pinned file too
    with pytest.raises(hub.FetchError, match="checksum mismatch"):
        hub.fetch(spec, offline=True)


def test_local_sources_honour_sha256_and_refuse_a_pinned_folder(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"local")
    assert hub.fetch(ModelSpec(name="l", source=str(model), sha256=sha(b"local"))) == model.resolve()
    with pytest.raises(hub.FetchError, match="checksum mismatch"):
        hub.fetch(ModelSpec(name="l", source=str(model), sha256=sha(b"other")))
    with pytest.raises(hub.FetchError, match="is a folder; name the file"):
        hub.fetch(ModelSpec(name="l", source=str(tmp_path), sha256=sha(b"local")))


def test_remote_models_fetch_nothing(cache):
    spec = ModelSpec(name="r", format="remote", base_url="http://127.0.0.1:9/v1")
    assert hub.fetch(spec) == Path(os.devnull) and hub.fetch(spec, offline=True) == Path(os.devnull)
    assert spec.source == "http://127.0.0.1:9/v1" and not cache.exists()


@pytest.mark.parametrize("model, problem", [
    ({"source": "pypi:x==1#x/m.gguf", "revision": "v2"}, "models[0].revision: only hf: sources have revisions"),
    ({"source": "/models/m.gguf", "revision": "v2"}, "models[0].revision: only hf: sources have revisions"),
    ({"source": "smollm2", "sha256": "a" * 64}, "models[0].sha256: catalog entries carry their own checksums"),
    ({"source": "hf:o/r", "sha256": "a" * 64}, "models[0].sha256: a whole hf: repository has no single checksum"),
    ({"source": "https://h/m.gguf"}, "models[0].source: an http(s) URL is the upstream of a `format: remote` model"),
    ({"source": "smollm2", "api_key": "k"}, "models[0].api_key: only for `format: remote` models"),
])
def test_pins_that_would_be_ignored_are_errors(model, problem):
    with pytest.raises(ManifestError) as info:
        parse_text(yaml.safe_dump({"models": [{"name": "m", **model}]}))
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_pins_that_are_honoured_are_accepted():
    for model in ({"source": "hf:o/r/f.gguf", "revision": "abc123", "sha256": "a" * 64},
                  {"source": "hf:o/r", "file": "f.gguf", "revision": "v1", "sha256": "a" * 64},
                  {"source": "pypi:x==1#x/m.gguf", "sha256": "a" * 64},
                  {"source": "/models/m.gguf", "sha256": "a" * 64}):
        parse_text(yaml.safe_dump({"models": [{"name": "m", **model}]}))
