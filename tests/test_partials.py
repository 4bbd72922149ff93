"""Partial downloads left by a killed fetch are removed by the next pull or start; a live
fetch's folder and the cached files are never touched."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gateway.manifest import partials
from tests.conftest import ROOT
from tests.pypi_index import PackageIndex
from tests.test_hub import PIP_TIMEOUT, cache, index, sha  # noqa: F401 - fixtures

HOUR = 3600


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def _partial(parent: Path, name: str, *, lock: bool = True, age: float = HOUR) -> Path:
    """A partial folder as a killed fetch leaves it: a big file, its owner lock, an old mtime."""
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "assembled").write_bytes(b"\0" * 100_000)
    if lock:
        (folder / partials.OWNER_LOCK).write_text("")
    _age(folder, age)
    return folder


def test_a_killed_fetch_leaves_a_folder_the_next_sweep_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(partials, "PARTIAL_MIN_AGE_S", 0.0)
    code = ("import sys, time; from pathlib import Path; from gateway.manifest.partials import partial_dir\n"
            "with partial_dir(Path(sys.argv[1]), 'nexa-fetch-') as d:\n"
            "    (d / 'assembled').write_bytes(b'x' * 1000); print(d, flush=True); time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache" / "m")], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(child.stdout.readline().strip())
        assert (folder / "assembled").exists()
        assert partials.sweep_partials(tmp_path / "cache") == []  # alive: its lock is held
        assert folder.exists()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert folder.exists()  # kill -9 ran no clean-up
        assert partials.sweep_partials(tmp_path / "cache") == [folder]
        assert not folder.exists() and (tmp_path / "cache" / "m").is_dir()
    finally:
        child.kill()
        child.wait(10)


@PIP_TIMEOUT
def test_a_pull_removes_stale_partials_and_keeps_good_files_and_live_fetches(index: PackageIndex, cache: Path,
                                                                            tmp_path: Path):
    from gateway import cli

    data = b"GGUF" + b"good weights" * 1000
    index.add("good-data", "1.0", {"good_data/w.gguf": data})
    manifest = tmp_path / "nexa.yaml"
    manifest.write_text(f"models:\n  - name: good\n    source: 'pypi:good-data==1.0#good_data/w.gguf'\n"
                        f"    sha256: {sha(data)}\n")
    assert cli.main(["pull", "-c", str(manifest)]) == 0
    good = cache / "pypi" / "good-data-1.0" / "good_data" / "w.gguf"
    stamp = good.stat().st_mtime_ns

    crashed_fetch = _partial(good.parent, "nexa-fetch-dead1234")
    crashed_wheels = _partial(cache / "catalog" / "gemma", "nexa-wheels-dead5678")
    legacy = _partial(cache / "catalog" / "smollm2", "nexa-fetch-old", lock=False, age=7 * HOUR)
    young = _partial(good.parent, "nexa-fetch-young", age=1)  # its owner may not have locked it yet
    recent_legacy = _partial(good.parent, "nexa-fetch-recent", lock=False, age=HOUR)
    live = _partial(good.parent, "nexa-fetch-live")
    with open(live / partials.OWNER_LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a fetch that is still running
        index.requests.clear()
        assert cli.main(["pull", "-c", str(manifest)]) == 0

    assert not crashed_fetch.exists() and not crashed_wheels.exists() and not legacy.exists()
    assert young.exists() and recent_legacy.exists() and live.exists()
    assert good.read_bytes() == data and good.stat().st_mtime_ns == stamp  # the cached file stays as it was
    assert index.downloads() == []


def test_wheel_folders_older_versions_left_in_the_temp_folder_go_after_six_hours(tmp_path: Path):
    old = Path(tempfile.mkdtemp(prefix="nexa-wheels-", dir=tempfile.gettempdir()))
    recent = Path(tempfile.mkdtemp(prefix="nexa-wheels-", dir=tempfile.gettempdir()))
    try:
        (old / "big.whl").write_bytes(b"\0" * 1000)
        _age(old, 7 * HOUR)
        _age(recent, HOUR)  # no lock file: an older version's, maybe still running
        removed = partials.sweep_partials(tmp_path / "empty-cache")
        assert old in removed and not old.exists()
        assert recent.exists() and recent not in removed
    finally:
        for folder in (old, recent):
            shutil.rmtree(folder, ignore_errors=True)
