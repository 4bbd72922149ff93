"""The prompt cache on disk (backends/prompt_cache_disk.py): the file format alone, then a real llama.cpp
engine (SmolLM2) in-process: closed, loaded again with the same folder, its conversation is restored
from disk and answers as a live one does; damaged or foreign entries are skipped, never fatal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends import prompt_cache_disk as disk
from backends.base import SamplingParams
from backends.prompt_cache import PromptCache
from schemas.manifest import ModelSpec, ServerSettings
from tests.conftest import ROOT, corrupt_in_place, write_manifest

FINGERPRINT = {"model": "/m.gguf", "model_bytes": 10, "model_mtime_ns": 1, "llama_cpp": "0.3.36", "nctx": 2048}


def filled(tokens: list[list[int]], size: int = 5000) -> PromptCache:
    cache = PromptCache(10**6)
    for i, entry in enumerate(tokens):
        cache.put(entry, bytearray(os.urandom(size)), size, pos_min=i or None)
    return cache


def test_an_entry_file_round_trips_its_tokens_state_and_window_start(tmp_path):
    tokens, state = np.arange(1000, dtype=np.int32), bytearray(os.urandom(70_000))
    written = disk.write_entry(tmp_path / "e.entry", "abc", tokens, state, len(state), 17)
    assert written == (tmp_path / "e.entry").stat().st_size and not list(tmp_path.glob("*.tmp"))
    read, stored, pos_min = disk.read_entry(tmp_path / "e.entry", "abc")
    assert read.tolist() == tokens.tolist() and pos_min == 17 and stored.size == len(state)
    assert bytes(disk.read_state(stored)) == bytes(state)
    with pytest.raises(disk.Damaged, match="another model"):
        disk.read_entry(tmp_path / "e.entry", "other")


def test_a_store_saves_a_cache_and_loads_it_back_lazily_in_the_same_order(tmp_path):
    old = filled([[1] * 100, [2] * 100, [3] * 100])
    store = disk.Store(tmp_path / "m", "m", FINGERPRINT)
    store.save(old)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [disk.INDEX] + [disk.entry_name(e.tokens) for e in old.entries()])
    new = PromptCache(10**6)
    assert disk.Store(tmp_path / "m", "m", dict(FINGERPRINT)).load(new) == 3
    assert [e.tokens.tolist() for e in new.entries()] == [e.tokens.tolist() for e in old.entries()]
    assert new.bytes == old.bytes and all(e.data is None for e in new.entries())  # states are read at restore
    assert [bytes(e.stored.read()) for e in new.entries()] == [bytes(e.data) for e in old.entries()]
    assert new.stats.saves == 0
    new.put([4] * 100, bytearray(10), 10)  # a new state; one old entry was dropped: the next save says so
    new.discard(new.entries()[0])
    store.save(new)
    again = PromptCache(10**6)
    assert store.load(again) == 3 and len(list((tmp_path / "m").iterdir())) == 4
    assert {e.tokens[0] for e in again.entries()} == {2, 3, 4}


def test_a_smaller_bound_keeps_the_most_recent_entries(tmp_path):
    disk.Store(tmp_path, "m", FINGERPRINT).save(filled([[1] * 100, [2] * 100, [3] * 100]))
    small = PromptCache(10_000)
    disk.Store(tmp_path, "m", FINGERPRINT).load(small)
    assert [e.tokens[0] for e in small.entries()] == [2, 3] and small.bytes <= 10_000


def test_damaged_and_foreign_entries_are_skipped_with_a_reason(tmp_path, caplog):
    store = disk.Store(tmp_path, "m", FINGERPRINT)
    cache = filled([[1] * 100, [2] * 100, [3] * 100, [5] * 100])
    store.save(cache)
    names = [disk.entry_name(e.tokens) for e in cache.entries()]
    with open(tmp_path / names[0], "r+b") as handle:
        handle.truncate(3000)
    (tmp_path / names[1]).write_bytes(b"garbage")
    corrupt_in_place(tmp_path / names[2], 100)  # in the state: found only when it is read
    loaded = PromptCache(10**6)
    with caplog.at_level(logging.WARNING, "nexa.backends.prompt_cache"):
        assert store.load(loaded) == 2
    reasons = [r.reason for r in caplog.records if getattr(r, "event", "") == "prompt_cache_skipped"]
    assert any("truncated" in r for r in reasons) and any("magic" in r for r in reasons)
    damaged = loaded.entries()[0]
    with pytest.raises(disk.Damaged, match="CRC"):
        damaged.stored.read()
    assert bytes(loaded.entries()[1].stored.read()) == bytes(cache.entries()[3].data)
    caplog.clear()
    changed = {**FINGERPRINT, "model_mtime_ns": 2}
    with caplog.at_level(logging.WARNING, "nexa.backends.prompt_cache"):
        assert disk.Store(tmp_path, "m", changed).load(PromptCache(10**6)) == 0
    assert "model_mtime_ns" in caplog.records[-1].reason
    (tmp_path / disk.INDEX).write_text("{not json")
    assert store.load(PromptCache(10**6)) == 0  # a warning, not an exception


def test_the_folder_is_an_absolute_server_setting_and_check_shows_each_model_s(tmp_path):
    assert ServerSettings().prompt_cache_dir is None  # unset: off
    with pytest.raises(ValueError, match="absolute"):
        ServerSettings(prompt_cache_dir="relative/cache")
    manifest = write_manifest(tmp_path / "nexa.yaml", [
        {"name": "kept", "source": "/nowhere/m.gguf", "prompt_cache": "64MiB"},
        {"name": "off", "source": "/nowhere/m.gguf", "prompt_cache": 0}], {"prompt_cache_dir": str(tmp_path)})
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(manifest)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"kept: prompt_cache 64.0MiB, kept across restarts in {disk.model_dir(tmp_path, 'kept')}" in shown.stdout
    assert "off: prompt_cache off\n" in shown.stdout


# -- a real engine ---------------------------------------------------------------------------------

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, top_k=1, seed=1)


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a careful assistant who knows about rivers. " * 20}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Tell me fact {i} about rivers, in one sentence. " * 4},
                     {"role": "assistant", "content": f"Fact {i}: rivers are interesting for reason {i}. " * 3}]
    return messages


def load(path: Path, directory: Path | None, parallel: int = 1):
    from backends.registry import backend_for

    spec = ModelSpec(name="smol-disk", source=str(path), nctx=2048, n_threads=2, device="cpu", parallel=parallel,
                     prompt_cache="256MiB")
    backend = backend_for(spec).load(spec, path)
    if directory is not None:
        backend.persist_prompt_cache(str(directory))
    return backend


def ask(backend, messages: list[dict]):
    deltas = list(backend.chat(messages, GREEDY, lambda: False))
    return "".join(d.text for d in deltas), deltas[-1].usage


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_closed_engine_s_conversation_is_restored_by_the_next_one(smollm2_path, tmp_path, parallel):
    main = conversation(3)
    follow = main + [{"role": "user", "content": "Which river is longest?"}]
    first = load(smollm2_path, tmp_path, parallel)
    try:
        ask(first, main)  # only live in the context: the close saves it
    finally:
        first.close()
    index = json.loads((disk.model_dir(tmp_path, "smol-disk") / disk.INDEX).read_text())
    assert len(index["entries"]) == 1
    second, plain = load(smollm2_path, tmp_path, parallel), load(smollm2_path, None)
    try:
        assert len(second.prompt_cache()) == 1
        answer, usage = ask(second, follow)
        assert usage.cached_tokens >= 0.9 * usage.prompt_tokens and second.prompt_cache().stats.hits == 1
        assert answer == ask(plain, follow)[0]
    finally:
        second.close()
        plain.close()
