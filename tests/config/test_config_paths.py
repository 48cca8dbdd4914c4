"""Config path syntax and the pure get / set / delete operations on JSON values."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sqlrs_engine.config.paths import (
    MAX_INDEX,
    MAX_SEGMENTS,
    ConfigPath,
    PathError,
    PathNotFound,
    delete_value,
    find_value,
    format_path,
    get_value,
    has_value,
    parse_path,
    set_value,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("a", ("a",)),
        ("a.b", ("a", "b")),
        ("a.b[0].c", ("a", "b", 0, "c")),
        ("a[1][2]", ("a", 1, 2)),
        ("orchestrator.jobs.maxIdentical", ("orchestrator", "jobs", "maxIdentical")),
        ("Log.Level", ("Log", "Level")),  # case is kept
        ("a b.c-d", ("a b", "c-d")),
        ("a]b", ("a]b",)),  # any character but '.' and '[' belongs to a key
        ("\u00e9t\u00e9.x", ("\u00e9t\u00e9", "x")),
        ("a[007]", ("a", 7)),
        (f"a[{MAX_INDEX}]", ("a", MAX_INDEX)),
        ("a[0].b[1].c", ("a", 0, "b", 1, "c")),
        (".".join(["k"] * MAX_SEGMENTS), ("k",) * MAX_SEGMENTS),
    ],
)
def test_parse_path_ok(text: str, expected: ConfigPath) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (".a", "must not start with '.'"),
        (".", "must not start with '.'"),
        ("a..b", "empty key at position 2"),
        ("a.", "empty key at position 2"),
        ("a.[0]", "empty key at position 2"),
        ("a[", "'[' at position 1 must be followed by digits"),
        ("a[]", "must be followed by digits"),
        ("a[x]", "must be followed by digits"),
        ("a[-1]", "must be followed by digits"),
        ("a[ 1]", "must be followed by digits"),
        ("a[1", "missing its closing ']'"),
        ("a[1.b", "missing its closing ']'"),
        ("a[1]b", "expected '.' or '[' after ']'"),
        ("[0]", "must start with a key"),
        ("[0].a", "must start with a key"),
        (f"a[{MAX_INDEX + 1}]", f"larger than {MAX_INDEX}"),
        ("a[" + "9" * 5000 + "]", f"larger than {MAX_INDEX}"),
        (".".join(["k"] * (MAX_SEGMENTS + 1)), f"more than {MAX_SEGMENTS} parts"),
    ],
)
def test_parse_path_errors(text: str, reason: str) -> None:
    with pytest.raises(PathError) as caught:
        parse_path(text)
    assert reason in str(caught.value)


@pytest.mark.parametrize("text", ["a", "a.b", "a.b[0].c", "a[1][2]", "x[3]"])
def test_format_path_round_trips(text: str) -> None:
    assert format_path(parse_path(text)) == text


DOC: dict[str, Any] = {
    "a": {"b": [10, {"c": "x"}, None], "n": None},
    "list": [[1, 2], [3]],
    "s": "text",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", DOC),
        ("a", DOC["a"]),
        ("a.b", [10, {"c": "x"}, None]),
        ("a.b[0]", 10),
        ("a.b[1].c", "x"),
        ("a.b[2]", None),  # a stored null is found
        ("a.n", None),
        ("list[1][0]", 3),
    ],
)
def test_get_value_found(path: str, expected: Any) -> None:
    assert has_value(DOC, parse_path(path))
    assert get_value(DOC, parse_path(path)) == expected


@pytest.mark.parametrize(
    "path",
    [
        "missing",
        "a.missing",
        "A",  # keys are case-sensitive
        "a.b[3]",  # past the end
        "a.b[0].c",  # key on a number
        "s.x",  # key on a string
        "a[0]",  # index on an object
        "s[0]",  # index on a string
        "a.b.c",  # key on an array
        "a.n.x",  # key on null
    ],
)
def test_get_value_not_found(path: str) -> None:
    assert not has_value(DOC, parse_path(path))
    with pytest.raises(PathNotFound):
        get_value(DOC, parse_path(path))


@pytest.mark.parametrize(
    ("path", "expected"), [("a.b[0]", 10), ("a.n", None), ("missing", None), ("s.x", None)]
)
def test_find_value_treats_absent_as_null(path: str, expected: Any) -> None:
    assert find_value(DOC, parse_path(path)) == expected


def test_get_value_returns_a_copy() -> None:
    doc = copy.deepcopy(DOC)
    got = get_value(doc, parse_path("a.b"))
    got.append("changed")
    assert doc == DOC


@pytest.mark.parametrize(
    ("doc", "path", "value", "expected"),
    [
        ({}, "a", 1, {"a": 1}),
        ({}, "a.b.c", True, {"a": {"b": {"c": True}}}),
        ({"a": {"x": 1}}, "a.y", 2, {"a": {"x": 1, "y": 2}}),
        ({"a": 1}, "a", None, {"a": None}),
        ({"a": 1}, "a", {"z": [1]}, {"a": {"z": [1]}}),
        # arrays pad with null when indexing past the end
        ({}, "a[2]", "v", {"a": [None, None, "v"]}),
        ({"a": [1]}, "a[3]", 4, {"a": [1, None, None, 4]}),
        ({"a": [1, 2, 3]}, "a[1]", 9, {"a": [1, 9, 3]}),
        ({}, "a[1][0]", "x", {"a": [None, ["x"]]}),
        ({}, "a[0].b", 1, {"a": [{"b": 1}]}),
        # intermediate non-maps (and non-arrays before an index) are replaced
        ({"a": 5}, "a.b", 1, {"a": {"b": 1}}),
        ({"a": "s"}, "a.b.c", 1, {"a": {"b": {"c": 1}}}),
        ({"a": [1, 2]}, "a.b", 1, {"a": {"b": 1}}),
        ({"a": None}, "a.b", 1, {"a": {"b": 1}}),
        ({"a": {"k": 1}}, "a[0]", 1, {"a": [1]}),
        ({"a": [5, "s"]}, "a[1].k", 1, {"a": [5, {"k": 1}]}),
        # the whole document
        ({"a": 1}, "", {"b": 2}, {"b": 2}),
    ],
)
def test_set_value(doc: Any, path: str, value: Any, expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert set_value(doc, parse_path(path), value) == expected
    assert doc == before  # the caller's document is never changed


def test_set_value_copies_the_value() -> None:
    value = {"x": [1]}
    result = set_value({}, parse_path("a"), value)
    value["x"].append(2)
    assert result == {"a": {"x": [1]}}


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        ({"a": 1, "b": 2}, "a", {"b": 2}),
        ({"a": {"b": 1, "c": 2}}, "a.b", {"a": {"c": 2}}),
        ({"a": {"b": 1}}, "a.b", {"a": {}}),  # emptied parents stay
        ({"a": None}, "a", {}),
        # removing an array item shifts the following items down
        ({"a": [1, 2, 3]}, "a[0]", {"a": [2, 3]}),
        ({"a": [1, 2, 3]}, "a[1]", {"a": [1, 3]}),
        ({"a": [1, 2, 3]}, "a[2]", {"a": [1, 2]}),
        ({"a": [[1, 2], [3]]}, "a[0][1]", {"a": [[1], [3]]}),
        ({"a": [{"b": 1, "c": 2}]}, "a[0].b", {"a": [{"c": 2}]}),
    ],
)
def test_delete_value(doc: Any, path: str, expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert delete_value(doc, parse_path(path)) == expected
    assert doc == before


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({}, "a"),
        ({"a": 1}, "b"),
        ({"a": 1}, "a.b"),
        ({"a": [1]}, "a[1]"),
        ({"a": {"b": 1}}, "a[0]"),
        ({"a": [1]}, "a.b"),
        ({"a": {"b": 1}}, "a.B"),
    ],
)
def test_delete_value_not_found(doc: Any, path: str) -> None:
    with pytest.raises(PathNotFound):
        delete_value(doc, parse_path(path))


def test_delete_value_refuses_the_whole_document() -> None:
    with pytest.raises(PathError):
        delete_value({"a": 1}, ())
