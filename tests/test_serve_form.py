"""swv.serve.form: multipart/form-data bodies parsed from their bytes (python-multipart), every
bound checked as the parser reaches it; and the audio routes leave the form to it (FastAPI
parses no form of theirs)."""

from __future__ import annotations

import pytest

pytest.importorskip("python_multipart")

from swv.serve.form import MAX_HEADER_BYTES, Part, parse_form  # noqa: E402
from swv.serve.openai_api import RequestError  # noqa: E402

BOUNDARY = "xyz"
KIND = f"multipart/form-data; boundary={BOUNDARY}"
CLOSE = f"--{BOUNDARY}--\r\n".encode()


def part(name: str, data: bytes, filename: str | None = None, headers: str = "") -> bytes:
    file = "" if filename is None else f'; filename="{filename}"'
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n{headers}\r\n'.encode() + data + b"\r\n"


def refusal(body: bytes, kind: str = KIND, max_parts: int = 4, max_field_bytes: int = 100) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_form(body, kind, max_parts, max_field_bytes)
    assert caught.value.status == 400
    return caught.value


def test_parts_come_in_order_and_file_bytes_exactly() -> None:
    # bytes that start like the boundary inside the file, and a filename without bytes
    audio = b"RIFF\r\n--xy\r\n--xyz!\r\n-" + bytes(range(256)) * 40
    body = part("model", "m\u00e9".encode()) + part("file", audio, "a b.wav") + part("g", b"1") + part("g", b"") \
        + part("e", b"", "") + CLOSE + b"an epilogue is ignored"
    assert parse_form(body, KIND, 5, 100) == [Part("model", "m\u00e9".encode()), Part("file", audio, "a b.wav"),
                                             Part("g", b"1"), Part("g", b""), Part("e", b"", "")]
    assert parse_form(b"\r\n" + CLOSE, KIND, 1, 1) == []


def test_parts_and_text_fields_are_bounded_files_only_by_the_body() -> None:
    four = part("a", b"x" * 100) * 3 + part("f", b"y" * 10_000, "f.wav")
    assert len(parse_form(four + CLOSE, KIND, 4, 100)) == 4
    assert refusal(four + part("a", b"") + CLOSE).message == "the form has more than 4 parts"
    big = refusal(part("prompt", b"x" * 101) + CLOSE)
    assert (big.message, big.param) == ("prompt: the field has more than 100 bytes", "prompt")


def test_headers_are_bounded_per_part() -> None:
    """Over all of a part's headers (python-multipart's own bounds, in recent versions, are per
    line and per count: lines of 3000 bytes pass them)."""
    line = f"X-Pad: {'v' * 3000}\r\n"
    assert 2 * len(line) < MAX_HEADER_BYTES < 3 * len(line)
    assert parse_form(part("a", b"1", headers=2 * line) + CLOSE, KIND, 4, 100) == [Part("a", b"1")]
    message = refusal(part("a", b"1", headers=3 * line) + CLOSE).message
    assert message == f"a part of the form has more than {MAX_HEADER_BYTES} bytes of headers"


@pytest.mark.parametrize(("kind", "body", "message"), [
    ("multipart/form-data", part("a", b"1") + CLOSE, "needs a boundary parameter"),
    ('multipart/form-data; boundary=""', part("a", b"1") + CLOSE, "needs a boundary parameter"),
    ("multipart/form-data; boundary=other", part("a", b"1") + CLOSE, "the form is malformed ("),
    (KIND, b"a=1&b=2", "the form is malformed ("),
    (KIND, b"", "the form ends before its closing boundary"),
    (KIND, part("a", b"1"), "the form ends before its closing boundary"),
    (KIND, part("a", b"1") + f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=b\r\n\r\nhalf".encode(),
     "the form ends before its closing boundary"),
    (KIND, f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n1\r\n".encode() + CLOSE, "has no name"),
])
def test_a_body_that_is_not_a_whole_form_is_refused(kind: str, body: bytes, message: str) -> None:
    assert message in refusal(body, kind).message


def test_a_text_field_must_be_utf8() -> None:
    assert Part("prompt", "caf\u00e9".encode()).text() == "caf\u00e9"
    with pytest.raises(RequestError) as caught:
        Part("prompt", b"caf\xe9").text()
    assert (caught.value.message, caught.value.param) == ("prompt: the field is not UTF-8 text", "prompt")


def test_fastapi_parses_no_form_of_the_audio_routes() -> None:
    """The audio routes declare no File/Form parameters, so FastAPI reads no body for them and
    never calls ``request.form()`` (which would parse the form in the event loop)."""
    pytest.importorskip("fastapi")
    from swv.serve.routes import audio

    routes = [route for route in audio.router.routes if route.path in audio.FORM_PATHS]
    assert len(routes) == 2 and all(route.body_field is None for route in routes)
