"""Changesets from Liquibase `updateSQL` output (SPEC §3.3): pure parsing.

`updateSQL` prints, for every pending changeset, a `-- Changeset <path>::<id>::<author>`
header, its SQL, and the `INSERT INTO ...databasechangelog` row Liquibase would record —
whose `MD5SUM` is Liquibase's own checksum of the changeset. That checksum names the
changeset's content (it changes when the changeset is edited), so it is the changeset's hash;
a changeset without one is named by its SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlrs_engine.errors import JobFailure
from sqlrs_engine.prepare.hashing import sha256_hex
from sqlrs_engine.prepare.plan import LbChangeset

HEADER = "-- Changeset "
_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+.*?\((?P<cols>[^()]*)\)\s*VALUES\s*\((?P<vals>.*)\)\s*;?\s*$", re.I
)
PARSE_ERROR = "cannot parse liquibase changesets"


@dataclass
class _Open:
    path: str
    changeset_id: str
    author: str
    lines: list[str]
    checksum: str | None = None


def _split_values(text: str) -> list[str]:
    """SQL value list → items; quotes stripped, `''` → `'` (commas inside quotes kept)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "'":
                if index + 1 < len(text) and text[index + 1] == "'":
                    current.append("'")
                    index += 1
                else:
                    quoted = False
            else:
                current.append(char)
        elif char == "'":
            quoted = True
        elif char == "(":
            # a function call such as NOW(): keep it whole
            depth = 1
            current.append(char)
            while index + 1 < len(text) and depth:
                index += 1
                current.append(text[index])
                depth += {"(": 1, ")": -1}.get(text[index], 0)
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current).strip())
    return items


def checksum_of(line: str) -> str | None:
    """The `MD5SUM` value of a single-line databasechangelog insert, else None."""
    if "databasechangelog" not in line.lower():
        return None
    match = _INSERT.match(line)
    if match is None:
        return None
    columns = [column.strip().strip('"').upper() for column in match["cols"].split(",")]
    values = _split_values(match["vals"])
    if "MD5SUM" not in columns or len(values) != len(columns):
        return None
    value = values[columns.index("MD5SUM")]
    return value or None


def parse_update_sql(lines: Iterable[str]) -> list[LbChangeset]:
    """The pending changesets, in order; zero for empty output (§3.3).

    Raises `JobFailure(invalid_argument, "cannot parse liquibase changesets", "missing
    changeset")` when the output is not empty but has no changeset header.
    """
    changesets: list[_Open] = []
    seen_output = False
    for line in lines:
        if line.strip():
            seen_output = True
        if line.startswith(HEADER):
            parts = line[len(HEADER) :].split("::", 2)
            if len(parts) != 3:
                raise JobFailure("invalid_argument", PARSE_ERROR, f"bad changeset header: {line}")
            changesets.append(_Open(parts[0], parts[1], parts[2].rstrip("\r"), []))
            continue
        if not changesets:
            continue
        current = changesets[-1]
        current.lines.append(line)
        if current.checksum is None:
            current.checksum = checksum_of(line)
    if not changesets:
        if seen_output:
            raise JobFailure("invalid_argument", PARSE_ERROR, "missing changeset")
        return []
    return [
        LbChangeset(
            changeset_id=item.changeset_id,
            author=item.author,
            path=item.path,
            changeset_hash=item.checksum or sha256_hex("\n".join(item.lines).strip()),
        )
        for item in changesets
    ]
