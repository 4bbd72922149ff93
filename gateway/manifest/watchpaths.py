"""Which folders to watch for a file that may be a symlink, and how it is mounted.

A file can change without anything happening to it: in a Kubernetes ConfigMap mount
`/etc/nexa/nexa.yaml` is a symlink to `..data/nexa.yaml`, and an update swaps the
`..data` symlink (a rename in `/etc/nexa`) and deletes the folder the file lived in.
So the reloader never resolves a path once: it reads through the path the user gave,
and watches the folder holding that path plus the folder of every symlink hop, all
recomputed after every change (see gateway/manifest/reload.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_HOPS = 40  # the kernel's own limit on symlink chains
MOUNTINFO = Path("/proc/self/mountinfo")


def absolute(path: str | Path) -> Path:
    """An absolute path that keeps its symlinks (Path.resolve would freeze them)."""
    return Path(os.path.abspath(os.fspath(path)))


def hops(path: Path) -> list[Path]:
    """The path and every symlink it passes through on the way to the file, unresolved."""
    chain = [path]
    current = path
    for _ in range(MAX_HOPS):
        try:
            target = os.readlink(current)
        except OSError:  # not a symlink (or gone)
            break
        current = absolute(current.parent / target)
        chain.append(current)
    return chain


def watched_folders(paths: list[Path]) -> list[str]:
    """Every existing folder whose change can change what `paths` read.

    The folder holding each path (a ConfigMap's `..data` swap, an editor's rename,
    an in-place edit, a re-pointed symlink), the folder of each symlink hop, and the
    folder of the file finally read; de-duplicated by their real location."""
    folders: dict[str, str] = {}
    for path in paths:
        candidates = [hop.parent for hop in hops(path)] + [path.resolve().parent]
        for folder in candidates:
            try:
                real = os.path.realpath(folder)
                if os.path.isdir(real):
                    folders.setdefault(real, str(folder))
            except OSError:
                continue
    return sorted(folders)


def file_mounts(mountinfo: str | None = None) -> set[str]:
    """Mount points of this process (from /proc/self/mountinfo); empty where there is none."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return set()
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:  # field 5 is the mount point, with spaces etc. octal-escaped
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def how_watched(path: Path, mountinfo: str | None = None) -> tuple[str, str]:
    """(kind, sentence) saying how changes to `path` are seen, for the log at start.

    kind: "missing", "file-mount" (a Kubernetes `subPath` or a bind-mounted single file:
    an update of its source never reaches it), "configmap" (the `..data` symlink layout),
    "symlink" or "file"."""
    chain = hops(path)
    final = path.resolve()
    if not final.exists():
        return "missing", f"{path} does not exist yet; its folder {path.parent} is watched"
    mounts = file_mounts(mountinfo)
    if final.is_file() and (str(final) in mounts or str(path) in mounts):
        return "file-mount", (f"{path} is a single mounted file (a Kubernetes subPath or a bind-mounted file): "
                              "updates of its source never reach it, so reloads see only in-place edits; "
                              "mount the whole folder instead")
    if len(chain) > 1 and any(hop.parent.name == "..data" or hop.name == "..data" for hop in chain[1:]):
        return "configmap", (f"{path} is a ConfigMap-style mount ({' -> '.join(map(str, chain))}); "
                             f"watching {path.parent} for the ..data swap")
    if len(chain) > 1:
        return "symlink", f"{path} is a symlink ({' -> '.join(map(str, chain))}); re-resolved on every change"
    return "file", f"{path} is a plain file; watching {path.parent} (in-place edits and replacements)"
