"""Go `time.Duration` text: parse like `time.ParseDuration`, format like `Duration.String()`.

The `sqlrs` client passes `--idle-timeout` as a Go duration, config `minStateAge` is one, and
`GET /v1/cache/status` reports `min_state_age` in Go's format. Clients and users compare
these strings, so both directions follow Go exactly (same accepted syntax, same error texts,
same int64-nanosecond range and overflow rules).

Durations are handled as float seconds everywhere in this project (`parse_duration`,
`format_duration`); the `_ns` variants work on exact integer nanoseconds, the unit Go uses, and
are what the float functions are built on.
"""

from __future__ import annotations

__all__ = [
    "DurationError",
    "format_duration",
    "format_duration_ns",
    "parse_duration",
    "parse_duration_ns",
]

_NANOSECOND = 1
_MICROSECOND = 1000 * _NANOSECOND
_MILLISECOND = 1000 * _MICROSECOND
_SECOND = 1000 * _MILLISECOND
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE

# Go's unitMap: both the micro sign (U+00B5) and the Greek mu (U+03BC) spell microseconds.
_UNITS: dict[str, int] = {
    "ns": _NANOSECOND,
    "us": _MICROSECOND,
    "\u00b5s": _MICROSECOND,
    "\u03bcs": _MICROSECOND,
    "ms": _MILLISECOND,
    "s": _SECOND,
    "m": _MINUTE,
    "h": _HOUR,
}

_U63 = 1 << 63  # Go accumulates in uint64 and checks against 1<<63 (|min int64|).
_MAX_INT64 = _U63 - 1


class DurationError(ValueError):
    """A string that Go's `time.ParseDuration` rejects; the message is Go's error text."""


def _quote(text: str) -> str:
    """Go's `quote` for error messages: double quotes, escaped quotes and backslashes."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
    out.append('"')
    return "".join(out)


def _is_digit(ch: str) -> bool:
    # Only ASCII digits: str.isdigit() would also accept e.g. Arabic-Indic digits.
    return "0" <= ch <= "9"


def _leading_int(s: str) -> tuple[int, str]:
    """Consume leading ASCII digits; overflow beyond 1<<63 is an error (Go `leadingInt`)."""
    x = 0
    i = 0
    while i < len(s) and _is_digit(s[i]):
        if x > _U63 // 10:
            raise OverflowError
        x = x * 10 + (ord(s[i]) - ord("0"))
        if x > _U63:
            raise OverflowError
        i += 1
    return x, s[i:]


def _leading_fraction(s: str) -> tuple[int, float, str]:
    """Consume fraction digits; past int64 precision they are skipped (Go `leadingFraction`)."""
    x = 0
    scale = 1.0
    overflow = False
    i = 0
    while i < len(s) and _is_digit(s[i]):
        if not overflow:
            if x > _MAX_INT64 // 10:
                overflow = True
            else:
                y = x * 10 + (ord(s[i]) - ord("0"))
                if y > _U63:
                    overflow = True
                else:
                    x = y
                    scale *= 10
        i += 1
    return x, scale, s[i:]


def parse_duration_ns(text: str) -> int:
    """Parse Go duration syntax (`300ms`, `-1.5h`, `2h45m`, `0`) into integer nanoseconds.

    Raises `DurationError` with Go's message for anything `time.ParseDuration` rejects,
    including `""`, a number without a unit (`"1"`), an unknown unit (`"1x"`) and values
    outside the int64 nanosecond range.
    """
    orig = text
    s = text
    invalid = DurationError("time: invalid duration " + _quote(orig))
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or _is_digit(s[0])):
            raise invalid
        before = len(s)
        try:
            value, s = _leading_int(s)
        except OverflowError:
            raise invalid from None
        pre = before != len(s)
        frac, scale, post = 0, 1.0, False
        if s and s[0] == ".":
            s = s[1:]
            before = len(s)
            frac, scale, s = _leading_fraction(s)
            post = before != len(s)
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(s) and not (s[i] == "." or _is_digit(s[i])):
            i += 1
        if i == 0:
            raise DurationError("time: missing unit in duration " + _quote(orig))
        unit_text, s = s[:i], s[i:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise DurationError(
                "time: unknown unit " + _quote(unit_text) + " in duration " + _quote(orig)
            )
        if value > _U63 // unit:
            raise invalid
        value *= unit
        if frac > 0:
            # Go uses float64 here (accurate to the nanosecond for fractions of hours) and
            # truncates when converting back to an integer; int() truncates the same way.
            value += int(float(frac) * (float(unit) / scale))
            if value > _U63:
                raise invalid
        total += value
        if total > _U63:
            raise invalid
    if neg:
        return -total
    if total > _MAX_INT64:
        raise invalid
    return total


def parse_duration(text: str) -> float:
    """Parse Go duration syntax into seconds (`"1m30s"` → 90.0); see `parse_duration_ns`."""
    return parse_duration_ns(text) / _SECOND


def _fmt_frac(v: int, prec: int) -> tuple[str, int]:
    """Go `fmtFrac`: the fraction of v/10**prec without trailing zeros, and v // 10**prec."""
    divisor = 10**prec
    digits = f"{v % divisor:0{prec}d}".rstrip("0") if prec else ""
    return ("." + digits if digits else ""), v // divisor


def format_duration_ns(ns: int) -> str:
    """Format integer nanoseconds like Go `Duration.String()` (`1h0m0s`, `1.5s`, `500ms`, `0s`)."""
    neg = ns < 0
    u = -ns if neg else ns
    if u == 0:
        return "0s"
    if u < _SECOND:
        # Below one second Go switches to a smaller unit, e.g. 1.2ms or 300µs.
        if u < _MICROSECOND:
            prec, unit = 0, "ns"
        elif u < _MILLISECOND:
            prec, unit = 3, "\u00b5s"
        else:
            prec, unit = 6, "ms"
        frac, whole = _fmt_frac(u, prec)
        text = f"{whole}{frac}{unit}"
    else:
        frac, u = _fmt_frac(u, 9)
        text = f"{u % 60}{frac}s"
        u //= 60
        if u > 0:
            text = f"{u % 60}m{text}"
            u //= 60
            if u > 0:
                # Go stops at hours because days can have different lengths.
                text = f"{u}h{text}"
    return "-" + text if neg else text


def format_duration(seconds: float) -> str:
    """Format seconds like Go `Duration.String()` (600 → `10m0s`), rounded to nanoseconds."""
    return format_duration_ns(round(seconds * _SECOND))
