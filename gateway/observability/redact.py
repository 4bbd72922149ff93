"""Credentials never leave the gateway: one redaction for every URL it shows.

A `format: remote` model's `base_url` may carry credentials: userinfo
(`http://user:pass@host/v1`, `http://TOKEN@host/v1`, where the "user" *is* the
secret) or a secret query value (`?api_key=...`, `?token=...`, `?sig=...`).
Such a URL can surface in error answers, log lines, `/admin/manifest`, `nexa
plan` and model cards; each of those passes what it shows through `redact_url`
(a URL) or `scrub` (free text that may contain URLs), so there is one rule.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"

# Query parameter names whose values are secrets (compared without case, `-` and `_`):
# api_key, apikey, key, token, access_token, auth, sig, signature, password, secret, x-amz-signature, ...
_SECRET_NAME = re.compile(r"key|token|secret|sig|pass|pwd|auth|credential|session", re.IGNORECASE)
# A URL inside free text: a scheme, `://`, then everything up to whitespace, a quote or a bracket.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"<>`]+")


def secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name.replace("-", "").replace("_", "")))


def redact_url(url: str) -> str:
    """`url` without its userinfo (all of it: a lone user name is often a token) and with the
    values of secret-looking query parameters replaced; anything else is kept as written."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.netloc and not parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(secret_name(name) and value for name, value in pairs):  # an empty value hides nothing
            query = urlencode([(name, REDACTED if secret_name(name) and value else value) for name, value in pairs],
                              safe="<>")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def scrub(text: str) -> str:
    """`text` with every URL in it passed through `redact_url` (error messages, log lines)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    # Punctuation that ends a sentence or a repr (`'http://...'.`) is not part of the URL.
    url = match.group(0)
    core = url.rstrip("'.,;:)]}")
    return redact_url(core) + url[len(core):]


def scrub_all(value: Any) -> Any:
    """`scrub` applied to every string of a JSON-like value (log records' extra fields)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: scrub_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_all(item) for item in value]
    return value
