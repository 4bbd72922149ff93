"""Image bytes inside chat messages: `data:` URLs, raw base64, and format sniffing.

Shared by the route layer (which fetches allowed http(s) URLs and turns every
image into a data URL) and the vision backend (which decodes data URLs and
never touches the network). Pure Python, no engine imports.
"""

from __future__ import annotations

import base64
import binascii
import re

# Formats llama.cpp's image loader (stb_image) reads directly; others are converted with Pillow.
NATIVE = {"image/png", "image/jpeg", "image/gif", "image/bmp"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


class ImageDataError(ValueError):
    """Not a usable image: the message says why, for a 400 answer."""


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
    """Strict base64 (standard or URL-safe alphabet; whitespace and missing padding tolerated)."""
    compact = re.sub(r"\s+", "", text)
    compact += "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageDataError("the image is not valid base64") from None


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def decode_image_url(url: str) -> bytes:
    """The image bytes of a `data:` URL or of raw base64. Anything else is an ImageDataError."""
    url = url.strip()
    if url[:5].lower() == "data:":
        match = _DATA_URL.match(url)
        if match is None or not match.group("b64"):
            raise ImageDataError("a data: URL must be of the form data:image/png;base64,<data>")
        data = b64decode(match.group("data"))
    elif is_remote(url):
        raise ImageDataError("remote image URLs are not fetched here")
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url):  # base64 never contains ':'
        raise ImageDataError(f"unsupported image URL scheme {url.split(':', 1)[0]!r}; use a data: URL or base64")
    else:
        data = b64decode(url)
    if not data:
        raise ImageDataError("the image is empty")
    return data


def to_data_url(data: bytes) -> str:
    mime = sniff(data) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def as_data_url(url: str) -> str:
    """A cheap normalisation without decoding: data: URLs as they are, raw base64 wrapped in one.

    Remote URLs and other schemes are an ImageDataError: whoever calls this does no network I/O."""
    url = url.strip()
    if url[:5].lower() == "data:":
        return url
    if is_remote(url):
        raise ImageDataError("remote image URLs are not fetched here")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url):
        raise ImageDataError(f"unsupported image URL scheme {url.split(':', 1)[0]!r}; use a data: URL or base64")
    if not url:
        raise ImageDataError("the image is empty")
    return "data:application/octet-stream;base64," + url


def part_url(part: dict) -> str:
    """The URL of an OpenAI-style image part: {"image_url": {"url": ...}} or {"image_url": "..."}."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise ImageDataError("an image part needs image_url.url (a data: URL, base64, or an http(s) URL)")
    return value
