"""Make relative `psql -f` paths absolute, against the caller's working directory.

The engine resolves a relative `-f` path against *its own* working directory (SPEC §2.2), which
for an auto-started engine is its state directory, never what the user meant. The `sqlrs` CLI
sends absolute paths; so does this client. Only file operands are touched: the values of other
options (`-c "-f x"`, `-v f=1`) are skipped by knowing which psql options take a value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

_SHORT_WITH_VALUE = set("cdfhLoPpTUv")
_LONG_WITH_VALUE = {
    "--command",
    "--dbname",
    "--file",
    "--host",
    "--log-file",
    "--output",
    "--port",
    "--pset",
    "--set",
    "--table-attr",
    "--username",
    "--variable",
}


def _absolute(path: str, cwd: str) -> str:
    if path == "-" or not path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(cwd, path))


def absolute_file_args(args: Sequence[str], cwd: str | None = None) -> list[str]:
    """`args` with every `-f`/`--file` operand made absolute (`-` for stdin is kept)."""
    base = cwd or os.getcwd()
    out: list[str] = []
    expect: str | None = None  # the option whose value the next token is
    for arg in args:
        if expect is not None:
            out.append(_absolute(arg, base) if expect in ("-f", "--file") else arg)
            expect = None
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name == "--file" and eq:
                out.append(f"--file={_absolute(value, base)}")
                continue
            if name in _LONG_WITH_VALUE and not eq:
                expect = name
            out.append(arg)
            continue
        if arg.startswith("-") and len(arg) >= 2:
            # A cluster of short flags; the first one that takes a value ends it.
            for position, letter in enumerate(arg[1:], start=1):
                if letter in _SHORT_WITH_VALUE:
                    rest = arg[position + 1 :]
                    if not rest:
                        expect = f"-{letter}"
                        out.append(arg)
                    elif letter == "f":
                        out.append(arg[: position + 1] + _absolute(rest, base))
                    else:
                        out.append(arg)
                    break
            else:
                out.append(arg)
            continue
        out.append(arg)
    return out
