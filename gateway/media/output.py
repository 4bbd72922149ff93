"""Generated images (the output side): PNG encoding and the files on the gateway's disk.

Outputs get unguessable unique names (`img-<uuid4 hex>.png`, never a timestamp: the original
server's `txt2img_<epoch>.png` let two requests in one second overwrite each other) in one
folder, and the file route serves only names of that exact shape from that folder, so no request
can name another file. Input images (inline, by path, by URL) are gateway/media/inputs.py's.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any

from gateway.http.core import HTTPError

log = logging.getLogger("nexa.gateway.media.output")
OUTPUT_NAME = re.compile(r"^img-[0-9a-f]{32}\.png$")


def default_output_dir() -> Path:
    """<nexa cache>/outputs: beside the hub folder, or inside NEXA_CACHE_ROOT when that is set."""
    root = os.environ.get("NEXA_CACHE_ROOT")
    return Path(root).expanduser() / "outputs" if root else Path.home() / ".cache" / "nexa" / "outputs"


class ImageStore:
    """Writes generated PNGs and finds them again by name."""

    def __init__(self, folder: str | Path | None, keep: int | None = None):
        self.folder = Path(folder).expanduser() if folder else default_output_dir()
        self.keep = keep

    def save(self, png: bytes) -> str:
        """Write under a temporary name, then rename: a failed write (a full disk) leaves no
        partial `img-*.png` behind, and is a clear 507 (no space) or 500 (other errors)."""
        name = f"img-{uuid.uuid4().hex}.png"
        partial = self.folder / f".{name}.partial"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            with os.fdopen(fd, "wb") as out:
                _write(out, png)
            os.replace(partial, self.folder / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            log.warning("cannot save a generated image in %s: %s", self.folder, exc,
                        extra={"event": "image_save_failed", "folder": str(self.folder)})
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise HTTPError(507, "The gateway's image output folder (server.image_output_dir) is full: no space "
                                     "left on device. The image was not saved; free space there (or lower "
                                     "server.image_output_keep).",
                                code="insufficient_storage", type="server_error") from None
            raise HTTPError(500, f"The gateway cannot save the generated image: {exc.strerror}. See the gateway log.",
                            code="image_save_failed", type="server_error") from None
        self._prune()
        return name

    def _prune(self) -> None:
        """Keep only the newest `keep` images, so a long-running gateway does not fill its disk."""
        if not self.keep:
            return
        files = [p for p in self.folder.glob("img-*.png") if OUTPUT_NAME.match(p.name)]
        if len(files) <= self.keep:
            return
        files.sort(key=lambda p: p.stat().st_mtime_ns)
        for old in files[: len(files) - self.keep]:
            old.unlink(missing_ok=True)

    def path_of(self, name: str) -> Path:
        """The file for a name this gateway wrote; 404 for anything else (no traversal possible:
        the name pattern has no separators or dots other than the extension)."""
        if not OUTPUT_NAME.match(name):
            raise HTTPError(404, "No such image: names look like img-<32 hex digits>.png.", code="image_not_found")
        path = self.folder / name
        try:
            info = os.lstat(path)
        except OSError:
            raise HTTPError(404, f"No such image {name!r} (never generated here, or deleted).",
                            code="image_not_found") from None
        if not stat.S_ISREG(info.st_mode):
            raise HTTPError(404, f"No such image {name!r}.", code="image_not_found")
        return path


def _write(out: Any, data: bytes) -> None:
    out.write(data)
    out.flush()  # a full disk shows here, before the rename


def png_bytes(image: Any) -> bytes:
    """A generated PIL image as PNG file bytes."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
