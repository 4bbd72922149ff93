"""Image URLs in chat requests: parsed, checked against the manifest's allowlist, fetched.

http(s) URLs are fetched only from hosts the manifest allows (`server.image_url_hosts`), with
a size cap (`image_fetch_max_bytes`) and a time cap (`image_fetch_timeout_s`), on the event loop
with httpx's async client so no thread is held while waiting. Redirects are followed by hand,
each hop checked against the allowlist. gateway/media/inputs.py calls this for every remote image part.

One parser decides: a URL is parsed once into an `httpx.URL`, the allowlist
checks that object's host, and the client fetches that same object. URLs that
parsers read differently (whitespace or control characters, e.g. a tab before
`@`) and URLs with userinfo are refused before anything is checked.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from gateway.http.core import HTTPError
from schemas.manifest import ServerSettings

log = logging.getLogger("nexa.gateway.media.fetch")

MAX_REDIRECTS = 3


def parse_url(text: str) -> httpx.URL:
    """The one parse of an image URL. Raises ValueError (with the reason) for what must not be
    fetched: whitespace or control characters, userinfo, a scheme other than http(s), no host."""
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text):
        raise ValueError("the image URL holds whitespace or control characters")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ValueError(f"the image URL cannot be parsed ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("the image URL must be http(s)://host/...")
    if url.userinfo:
        raise ValueError("the image URL must not carry credentials (user@host)")
    return url


def host_allowed(url: str | httpx.URL, allowed: list[str]) -> bool:
    """`example.com` matches that host on any port, `*.example.com` its subdomains,
    `example.com:8443` that port only. Matching is case-insensitive; IPv6 hosts go in brackets."""
    if not isinstance(url, httpx.URL):
        try:
            url = parse_url(url)
        except ValueError:
            return False
    host = url.host.lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    for entry in allowed:
        name, entry_port = _split_entry(entry.strip().lower())
        if not name or (entry_port is not None and entry_port != port):
            continue
        if name.startswith("*."):
            if shown.endswith(name[1:]):
                return True
        elif shown == name:
            return True
    return False


def _split_entry(entry: str) -> tuple[str, int | None]:
    """"host", "host:port", "[v6]" or "[v6]:port" -> (host, port or None)."""
    if entry.startswith("["):
        end = entry.find("]")
        name, rest = entry[: end + 1], entry[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        name, port = entry.split(":")
    else:
        name, port = entry, ""
    return name, int(port) if port.isdigit() else None


async def fetch_image(url: str, settings: ServerSettings, *, param: str,
                      client: httpx.AsyncClient | None = None) -> bytes:
    """GET an allowed image URL within the byte and time limits; every failure is a 400."""
    timeout = settings.image_fetch_timeout_s
    own = client is None
    client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False)
    try:
        return await asyncio.wait_for(_fetch(client, url, settings, param), timeout)
    except asyncio.TimeoutError:
        raise HTTPError(400, f"Fetching the image took longer than {timeout:g}s (server.image_fetch_timeout_s).",
                        param=param, code="image_fetch_failed") from None
    except httpx.HTTPError as exc:
        raise HTTPError(400, f"Fetching the image failed: {type(exc).__name__}: {exc}", param=param,
                        code="image_fetch_failed") from None
    finally:
        if own:
            await client.aclose()


async def _fetch(client: httpx.AsyncClient, text: str, settings: ServerSettings, param: str) -> bytes:
    limit, started = settings.image_fetch_max_bytes, time.monotonic()
    url = _parsed(text, param)
    for _ in range(MAX_REDIRECTS + 1):
        if not host_allowed(url, settings.image_url_hosts):
            raise HTTPError(400, f"Image URL host {url.host!r} is not allowed; this gateway fetches "
                                 "images only from the hosts in server.image_url_hosts. Send the image as a "
                                 "data: URL or base64 instead.", param=param, code="image_url_not_allowed")
        async with client.stream("GET", url, headers={"accept": "image/*"}) as response:
            if response.is_redirect and "location" in response.headers:
                try:
                    url = _parsed(str(url.join(response.headers["location"])), param)
                except httpx.InvalidURL as exc:
                    raise HTTPError(400, f"Fetching the image failed: a bad redirect ({exc}).", param=param,
                                    code="image_fetch_failed") from None
                continue
            if response.status_code != 200:
                raise HTTPError(400, f"Fetching the image failed: {url} answered {response.status_code}.",
                                param=param, code="image_fetch_failed")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit, param)
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > limit:
                    raise _too_large(limit, param)
            log.info("fetched image from %s: %d bytes in %.0f ms", url.host, len(data),
                     (time.monotonic() - started) * 1000, extra={"event": "image_fetched", "bytes": len(data)})
            return bytes(data)
    raise HTTPError(400, f"Fetching the image failed: more than {MAX_REDIRECTS} redirects.", param=param,
                    code="image_fetch_failed")


def _parsed(text: str, param: str) -> httpx.URL:
    try:
        return parse_url(text)
    except ValueError as exc:
        raise HTTPError(400, f"Invalid image URL: {exc}.", param=param, code="invalid_image_url") from None


def _too_large(limit: int, param: str) -> HTTPError:
    return HTTPError(400, f"The image is larger than {limit} bytes (server.image_fetch_max_bytes).", param=param,
                     code="image_too_large")
