"""Input images on the serving side: every image a request brings passes one set of rules here
before an engine sees it, whichever route it came by.

- Inline (`image` of /v1/img2img; data: URLs and raw base64 in vision chat): the one decoder,
  `backends.media.decode_image` (standard or URL-safe base64, padded or not, or a base64 data URL).
- By path (`image_path` of /v1/img2img): read only inside the manifest's `server.image_input_dirs`,
  after resolving `..` and symlinks, so a link inside an allowed folder cannot point outside it;
  at most `server.image_fetch_max_bytes`, as a fetched image.
- By URL (vision chat): fetched by gateway/media/fetch.py from allowed hosts, within its limits.

Then Pillow opens it once (backends/media.py) under the one pixel limit, `server.max_image_pixels`
(a vision model's `options.max_image_pixels` overrides it for that model). Every failure is a 400
naming the field (403 for a path outside the allowed folders). Generated images are
gateway/media/output.py's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from backends.media import (
    MediaError,
    check_image,
    content_parts,
    decode_image,
    image_part,
    is_remote,
    rgb_image,
    to_data_url,
)
from gateway.http.core import HTTPError
from gateway.media.fetch import fetch_image
from schemas.manifest import ServerSettings


def pixel_limit(settings: ServerSettings, options: Mapping[str, Any] | None = None) -> int:
    """The largest input image, width x height: a model's own `options.max_image_pixels`, else the server's."""
    override = (options or {}).get("max_image_pixels")
    return int(override) if override is not None else settings.max_image_pixels


def bad_image(exc: MediaError, param: str) -> HTTPError:
    """A MediaError as the 400 a client sees, with the field it is about."""
    what = "Image too large" if exc.code == "image_too_large" else "Invalid image"
    return HTTPError(400, f"{what}: {exc}.", param=param, code=exc.code)


# -- /v1/img2img ---------------------------------------------------------------------------


def decode_inline(value: str, param: str = "image") -> bytes:
    """An inline image's bytes (base64 or a base64 data URL), by the same rule as vision chat."""
    try:
        return decode_image(value)
    except MediaError as exc:
        raise bad_image(exc, param) from None


def open_image(data: bytes, param: str, max_pixels: int) -> Any:
    """Image bytes decoded into an RGB PIL image, refusing what is not an image or is too large."""
    try:
        return rgb_image(data, max_pixels)
    except MediaError as exc:
        raise bad_image(exc, param) from None


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


def read_input_file(path: Path, max_bytes: int) -> bytes:
    """Read a resolved input file without following a symlink swapped in after resolving."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise HTTPError(400, f"image_path cannot be read: {exc.strerror}.", param="image_path",
                        code="invalid_value") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPError(400, f"The input image is larger than {max_bytes} bytes (server.image_fetch_max_bytes).",
                        param="image_path", code="image_too_large")
    return data


def load_input(image: str | None, image_path: str | None, settings: ServerSettings) -> Any:
    """/v1/img2img's input image, inline or by path, as an RGB PIL image. Blocking: run it in a thread."""
    if image:
        return open_image(decode_inline(image), "image", settings.max_image_pixels)
    path = resolve_input_path(image_path or "", list(settings.image_input_dirs))
    return open_image(read_input_file(path, settings.image_fetch_max_bytes), "image_path", settings.max_image_pixels)


# -- vision chat ---------------------------------------------------------------------------


async def resolve_image_parts(messages: list[dict[str, Any]], settings: ServerSettings,
                              max_pixels: int | None = None) -> list[dict[str, Any]]:
    """Return `messages` with every image part as {"type": "image_url", "image_url": {"url": <data URL>}}.

    Call it in the route for models with the "vision" capability, after `chat_messages`; pass the
    model's `pixel_limit`. Backends never do network I/O: what leaves here is checked inline data.
    Malformed images, forbidden hosts, failed, slow or oversized fetches are HTTPError 400s."""
    limit = max_pixels if max_pixels is not None else settings.max_image_pixels
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        try:
            for part in content_parts(content):
                if part.is_image:
                    param = f"messages[{index}].content[{part.index}].image_url"
                    parts.append(image_part(to_data_url(await _image_bytes(part, settings, limit, param))))
                else:
                    parts.append(part.raw)
        except MediaError as exc:  # a part type chat_messages refuses before this is called
            raise HTTPError(400, f"Invalid content: {exc}.", param=f"messages[{index}].content",
                            code=exc.code) from None
        out.append({**message, "content": parts})
    return out


async def _image_bytes(part: Any, settings: ServerSettings, limit: int, param: str) -> bytes:
    try:
        url = part.url
        data = await fetch_image(url.strip(), settings, param=param) if is_remote(url) else decode_image(url)
        check_image(data, limit)
    except MediaError as exc:
        raise bad_image(exc, param) from None
    return data
