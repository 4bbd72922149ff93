"""Input images, one set of rules for every route and backend that reads them.

- The content-part type names of chat messages are listed here once (`TEXT_PART`, `IMAGE_PARTS`)
  and `content_parts` is the one walk over a message's list content.
- One decoder (`decode_image`) for an inline image, used by vision chat and /v1/img2img alike:
  a `data:<mime>;base64,` URL or raw base64, in the standard or the URL-safe alphabet (not both
  at once), padded or not, whitespace ignored. Anything else is a MediaError.
- One place opens images with Pillow (`_opened`), and checks the one pixel limit there
  (`DEFAULT_MAX_PIXELS`; the gateway passes the manifest's `server.max_image_pixels`).

Pure Python plus Pillow, no engine imports and no network I/O: the gateway (which fetches allowed
http(s) URLs and turns every chat image into a data URL) and the vision backend both use it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

TEXT_PART = "text"
IMAGE_PARTS = ("image_url", "input_image", "image")  # OpenAI chat, OpenAI Responses, and a plain alias
# Formats llama.cpp's image loader (stb_image) reads directly; others are converted with Pillow.
NATIVE = {"image/png", "image/jpeg", "image/gif", "image/bmp"}
DEFAULT_MAX_PIXELS = 40_000_000  # the default of server.max_image_pixels
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL | re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # base64 never contains ':'


class MediaError(ValueError):
    """Not a usable image (or content part): the message says why, `code` names it for a 400."""

    def __init__(self, message: str, code: str = "invalid_image", index: int | None = None):
        super().__init__(message)
        self.code = code
        self.index = index  # the content part it is about, when a walk found it


# -- content parts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of a message's list content, as sent: `raw` is the part's dict."""

    index: int
    is_image: bool
    raw: dict[str, Any]

    @property
    def text(self) -> str:
        return "" if self.is_image else self.raw.get("text") or ""

    @property
    def url(self) -> str:
        """An image part's URL: a data: URL, base64, or an http(s) URL (a MediaError when absent)."""
        return part_url(self.raw)


def content_parts(content: list[Any]) -> Iterator[Part]:
    """The one walk over list content: its text and image parts in order. A part of any other
    type is a MediaError (code "invalid_value") carrying its index, raised when the walk reaches it."""
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == TEXT_PART or kind in IMAGE_PARTS:
            yield Part(index, kind != TEXT_PART, part)
        else:
            raise MediaError(f"unsupported content part type {kind!r}", code="invalid_value", index=index)


def image_part(url: str) -> dict[str, Any]:
    """The one shape an image part leaves the gateway in (and what llama.cpp's handlers read)."""
    return {"type": "image_url", "image_url": {"url": url}}


def part_url(part: dict) -> str:
    """The URL of an OpenAI-style image part: {"image_url": {"url": ...}} or {"image_url": "..."}."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise MediaError("an image part needs image_url.url (a data: URL, base64, or an http(s) URL)")
    return value


# -- the decoder ---------------------------------------------------------------------------


def sniff(data: bytes) -> str | None:
    """The MIME type from the first bytes, for the formats a vision model may receive."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def b64decode(text: str) -> bytes:
    """Strict base64: the standard or the URL-safe alphabet (one of them), padding optional,
    whitespace (line wrapping) ignored. Any other character is a MediaError, never skipped."""
    compact = re.sub(r"\s+", "", text)
    if ("-" in compact or "_" in compact) and ("+" in compact or "/" in compact):
        raise MediaError("the image is not valid base64 (it mixes the standard and URL-safe alphabets)")
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("the image is not valid base64") from None


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def decode_image(value: str) -> bytes:
    """The bytes of an inline image: a base64 `data:` URL or raw base64 (see `b64decode`).
    Remote URLs, other schemes, non-base64 data URLs and empty images are a MediaError."""
    text = value.strip()
    if text[:5].lower() == "data:":
        match = _DATA_URL.match(text)
        if match is None or not match.group("b64"):
            raise MediaError("a data: URL must be of the form data:image/png;base64,<data>")
        data = b64decode(match.group("data"))
    elif is_remote(text):
        raise MediaError("remote image URLs are not fetched here")
    elif _SCHEME.match(text):
        raise MediaError(f"unsupported image URL scheme {text.split(':', 1)[0]!r}; use a data: URL or base64")
    else:
        data = b64decode(text)
    if not data:
        raise MediaError("the image is empty")
    return data


def to_data_url(data: bytes) -> str:
    mime = sniff(data) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def as_data_url(url: str) -> str:
    """A cheap normalisation without decoding: data: URLs as they are, raw base64 wrapped in one.

    Remote URLs and other schemes are a MediaError: whoever calls this does no network I/O."""
    url = url.strip()
    if url[:5].lower() == "data:":
        return url
    if is_remote(url):
        raise MediaError("remote image URLs are not fetched here")
    if _SCHEME.match(url):
        raise MediaError(f"unsupported image URL scheme {url.split(':', 1)[0]!r}; use a data: URL or base64")
    if not url:
        raise MediaError("the image is empty")
    return "data:application/octet-stream;base64," + url


# -- Pillow --------------------------------------------------------------------------------


@contextmanager
def _opened(data: bytes, max_pixels: int | None) -> Iterator[Any]:
    """The one place an input image is opened with Pillow: the header is read and the size checked
    before any pixel is decoded. What Pillow cannot read is a MediaError, never its own exception."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise MediaError(f"the image is {width}x{height} pixels; at most {max_pixels} are accepted",
                                 code="image_too_large")
            yield image
    except MediaError:
        raise
    except Image.DecompressionBombError:
        raise MediaError(f"the image has more pixels than {max_pixels or 'Pillow'} allows",
                         code="image_too_large") from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for "not an image"
        raise MediaError("the image cannot be decoded; send PNG, JPEG, GIF, BMP or WebP") from None


def check_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image Pillow can read within the pixel limit (header only: cheap)."""
    with _opened(data, max_pixels) as image:
        return image.size


def rgb_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """The decoded image as an RGB PIL image (an img2img input)."""
    with _opened(data, max_pixels) as image:
        image.load()
        return image.convert("RGB")


def native_bytes(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bytes:
    """Bytes llama.cpp's loader reads: PNG, JPEG, GIF and BMP as they are, others converted to PNG."""
    with _opened(data, max_pixels) as image:
        if sniff(data) in NATIVE:
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
        return out.getvalue()
