"""JSON bytes as Go's json.Encoder writes them: one line, UTF-8, unescaped slashes."""

from __future__ import annotations

import pytest
import ujson

from sqlrs_engine.http.jsonio import dumps, json_line, json_lines, wants_ndjson


def test_json_line_is_compact_and_ends_with_one_newline() -> None:
    """The CLI reads bodies as Go produces them: no spaces, a single trailing newline."""
    assert json_line({"a": 1, "b": [1, 2], "c": None}) == b'{"a":1,"b":[1,2],"c":null}\n'


def test_dumps_has_no_newline() -> None:
    assert dumps({"a": 1}) == '{"a":1}'


def test_non_ascii_is_written_as_utf8_not_escaped() -> None:
    line = json_line({"name": "é✓ 日本"})
    assert line == '{"name":"é✓ 日本"}\n'.encode()
    assert b"\\u" not in line


def test_slashes_are_not_escaped() -> None:
    """URLs and paths (`status_url`, DSNs) must look like Go writes them: `/`, not `\\/`."""
    line = json_line({"url": "/v1/prepare-jobs/x", "dsn": "postgres://u@h:1/db"})
    assert line == b'{"url":"/v1/prepare-jobs/x","dsn":"postgres://u@h:1/db"}\n'


def test_control_characters_stay_escaped() -> None:
    """NDJSON needs one document per line: a newline inside a string must be escaped."""
    line = json_line({"data": "a\nb\tc"})
    assert line.count(b"\n") == 1
    assert ujson.loads(line) == {"data": "a\nb\tc"}


@pytest.mark.parametrize(
    ("sort_keys", "expected"),
    [
        (False, b'{"b":1,"a":{"d":2,"c":3}}\n'),
        (True, b'{"a":{"c":3,"d":2},"b":1}\n'),
    ],
)
def test_sort_keys(sort_keys: bool, expected: bytes) -> None:
    """Sorted (recursively) for Go-encoded maps like config; insertion order otherwise."""
    assert json_line({"b": 1, "a": {"d": 2, "c": 3}}, sort_keys=sort_keys) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/x-ndjson", True),
        ("APPLICATION/X-NDJSON", True),
        ("application/json, application/x-ndjson;q=0.9", True),
        ("application/x-ndjson; charset=utf-8", True),
    ],
)
def test_wants_ndjson(accept: str | None, expected: bool) -> None:
    assert wants_ndjson(accept) is expected


def test_a_lone_surrogate_is_written_escaped_not_raised() -> None:
    """An error may echo text that is not Unicode; the reply must still be written."""
    line = json_line({"details": "bad \ud800 value", "b": "é"})
    assert line == b'{"details":"bad \\ud800 value","b":"\\u00e9"}\n'
    assert line.decode("ascii")


@pytest.mark.parametrize(
    "values",
    [
        [],
        [{"a": "/x", "b": "é"}],
        [{"a": 1}, [1, 2], "s", None],
        [{"ok": "fine"}, {"details": "bad \ud800 value"}],
    ],
)
def test_json_lines_is_each_json_line(values: list[object]) -> None:
    """A page of NDJSON is the concatenation of its values' lines, lone surrogates included."""
    assert json_lines(values) == b"".join(json_line(value) for value in values)
