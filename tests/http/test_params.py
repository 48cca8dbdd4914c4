"""Query parameters and request bodies: Go's boolean spellings, the body cap, JSON objects."""

from __future__ import annotations

import io
import wsgiref.util
from typing import Any

import bottle
import pytest
import ujson

from sqlrs_engine.errors import ApiError
from sqlrs_engine.http.params import (
    MAX_BODY_BYTES,
    decode_json_object,
    json_object_body,
    optional_text,
    parse_bool,
    query_value,
    read_body,
)

# -- parse_bool ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "t", "T", "TRUE", "true", "True"])
def test_parse_bool_true_spellings(raw: str) -> None:
    """Exactly the spellings Go's strconv.ParseBool takes as true."""
    assert parse_bool("force", raw) is True


@pytest.mark.parametrize("raw", ["0", "f", "F", "FALSE", "false", "False"])
def test_parse_bool_false_spellings(raw: str) -> None:
    assert parse_bool("force", raw) is False


@pytest.mark.parametrize("raw", [None, ""])
def test_parse_bool_absent_or_empty_is_false(raw: str | None) -> None:
    """`?force=` and no `force` at all both mean the default (unlike Go, not an error)."""
    assert parse_bool("force", raw) is False


@pytest.mark.parametrize(
    "raw", ["yes", "no", "2", "-1", "tRUE", "fALSE", "TRUE!", " true", "true ", "on", "y"]
)
def test_parse_bool_rejects_anything_else(raw: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_bool("dry_run", raw)
    error = raised.value
    assert error.status == 400
    assert error.code == "invalid_argument"
    assert error.message == "invalid dry_run"
    assert error.details == f"dry_run must be a boolean, got {raw!r}"


# -- optional_text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("\t\n", None),
        ("abc", "abc"),
        ("  abc  ", "abc"),
        ("a b", "a b"),
    ],
)
def test_optional_text(raw: str | None, expected: str | None) -> None:
    """A blank filter means "no filter", never a filter on the empty string."""
    assert optional_text(raw) == expected


# -- read_body -----------------------------------------------------------------------------


def test_read_body_reads_the_declared_length() -> None:
    """Only Content-Length bytes belong to this request (the rest may be the next one)."""
    stream = io.BytesIO(b'{"a":1}trailing')
    assert read_body(stream, 7) == b'{"a":1}'
    assert stream.read() == b"trailing"


@pytest.mark.parametrize("length", [None, -1])
def test_read_body_without_a_length_reads_to_the_end(length: int | None) -> None:
    """None is "unknown"; Bottle reports a missing Content-Length as -1, which must work too."""
    assert read_body(io.BytesIO(b"abc"), length) == b"abc"


def test_read_body_of_zero_length_is_empty() -> None:
    assert read_body(io.BytesIO(b"ignored"), 0) == b""


def test_read_body_returns_bytes() -> None:
    """Some WSGI inputs return bytearray or memoryview-like data; routes want bytes."""

    class ByteArrayStream:
        def read(self, size: int) -> bytearray:
            return bytearray(b"{}")

    body = read_body(ByteArrayStream(), None)
    assert type(body) is bytes
    assert body == b"{}"


def test_read_body_at_the_limit_is_accepted() -> None:
    data = b"x" * MAX_BODY_BYTES
    assert len(read_body(io.BytesIO(data), None)) == MAX_BODY_BYTES


def _assert_too_large(error: ApiError) -> None:
    assert error.status == 413
    assert error.code == "invalid_argument"
    assert error.message == "request body too large"
    assert error.details == f"the limit is {MAX_BODY_BYTES} bytes"


def test_read_body_refuses_a_declared_length_over_the_limit_without_reading() -> None:
    stream = io.BytesIO(b"{}")
    with pytest.raises(ApiError) as raised:
        read_body(stream, MAX_BODY_BYTES + 1)
    _assert_too_large(raised.value)
    assert stream.tell() == 0, "nothing was read"


def test_read_body_refuses_an_undeclared_body_over_the_limit() -> None:
    """Without a length (chunked) at most one byte past the limit is read before the 413."""
    stream = io.BytesIO(b"x" * (MAX_BODY_BYTES + 10))
    with pytest.raises(ApiError) as raised:
        read_body(stream, None)
    _assert_too_large(raised.value)
    assert stream.tell() == MAX_BODY_BYTES + 1


# -- decode_json_object --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (b"", "EOF"),
        (b"   \r\n\t", "EOF"),
        (b"{", None),
        (b'{"a":', None),
        (b"{'a': 1}", None),
        (b'{"a":1} trailing', None),
        (b"\xff\xfe", None),
        (b'{"a":"\xff"}', None),  # invalid UTF-8 inside a string
        (b'{"a":"\xc3"}', None),  # truncated UTF-8 sequence
        (b"[1,2]", "expected a JSON object, got list"),
        (b"[]", "expected a JSON object, got list"),
        (b"null", "expected a JSON object, got NoneType"),
        (b'"text"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b"true", "expected a JSON object, got bool"),
    ],
)
def test_decode_json_object_refuses_bad_bodies(body: bytes, details: str | None) -> None:
    """Every undecodable or non-object body is the same 400 the CLI knows."""
    with pytest.raises(ApiError) as raised:
        decode_json_object(body)
    error = raised.value
    assert (error.status, error.code, error.message) == (
        400,
        "invalid_argument",
        "invalid json payload",
    )
    assert error.details, "the reason is always given"
    if details is not None:
        assert error.details == details


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", {}),
        (b' {"a": 1, "b": [true, null]} \n', {"a": 1, "b": [True, None]}),
        ('{"name": "é✓"}'.encode(), {"name": "é✓"}),
        (b'{"name": "\\u00e9"}', {"name": "é"}),
        (b'{"a": 1, "a": 2}', {"a": 2}),  # the last duplicate wins, as in Go
    ],
)
def test_decode_json_object_accepts_objects(body: bytes, expected: dict[str, Any]) -> None:
    assert decode_json_object(body) == expected


# -- json_object_body (through a real Bottle request) --------------------------------------


def _request(body: bytes, headers: dict[str, str]) -> bottle.BaseRequest:
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update({"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(body)})
    environ.update(headers)
    return bottle.BaseRequest(environ)


def test_json_object_body_reads_a_bottle_request() -> None:
    request = _request(b'{"k":"v"}', {"CONTENT_LENGTH": "9"})
    assert json_object_body(request) == {"k": "v"}


def test_json_object_body_of_a_chunked_request() -> None:
    """Cheroot hands a chunked body over already de-chunked, read up to its end."""
    request = _request(b'{"k":"v"}', {"HTTP_TRANSFER_ENCODING": "chunked"})
    assert json_object_body(request) == {"k": "v"}


def test_a_chunked_body_over_the_limit_is_413_after_one_byte_past_the_cap() -> None:
    source = io.BytesIO(b" " * (MAX_BODY_BYTES + 1024))
    request = bottle.BaseRequest(
        {"REQUEST_METHOD": "POST", "wsgi.input": source, "HTTP_TRANSFER_ENCODING": "chunked"}
    )
    with pytest.raises(ApiError) as raised:
        json_object_body(request)
    _assert_too_large(raised.value)
    assert source.tell() == MAX_BODY_BYTES + 1


def test_json_object_body_without_length_or_chunks_is_empty() -> None:
    """A request with neither header has no body (RFC 9112 §6.3): EOF, not a hang."""
    with pytest.raises(ApiError) as raised:
        json_object_body(_request(b'{"k":"v"}', {}))
    assert (raised.value.status, raised.value.details) == (400, "EOF")


def test_json_object_body_refuses_a_declared_length_over_the_limit() -> None:
    with pytest.raises(ApiError) as raised:
        json_object_body(_request(b"{}", {"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)}))
    _assert_too_large(raised.value)


@pytest.mark.parametrize(
    ("query_string", "expected"),
    [
        ("", None),
        ("other=1", None),
        ("dry_run=", ""),
        ("dry_run=true", "true"),
        ("dry_run=true&dry_run=false", "true"),  # Go's URL.Query().Get: the first value
        ("dry_run=false&dry_run=true", "false"),
        ("dry_run=%C3%A9t%C3%A9", "été"),  # UTF-8, not Latin-1
        ("dry_run=%FF", "\ufffd"),  # not UTF-8: replaced, never an exception
        ("dry_run=a+b", "a b"),
    ],
)
def test_query_value_is_the_first_value_decoded_as_utf8(
    query_string: str, expected: str | None
) -> None:
    request = bottle.BaseRequest({"QUERY_STRING": query_string})
    assert query_value(request.query, "dry_run") == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": "\\ud800"}', {"a": "\ufffd"}),  # unpaired high surrogate
        (b'{"a": "x\\udc00y"}', {"a": "x\ufffdy"}),  # unpaired low surrogate
        (b'{"\\ud800": ["\\ud800", {"b": "\\ud800"}]}', {"\ufffd": ["\ufffd", {"b": "\ufffd"}]}),
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a pair is one character
        (b'{"a": "\\u00e9t\\u00e9", "n": 1}', {"a": "été", "n": 1}),
    ],
)
def test_unpaired_surrogates_become_replacement_characters(
    body: bytes, expected: dict[str, object]
) -> None:
    """Like Go's decoder: such strings could not be stored, written or passed to psql."""
    value = decode_json_object(body)
    assert value == expected
    assert ujson.dumps(value, ensure_ascii=False).encode("utf-8")
