"""Manifest reload wherever the file lives: a Kubernetes ConfigMap mount updated the
way the kubelet does it, a plain file edited in place or replaced by an editor, a
symlink re-pointed elsewhere. Real `nexa server --reload` processes on loopback; the
engine is the fake one (tests/fakes.py) because this is about the gateway."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from gateway.manifest import watchpaths
from tests.conftest import metric, models, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAKE = {"source": "/dev/null", "backend": "tests.fakes:FakeBackend"}


def manifest(*names: str) -> str:
    return yaml.safe_dump({"server": {"reload_debounce_ms": 50}, "models": [{"name": n, **FAKE} for n in names]})


class ConfigMapMount:
    """A folder laid out and updated exactly as the kubelet's atomic writer does it:
    `nexa.yaml -> ..data/nexa.yaml`, `..data -> ..2026_11_30_...`; an update writes a new
    timestamped folder, points `..data_tmp` at it, renames that over `..data` and deletes
    the old folder."""

    def __init__(self, root: Path, files: dict[str, str]):
        self.root = root
        self.count = 0
        root.mkdir(parents=True)
        folder = self._write(files)
        os.symlink(folder.name, root / "..data")
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def _write(self, files: dict[str, str]) -> Path:
        self.count += 1
        folder = self.root / f"..2026_11_30_14_29_{self.count:02d}.{os.getpid()}{self.count}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        return folder

    def update(self, files: dict[str, str]) -> None:
        old = self.root / os.readlink(self.root / "..data")
        new = self._write(files)
        os.symlink(new.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")
        shutil.rmtree(old)


def ok_reloads(url: str) -> float:
    return metric(url, "nexa_manifest_reloads_total", outcome="ok")


def test_configmap_update_reaches_a_running_gateway(tmp_path, start_server):
    mount = ConfigMapMount(tmp_path / "etc-nexa", {"nexa.yaml": manifest("a")})
    path = mount.root / "nexa.yaml"
    server = start_server(["-c", str(path), "--reload"])
    assert set(models(server.url)) == {"a"}
    assert "ConfigMap-style mount" in server.log()
    mount.update({"nexa.yaml": manifest("a", "b")})
    wait_for(lambda: "b" in models(server.url))
    # the second update too: the folder the gateway first read from is gone by now
    mount.update({"nexa.yaml": manifest("a", "c")})
    wait_for(lambda: "c" in models(server.url) and "b" not in models(server.url))
    time.sleep(0.5)
    assert ok_reloads(server.url) == 2  # one reload per update, none for the periodic re-checks
    assert metric(server.url, "nexa_manifest_reloads_total", outcome="invalid") == 0


def test_plain_file_edits_and_re_pointed_symlinks(tmp_path, start_server):
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "nexa.yaml"
    path.write_text(manifest("a"))
    server = start_server(["-c", str(path)], env={"NEXA_RELOAD": "true"})
    url = server.url
    assert "is a plain file" in server.log()
    # 1. edited in place (same inode)
    inode = path.stat().st_ino
    with open(path, "r+") as file:
        file.truncate(0)
        file.write(manifest("a", "b"))
    assert path.stat().st_ino == inode
    wait_for(lambda: "b" in models(url))
    # 2. replaced by an editor: written beside it, renamed over it
    (folder / ".nexa.yaml.swp").write_text(manifest("a", "c"))
    os.replace(folder / ".nexa.yaml.swp", path)
    wait_for(lambda: "c" in models(url) and "b" not in models(url))
    # 3. replaced by a symlink to a file in another folder, then the link is re-pointed
    targets = tmp_path / "srv"
    (targets / "one").mkdir(parents=True)
    (targets / "two").mkdir()
    (targets / "one" / "nexa.yaml").write_text(manifest("a", "d"))
    (targets / "two" / "nexa.yaml").write_text(manifest("a", "e"))
    os.symlink(targets / "one" / "nexa.yaml", folder / "link.tmp")
    os.replace(folder / "link.tmp", path)
    wait_for(lambda: "d" in models(url) and "c" not in models(url))
    os.symlink(targets / "two" / "nexa.yaml", folder / "link.tmp")
    os.replace(folder / "link.tmp", path)
    wait_for(lambda: "e" in models(url) and "d" not in models(url))
    # 4. the file the link now points to is edited in place, in a folder that was not watched at start
    (targets / "two" / "nexa.yaml").write_text(manifest("a", "f"))
    wait_for(lambda: "f" in models(url) and "e" not in models(url))
    time.sleep(0.5)
    assert ok_reloads(url) == 5


# -- which folders are watched, and how a path is described ------------------------------


def test_watched_folders_follow_every_symlink_hop(tmp_path):
    mount = ConfigMapMount(tmp_path / "cm", {"nexa.yaml": "x: 1\n"})
    path = mount.root / "nexa.yaml"
    root, data = os.path.realpath(mount.root), os.path.realpath(mount.root / "..data")
    assert watchpaths.watched_folders([path]) == sorted([root, data])
    kind, how = watchpaths.how_watched(path, mountinfo="")
    assert kind == "configmap" and "..data swap" in how
    mount.update({"nexa.yaml": "x: 2\n"})
    assert not os.path.exists(data)  # the old folder is gone; the path still reads the new file
    assert path.read_text() == "x: 2\n"
    assert watchpaths.watched_folders([path]) == sorted([root, os.path.realpath(mount.root / "..data")])
    # the user's path is kept as given: resolving it would freeze the old folder
    assert watchpaths.absolute(path) == path and path.resolve() != path


def test_a_single_mounted_file_is_recognised(tmp_path):
    """A Kubernetes subPath mount (or `docker -v file:file`) is a mount point that is a file;
    no ConfigMap update ever reaches it, which the gateway says at start."""
    path = tmp_path / "my dir" / "nexa.yaml"
    path.parent.mkdir()
    path.write_text("x: 1\n")
    escaped = str(path).replace(" ", "\\040")
    mountinfo = (f"22 1 0:21 / / rw,relatime - overlay overlay rw\n"
                 f"571 22 253:1 /var/lib/kubelet/pods/p/volume-subpaths/config/nexa/0 {escaped} ro,relatime - ext4 "
                 f"/dev/vda1 rw\n")
    assert str(path) in watchpaths.file_mounts(mountinfo)
    kind, how = watchpaths.how_watched(path, mountinfo=mountinfo)
    assert kind == "file-mount" and "subPath" in how and "mount the whole folder" in how
    assert watchpaths.how_watched(path, mountinfo="")[0] == "file"
    assert watchpaths.how_watched(tmp_path / "absent.yaml", mountinfo="")[0] == "missing"


def test_the_gateway_warns_at_start_about_a_single_mounted_file(tmp_path, monkeypatch, caplog):
    from gateway.manifest.reload import Reloader

    path = tmp_path / "nexa.yaml"
    path.write_text(manifest("a"))
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"571 22 253:1 /volume-subpaths/config/nexa/0 {path} ro,relatime - ext4 /dev/vda1 rw\n")
    monkeypatch.setattr(watchpaths, "MOUNTINFO", mountinfo)
    with caplog.at_level("INFO", logger="nexa.gateway.manifest.reload"):
        Reloader(gateway=None, manifest_path=str(path), watch=False)._describe()  # warned even without watching
    assert [(r.levelname, r.kind) for r in caplog.records] == [("WARNING", "file-mount")]
    assert "subPath" in caplog.records[0].getMessage()
    caplog.clear()
    mountinfo.write_text("")
    with caplog.at_level("INFO", logger="nexa.gateway.manifest.reload"):
        Reloader(gateway=None, manifest_path=str(path), watch=True)._describe()
    assert [(r.levelname, r.kind) for r in caplog.records] == [("INFO", "file")]
