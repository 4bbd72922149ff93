"""End to end: `server.prompt_cache_dir` keeps a real gateway's prompt cache (SmolLM2) across a SIGTERM
restart. An agent's next turn after the restart is served from the saved state (usage and /metrics say
so) and answers as a gateway without the folder does; without the folder it is prefilled again. A damaged
entry or a changed model file is skipped with a warning, and the request still answers the same."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import openai
import pytest

from backends import prompt_cache_disk as disk
from tests.conftest import Server, corrupt_in_place, metric, write_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def conversation() -> list[dict]:
    """About 1100 tokens: a coding agent's system prompt and a few turns."""
    messages = [{"role": "system", "content": "You are a coding agent working in a repository. " * 60}]
    for i in range(5):
        messages += [{"role": "user", "content": f"Step {i}: look at module {i} and tell me what it does. " * 6},
                     {"role": "assistant", "content": f"Module {i} parses configuration files number {i}. " * 6}]
    return messages[:-1]  # ends with the user's turn: the model answers it


def start(tmp: Path, source: Path, directory: Path | None) -> Server:
    models = [{"name": "agent", "source": str(source), "nctx": 4096, "prompt_cache": "256MiB", "preload": True},
              {"name": "plain", "source": str(source), "nctx": 4096, "prompt_cache": 0}]
    server = {"prompt_cache_dir": str(directory)} if directory else {}
    return Server(["-c", str(write_manifest(tmp / "nexa.yaml", models, server))], tmp)


def chat(server: Server, messages: list[dict], model: str = "agent"):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    return answer.choices[0].message.content, answer.usage


def next_turn(server: Server) -> list[dict]:
    """The conversation, the model's answer to its last turn, and one new user turn."""
    main = conversation()
    answer, _ = chat(server, main)
    return main + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Now refactor module 2."}]


def prefilled(server: Server) -> float:
    return metric(server.url, "nexa_prompt_cache_prefilled_tokens_total", model="agent")


def events(server: Server, name: str) -> list[dict]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


def test_the_next_turn_after_a_restart_is_served_from_the_folder(tmp_path, smollm2_path):
    directory = tmp_path / "prompt-cache"
    first = start(tmp_path, smollm2_path, directory)
    turn = next_turn(first)
    first.stop()
    saved = events(first, "prompt_cache_saved")
    assert saved and saved[-1]["entries"] >= 1 and saved[-1]["bytes"] > 0

    without = start(tmp_path, smollm2_path, None)  # the same restart without the folder: prefilled again
    try:
        before = prefilled(without)
        reference, usage = chat(without, turn)
        assert usage.prompt_tokens > 1000
        assert usage.prompt_tokens_details.cached_tokens < 0.5 * usage.prompt_tokens
        assert prefilled(without) - before >= 0.5 * usage.prompt_tokens
    finally:
        without.stop()

    again = start(tmp_path, smollm2_path, directory)
    try:
        assert events(again, "prompt_cache_loaded")[-1]["entries"] >= 1
        before = prefilled(again)
        answer, usage = chat(again, turn)
        cached = usage.prompt_tokens_details.cached_tokens
        assert cached >= 0.9 * usage.prompt_tokens
        assert prefilled(again) - before == usage.prompt_tokens - cached  # only the new tokens
        assert metric(again.url, "nexa_prompt_cache_hits_total", model="agent") >= 1
        assert answer == reference
    finally:
        again.stop()


def test_a_damaged_entry_and_a_changed_model_file_are_skipped(tmp_path, smollm2_path):
    source = tmp_path / "model" / smollm2_path.name
    source.parent.mkdir()
    shutil.copy(smollm2_path, source)
    directory = tmp_path / "prompt-cache"
    first = start(tmp_path, source, directory)
    turn = next_turn(first)
    first.stop()
    entries = list(disk.model_dir(directory, "agent").glob("*" + disk.SUFFIX))
    assert len(entries) == 1
    corrupt_in_place(entries[0], 4096)  # inside the state: size, header and tokens still look right

    damaged = start(tmp_path, source, directory)
    try:
        answer, usage = chat(damaged, turn)
        assert usage.prompt_tokens_details.cached_tokens < 0.5 * usage.prompt_tokens
        assert any("CRC" in line["reason"] for line in events(damaged, "prompt_cache_skipped"))
        reference, _ = chat(damaged, turn, model="plain")
        assert answer == reference
    finally:
        damaged.stop()  # saves the turn's own state: the folder holds a sound entry again

    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new model file, as far as a state knows
    changed = start(tmp_path, source, directory)
    try:
        skipped = events(changed, "prompt_cache_skipped")
        assert skipped and "model_mtime_ns" in skipped[-1]["reason"]
        answer, usage = chat(changed, turn)
        assert usage.prompt_tokens_details.cached_tokens < 0.5 * usage.prompt_tokens
        assert answer == reference
    finally:
        changed.stop()
