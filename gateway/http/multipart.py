"""multipart/form-data bodies, parsed with python-multipart (the parser Starlette uses).

Uploads are keyed by their FIELD name (`file`), never by the client's file
name, and keep the file name and content type the client sent. The body is
already in memory (the server adapter enforces `max_body_bytes`), so parts
are collected as bytes; the limits here only stop pathological bodies made of
thousands of tiny parts or giant headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.http.core import HTTPError, Request

MAX_PARTS = 256
MAX_FIELD_BYTES = 1024 * 1024  # a text field (prompt, language, ...) larger than this is not a parameter


@dataclass
class UploadedFile:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        """The last value of a text field (as query strings do), or None."""
        values = self.fields.get(name)
        return values[-1] if values else None

    def values(self, name: str) -> list[str]:
        return list(self.fields.get(name, ()))

    def file(self, name: str) -> UploadedFile | None:
        files = self.files.get(name)
        return files[0] if files else None


def _invalid(message: str) -> HTTPError:
    return HTTPError(400, message, code="invalid_multipart")


class _Collector:
    """python-multipart callbacks that gather each part's headers and bytes."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, bytes], bytearray]] = []
        self.finished = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self._data.extend(d[s:e]),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise _invalid(f"The form has more than {MAX_PARTS} parts.")
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _part_end(self) -> None:
        self.parts.append((self._headers, self._data))

    def _end(self) -> None:
        self.finished = True


def _text(raw: bytes) -> str:
    """Header parameters arrive as raw bytes; modern clients send UTF-8 file names."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_multipart(body: bytes, content_type: str) -> Form:
    """Parse a multipart/form-data body. Raises HTTPError 400 for anything malformed."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _invalid("The multipart/form-data content type has no boundary.")
    collector = _Collector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise _invalid(f"The multipart/form-data body is malformed: {exc}") from None
    if not collector.finished:
        raise _invalid("The multipart/form-data body is incomplete (no closing boundary).")
    form = Form()
    for headers, data in collector.parts:
        _, disposition = parse_options_header(headers.get("content-disposition", b"").decode("latin-1"))
        if b"name" not in disposition:
            raise _invalid("A multipart part has no name in its Content-Disposition header.")
        name = _text(disposition[b"name"])
        if b"filename" in disposition:
            content_type_raw = headers.get("content-type")
            upload = UploadedFile(field=name, filename=_text(disposition[b"filename"]) or None,
                                  content_type=content_type_raw.decode("latin-1").strip() if content_type_raw else None,
                                  data=bytes(data))
            form.files.setdefault(name, []).append(upload)
            continue
        if len(data) > MAX_FIELD_BYTES:
            raise HTTPError(400, f"The form field {name!r} is larger than {MAX_FIELD_BYTES} bytes.", param=name,
                            code="invalid_multipart")
        try:
            value = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, f"The form field {name!r} is not UTF-8 text.", param=name,
                            code="invalid_multipart") from None
        form.fields.setdefault(name, []).append(value)
    return form


def parse_form(request: Request) -> Form:
    """A form body of either encoding; any other content type is a 400 that says what to send."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return parse_multipart(request.body, content_type)
    if kind == "application/x-www-form-urlencoded":
        from urllib.parse import parse_qs

        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("The form body is not UTF-8 text.") from None
        return Form(fields=parse_qs(text, keep_blank_values=True))
    raise HTTPError(400, "Send the audio as multipart/form-data with the file in a field named 'file' "
                         f"(got content type {kind or 'none'!r}).", param="file", code="invalid_content_type")
