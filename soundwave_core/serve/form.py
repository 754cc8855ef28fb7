"""``multipart/form-data`` bodies (the audio API's uploads), parsed from bytes already read.

:func:`parse_form` runs python-multipart's streaming parser (the one Starlette uses) over the
whole body in the calling thread: ``swv serve`` calls it in a worker thread granted at the body's
parse cost (:mod:`swv.serve.priority`), as it parses a chat body's JSON, never in the event loop.
Every bound is checked as the parser reaches it, so a hostile form is refused after the part that
breaks it, not after the whole body: at most ``max_parts`` parts, a text field (a part without a
filename) at most ``max_field_bytes``, the headers of a part at most :data:`MAX_HEADER_BYTES`.
A body that is not a whole form (no boundary, bytes that do not follow it, a part without a name,
no closing boundary) is refused too; each refusal is one :class:`RequestError` (400) naming the
problem. File parts are bounded only by the body (``--max-body-bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from swv.core.errors import first_line
from swv.serve.openai_api import RequestError

__all__ = ["MAX_HEADER_BYTES", "Part", "parse_form"]

#: Most bytes of header names and values in one part (a Content-Disposition with a long
#: filename and a Content-Type take a few hundred).
MAX_HEADER_BYTES = 8 * 1024


@dataclass(frozen=True)
class Part:
    """One part of a form: its field ``name``, its bytes, and ``filename`` (``None``: a text field;
    a file part's may be ``""``)."""

    name: str
    data: bytes
    filename: str | None = None

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self) -> str:
        """The field's value; :class:`RequestError` (400 naming it) when it is not UTF-8."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, f"{self.name}: the field is not UTF-8 text", param=self.name) from None


def parse_form(body: bytes, content_type: str, max_parts: int, max_field_bytes: int) -> list[Part]:
    """The parts of the ``multipart/form-data`` ``body`` sent with ``content_type`` (its
    ``boundary`` parameter), in order; :class:`RequestError` (400) past a bound or for a body that
    is not a whole form (see the module)."""
    collector = _Collector(max_parts, max_field_bytes)
    try:
        parser = MultipartParser(_boundary(content_type), collector.callbacks())
        parser.write(body)
    except FormParserError as exc:
        raise RequestError(400, f"the form is malformed ({first_line(exc)})") from None
    if not collector.ended:
        raise RequestError(400, "the form ends before its closing boundary (--BOUNDARY--)")
    return collector.parts


def _boundary(content_type: str) -> bytes:
    """The ``boundary`` parameter of ``content_type`` (400 when it has none)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise RequestError(400, "Content-Type: multipart/form-data needs a boundary parameter (boundary=...)")
    return boundary


class _Collector:
    """The parser's callbacks: they gather the parts and refuse a form past a bound (see the module)."""

    def __init__(self, max_parts: int, max_field_bytes: int) -> None:
        self.max_parts, self.max_field_bytes = max_parts, max_field_bytes
        self.parts: list[Part] = []
        self.ended = False
        self._start_part()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end}

    def _start_part(self) -> None:
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = bytearray(), bytearray()
        self._header_bytes = self._size = 0
        self._chunks: list[memoryview] = []
        self._name, self._filename = "", None

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise RequestError(400, f"the form has more than {self.max_parts} parts")
        self._start_part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes_add(end - start)
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes_add(end - start)
        self._value += data[start:end]

    def _header_bytes_add(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > MAX_HEADER_BYTES:
            raise RequestError(400, f"a part of the form has more than {MAX_HEADER_BYTES} bytes of headers")

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        options = parse_options_header(self._headers.get(b"content-disposition"))[1]
        if b"name" not in options:
            raise RequestError(400, 'a part of the form has no name (Content-Disposition: form-data; name="...")')
        self._name = options[b"name"].decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._filename is None and self._size > self.max_field_bytes:
            raise RequestError(400, f"{self._name}: the field has more than {self.max_field_bytes} bytes",
                               param=self._name)
        self._chunks.append(memoryview(data)[start:end])  # joined once, at the part's end

    def on_part_end(self) -> None:
        self.parts.append(Part(self._name, b"".join(self._chunks), self._filename))
        self._chunks = []

    def on_end(self) -> None:
        self.ended = True
