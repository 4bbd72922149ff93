"""Partial downloads: temporary folders that a crashed fetch cannot leave behind for long.

A fetch assembles its file (and keeps the wheels it downloads) in a folder named with one of
PARTIAL_PREFIXES beside the destination, and holds an exclusive `flock` on the folder's
OWNER_LOCK while it works. The kernel drops that lock when the process dies, however it dies
(kill -9, OOM killer, power loss), so the next pull or start can tell a crashed fetch's
leftovers (nobody holds the lock) from a running one (`sweep_partials`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger("nexa.gateway.manifest.partials")

PARTIAL_PREFIXES = ("nexa-fetch-", "nexa-wheels-")
OWNER_LOCK = ".owner.lock"
PARTIAL_MIN_AGE_S = 60.0  # never touch a folder this young (its owner may not have locked it yet)
UNLOCKED_STALE_S = 6 * 3600.0  # a folder without a lock file (older versions) is stale after this


@contextlib.contextmanager
def partial_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder in `parent`, locked by this process while it exists, removed after."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        with open(folder / OWNER_LOCK, "w") as owner:
            fcntl.flock(owner, fcntl.LOCK_EX)
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_partials(root: Path) -> list[Path]:
    """Remove the partial-download folders crashed fetches left under `root` (the cache), and
    the wheel folders older versions left in the system temp folder; returns what was removed."""
    removed = []
    for path in _candidates(root):
        if _stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed a partial download left by an interrupted fetch: %s", path,
                     extra={"event": "partial_removed", "path": str(path)})
    return removed


def _candidates(root: Path) -> Iterator[Path]:
    for folder, subfolders, _ in os.walk(root):
        for name in [n for n in subfolders if n.startswith(PARTIAL_PREFIXES)]:
            subfolders.remove(name)  # never walk into a partial folder
            yield Path(folder) / name
    with contextlib.suppress(OSError):
        yield from (p for p in Path(tempfile.gettempdir()).glob("nexa-wheels-*") if p.is_dir())


def _stale(folder: Path) -> bool:
    """Nobody holds the folder's lock (its owner died), or it has none and is old."""
    try:
        age = time.time() - folder.stat().st_mtime
    except OSError:
        return False
    if age < PARTIAL_MIN_AGE_S:
        return False
    try:
        fd = os.open(folder / OWNER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return age >= UNLOCKED_STALE_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False  # a live fetch holds it
    finally:
        os.close(fd)
