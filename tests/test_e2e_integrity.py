"""A cached model corrupted in place (size and mtime kept) is caught, through the real CLI and
a real gateway, on a private copy of the bundled model (the shared cache is never touched)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.manifest import hub
from tests.conftest import NEXA, ROOT, corrupt_in_place, models, write_manifest


@pytest.fixture
def corrupt_cache(tmp_path: Path, smollm2_path: Path) -> tuple[Path, Path]:
    """A private cache holding a copy of SmolLM2 and its marker, with 1 MiB overwritten mid-file."""
    root = tmp_path / "cache"
    dest = root / smollm2_path.relative_to(hub.cache_root())
    dest.parent.mkdir(parents=True)
    shutil.copy2(smollm2_path, dest)
    shutil.copy2(hub._marker(smollm2_path), hub._marker(dest))
    corrupt_in_place(dest)
    return root, dest


def test_a_corrupt_cached_model_is_failed_with_its_reason_and_check_verify_names_it(corrupt_cache, tmp_path: Path,
                                                                                    start_server):
    root, dest = corrupt_cache
    env = {"NEXA_CACHE_ROOT": str(root)}
    manifest = write_manifest(tmp_path / "nexa.yaml", [{"name": "chat", "source": "smollm2", "preload": False}])

    checked = subprocess.run([*NEXA, "check", "--verify", "-c", str(manifest)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env={**os.environ, **env})
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "chat: FAILED" in checked.stdout and str(dest) in checked.stdout and "corrupt" in checked.stdout

    server = start_server(["-c", str(manifest)], env=env)  # the start itself does not hash (no preload here)
    answer = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert answer.status_code == 503, answer.text
    assert "corrupt" in answer.json()["error"]["message"]
    card = models(server.url)["chat"]
    assert card["state"] == "failed"
    assert "corrupt" in card["error"] and str(dest) in card["error"] and "nexa pull" in card["error"]
