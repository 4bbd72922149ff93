"""Is a cached model file what it should be: markers, digests, and when to hash again.

A marker beside each file (`FILE.sha256`: digest, size, mtime) lets a start find a verified file
without reading it; it cannot see bytes changed in place (a failing disk, a stray write), so
content is hashed again where it matters (`content_ok`, by mode):
  first_load  the first time this process loads the file (manifest `server.verify`, the default)
  always      at every load (reloads, loads after an eviction); `nexa pull` and `check --verify`
  never       trust the marker (size and mtime)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("nexa.gateway.manifest.integrity")

_checked: set[tuple[str, int, int, int, int]] = set()  # files whose content this process has hashed


class CorruptFile(Exception):
    """A cached file's bytes differ from its digest: one line naming the file and both digests."""


def marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_verified(path: Path, sha256: str | None) -> bool:
    if not path.exists():
        return False
    if sha256 is None:
        return marker(path).exists() or path.is_dir()
    stat = path.stat()
    try:
        recorded = marker(path).read_text().split()
    except OSError:
        return False
    return recorded == [sha256.lower(), str(stat.st_size), str(stat.st_mtime_ns)]


def recorded_digest(path: Path) -> str | None:
    try:
        return marker(path).read_text().split()[0]
    except (OSError, IndexError):
        return None


def content_ok(path: Path, sha256: str | None, check: tuple[str, bool]) -> bool:
    """Hash a cached file whose marker matched, when `check` asks for it.

    True: use the file. False (repair only): the corrupt file was removed, fetch it again.
    Otherwise a corrupt file raises CorruptFile naming it. The digest compared is the pinned
    one, or for an unpinned file the one recorded when it was downloaded."""
    mode, repair = check
    expected = (sha256 or recorded_digest(path) or "").lower()
    if mode == "never" or not expected or not path.is_file():
        return True
    stat = path.stat()
    key = _identity(path, stat)
    if mode == "first_load" and key in _checked:
        return True
    started = time.monotonic()
    actual = sha256_of(path)
    log.info("verified %s (%.1f MB) in %.2fs", path.name, stat.st_size / 1e6, time.monotonic() - started,
             extra={"event": "verified", "file": str(path), "ok": actual == expected})
    if actual == expected:
        _checked.add(key)
        return True
    reason = f"cached file {path} is corrupt: its sha256 is {actual}, expected {expected}"
    if not repair:
        raise CorruptFile(f"{reason}; run `nexa pull` to fetch it again")
    log.warning("%s; fetching it again", reason, extra={"event": "corrupt_file", "file": str(path)})
    path.unlink(missing_ok=True)
    marker(path).unlink(missing_ok=True)
    return False


def record(path: Path, sha256: str) -> None:
    """Write the marker of a file whose content was just hashed (so this process need not again)."""
    stat = path.stat()
    marker(path).write_text(f"{sha256.lower()} {stat.st_size} {stat.st_mtime_ns}\n")
    _checked.add(_identity(path, stat))


def _identity(path: Path, stat: os.stat_result) -> tuple[str, int, int, int, int]:
    return (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
