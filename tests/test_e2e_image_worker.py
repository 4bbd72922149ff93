"""End to end: stable-diffusion.cpp runs in a worker process per image model, so `timeout_s`
and a client that leaves really stop a generation (the synthetic SDXS checkpoint of
tests/synth/sd_checkpoint.py, a real `nexa server`, httpx). Also: a full image output folder is
a clear 507 that leaves no file behind (on a tiny tmpfs; skipped where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import Server, wait_for, write_manifest
from tests.synth.sd_checkpoint import sdxs_checkpoint

pytest.importorskip("stable_diffusion_cpp")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TIMEOUT_S = 60  # room for a small image on a busy 2-core machine
# Far longer than TIMEOUT_S on any CPU: the largest size, the most steps, guidance on.
LONG = {"prompt": "a lighthouse", "width": 1024, "height": 1024, "sample_steps": 50, "cfg_scale": 7}
SHORT = {"prompt": "a lighthouse", "width": 64, "height": 64, "sample_steps": 1, "cfg_scale": 1}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Iterator[tuple[Path, bool]]:
    """The image output folder: a 256 KiB tmpfs when this user may mount one."""
    folder = tmp_path_factory.mktemp("worker") / "outputs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def server(outputs) -> Iterator[Server]:
    folder, _ = outputs
    tmp = folder.parent
    manifest = write_manifest(tmp / "nexa.yaml", [
        {"name": "sdxs", "type": "COMPUTER_VISION", "format": "gguf", "source": str(sdxs_checkpoint()),
         "preload": True, "n_threads": 2, "timeout_s": TIMEOUT_S, "options": {"default_steps": 1}},
    ], server={"image_output_dir": str(folder)})
    server = Server(["-c", str(manifest)], tmp)
    yield server
    server.stop()


def b64(server: Server, body: dict, timeout: float = 180) -> httpx.Response:
    return httpx.post(server.url + "/v1/txt2img", json=body, timeout=timeout)


def restarts(server: Server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if '"worker_restarted"' in line]


def test_a_generation_past_timeout_s_is_killed_and_the_next_request_is_served(server):
    answer = b64(server, LONG)
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["code"] == "timeout"
    wait_for(lambda: len(restarts(server)) == 1, timeout=120, interval=0.2)
    # Without the kill this request would queue behind the long one and time out as well.
    assert b64(server, SHORT).status_code == 200
    assert server.proc.poll() is None


def test_a_client_that_leaves_frees_the_engine(server):
    before = len(restarts(server))
    with pytest.raises(httpx.ReadTimeout):
        b64(server, LONG, timeout=2)
    wait_for(lambda: len(restarts(server)) == before + 1, timeout=120, interval=0.2)
    assert restarts(server)[-1]["reason"] == "its caller left or timed out"
    assert b64(server, SHORT).status_code == 200


def test_a_full_output_folder_is_a_507_and_leaves_no_file(server, outputs):
    folder, mounted = outputs
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (tests/test_images_unit.py covers the store)")
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    before = sorted(p.name for p in folder.iterdir())
    answer = b64(server, SHORT)
    assert answer.status_code == 507, answer.text
    assert answer.json()["error"]["code"] == "insufficient_storage"
    assert "no space left on device" in answer.json()["error"]["message"]
    assert sorted(p.name for p in folder.iterdir()) == before  # no 0-byte img-*.png, no partial file
    (folder / "filler").unlink()
    assert b64(server, SHORT).status_code == 200
