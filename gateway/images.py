"""Image files on the gateway's disk: generated outputs and `image_path` inputs.

Outputs get unguessable unique names (`img-<uuid4 hex>.png`, never a timestamp: the original
server's `txt2img_<epoch>.png` let two requests in one second overwrite each other) in one
folder, and the file route serves only names of that exact shape from that folder, so no request
can name another file. Inputs given by path are read only inside the folders the manifest lists,
after resolving `..` and symlinks, so a link inside an allowed folder cannot point outside it.
"""

from __future__ import annotations

import base64
import binascii
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

from gateway.http import HTTPError

log = logging.getLogger("nexa.images")
OUTPUT_NAME = re.compile(r"^img-[0-9a-f]{32}\.png$")
MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096


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


def resolve_input_path(raw: str, allowed_dirs: list[str]) -> Path:
    """An `image_path` inside one of the allowed folders (after resolving `..` and symlinks).
    A relative path is looked up in each allowed folder in order."""
    if not allowed_dirs:
        raise HTTPError(403, "This gateway reads no image files by path: its manifest lists no "
                             "server.image_input_dirs. Send the image inline as `image` (base64 or a data URL).",
                        param="image_path", code="image_path_not_allowed")
    if "\x00" in raw:
        raise HTTPError(400, "image_path contains a NUL byte.", param="image_path", code="invalid_value")
    roots = [Path(os.path.realpath(os.path.expanduser(d))) for d in allowed_dirs]
    given = Path(os.path.expanduser(raw))
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = False
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if any(real == root or root in real.parents for root in roots):
            inside = True
            if real.is_file():
                return real
    if not inside:
        raise HTTPError(403, "image_path is outside the folders this gateway may read (server.image_input_dirs).",
                        param="image_path", code="image_path_not_allowed")
    raise HTTPError(400, f"image_path {raw!r} is not a file in the allowed folders.", param="image_path",
                    code="image_not_found")


def read_input_file(path: Path) -> bytes:
    """Read a resolved input file without following a symlink swapped in after resolving."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise HTTPError(400, f"image_path cannot be read: {exc.strerror}.", param="image_path",
                        code="invalid_value") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise HTTPError(400, f"The input image is larger than {MAX_INPUT_BYTES} bytes.", param="image_path",
                        code="image_too_large")
    return data


def decode_inline(value: str) -> bytes:
    """`image` as plain base64 or as a data URL (data:image/png;base64,...)."""
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise HTTPError(400, "A data URL in `image` must be base64-encoded (data:image/png;base64,...).",
                            param="image", code="invalid_image")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "`image` is neither base64 nor a base64 data URL.", param="image",
                        code="invalid_image") from None
    if not data:
        raise HTTPError(400, "`image` is empty.", param="image", code="invalid_image")
    return data


def open_image(data: bytes, param: str) -> Any:
    """Decode image bytes with Pillow into RGB, refusing what is not an image or is huge."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise HTTPError(400, f"The input image is {image.width}x{image.height}; at most {MAX_INPUT_PIXELS} "
                                 "pixels are accepted.", param=param, code="image_too_large")
        image.load()
        return image.convert("RGB")
    except HTTPError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPError(400, f"The input image cannot be decoded: {exc}", param=param, code="invalid_image") from None


def png_bytes(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
