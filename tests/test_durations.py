"""Go duration parsing and formatting, checked against the cases of Go's own time tests."""

from __future__ import annotations

import pytest

from sqlrs_engine.durations import (
    DurationError,
    format_duration,
    format_duration_ns,
    parse_duration,
    parse_duration_ns,
)

NS = 1
US = 1000 * NS
MS = 1000 * US
S = 1000 * MS
M = 60 * S
H = 60 * M
MAX = (1 << 63) - 1
MIN = -(1 << 63)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("5s", 5 * S),
        ("30s", 30 * S),
        ("1478s", 1478 * S),
        ("-5s", -5 * S),
        ("+5s", 5 * S),
        ("-1s", -1 * S),
        ("0s", 0),
        ("5.0s", 5 * S),
        ("5.6s", 5 * S + 600 * MS),
        ("5.s", 5 * S),
        (".5s", 500 * MS),
        ("1.0s", 1 * S),
        ("1.00s", 1 * S),
        ("1.004s", 1 * S + 4 * MS),
        ("1.0040s", 1 * S + 4 * MS),
        ("100.00100s", 100 * S + 1 * MS),
        ("10ns", 10 * NS),
        ("11us", 11 * US),
        ("12\u00b5s", 12 * US),
        ("12\u03bcs", 12 * US),
        ("13ms", 13 * MS),
        ("500ms", 500 * MS),
        ("14s", 14 * S),
        ("15m", 15 * M),
        ("16h", 16 * H),
        ("2m0s", 2 * M),
        ("10m", 10 * M),
        ("1h30m", H + 30 * M),
        ("1.5h", H + 30 * M),
        ("3h30m", 3 * H + 30 * M),
        ("10.5s4m", 4 * M + 10 * S + 500 * MS),
        ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
        ("1h2m3s4ms5us6ns", H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS),
        ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
        ("52763797000ns", 52763797000 * NS),
        ("0.3333333333333333333h", 20 * M),
        ("9007199254740993ns", ((1 << 53) + 1) * NS),
        ("9223372036854775807ns", MAX),
        ("9223372036854775.807us", MAX),
        ("9223372036s854ms775us807ns", MAX),
        ("-9223372036854775808ns", MIN),
        ("-9223372036854775.808us", MIN),
        ("-9223372036s854ms775us808ns", MIN),
        ("-2562047h47m16.854775808s", MIN),
        ("0.100000000000000000000h", 6 * M),
        ("0.830103483285477580700h", 49 * M + 48 * S + 372539827 * NS),
    ],
)
def test_parse_duration_ns_accepts_go_syntax(text: str, expected: int) -> None:
    assert parse_duration_ns(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("1", 'time: missing unit in duration "1"'),
        ("3", 'time: missing unit in duration "3"'),
        ("00", 'time: missing unit in duration "00"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1S", 'time: unknown unit "S" in duration "1S"'),
        ("1m2", 'time: missing unit in duration "1m2"'),
        ("-", 'time: invalid duration "-"'),
        ("+", 'time: invalid duration "+"'),
        ("s", 'time: invalid duration "s"'),
        (".", 'time: invalid duration "."'),
        ("-.", 'time: invalid duration "-."'),
        (".s", 'time: invalid duration ".s"'),
        ("+.s", 'time: invalid duration "+.s"'),
        (" 1s", 'time: invalid duration " 1s"'),
        ("1s ", 'time: unknown unit "s " in duration "1s "'),
        ("--1s", 'time: invalid duration "--1s"'),
        ("1.2.3s", 'time: missing unit in duration "1.2.3s"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("9223372036854775.808us", 'time: invalid duration "9223372036854775.808us"'),
        ("9223372036854ms775us808ns", 'time: invalid duration "9223372036854ms775us808ns"'),
        ("-9223372036854775809ns", 'time: invalid duration "-9223372036854775809ns"'),
        ("99999999999999999999h", 'time: invalid duration "99999999999999999999h"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        ("\u0661s", 'time: invalid duration "\u0661s"'),  # Arabic-Indic one is not a digit
    ],
)
def test_parse_duration_rejects_like_go(text: str, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration_ns(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m0s", 120.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0), ("-1s", -1.0)],
)
def test_parse_duration_returns_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1 * NS, "1ns"),
        (999 * NS, "999ns"),
        (1100 * NS, "1.1\u00b5s"),
        (300 * US, "300\u00b5s"),
        (2200 * US, "2.2ms"),
        (500 * MS, "500ms"),
        (3300 * MS, "3.3s"),
        (1500 * MS, "1.5s"),
        (1 * S, "1s"),
        (90 * S, "1m30s"),
        (4 * M + 5 * S, "4m5s"),
        (4 * M + 5001 * MS, "4m5.001s"),
        (10 * M, "10m0s"),
        (2 * M, "2m0s"),
        (1 * H, "1h0m0s"),
        (H + 30 * M, "1h30m0s"),
        (5 * H + 6 * M + 7001 * MS, "5h6m7.001s"),
        (8 * M + 1 * NS, "8m0.000000001s"),
        (-1 * S, "-1s"),
        (-1500 * US, "-1.5ms"),
        (MAX, "2562047h47m16.854775807s"),
        (MIN, "-2562047h47m16.854775808s"),
    ],
)
def test_format_duration_ns_matches_go_string(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (600, "10m0s"),
        (3600.0, "1h0m0s"),
        (0, "0s"),
        (90, "1m30s"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (0.1, "100ms"),
        (30, "30s"),
        (-0.000001, "-1\u00b5s"),
    ],
)
def test_format_duration_takes_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "text", ["10m", "30s", "2m0s", "1h30m", "1.5h", "500ms", "-1s", "0", "1h2m3.004005006s"]
)
def test_format_parse_round_trip(text: str) -> None:
    ns = parse_duration_ns(text)
    assert parse_duration_ns(format_duration_ns(ns)) == ns
