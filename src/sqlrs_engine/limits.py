"""Size limits of what a request may ask a client program to take (issue 11).

A `-c` argument of 31 MiB used to be accepted and then fail the job at exec time (the kernel
refuses a single argument over 128 KiB), after the engine had held the request in memory
several times over. Whatever cannot work is refused at submit time instead, with a 413 that
states the limit and what to do instead.

- One argument: the kernel's `MAX_ARG_STRLEN` (32 pages: 131 072 bytes with its NUL).
- All arguments of one request together: 1 MiB, half of the usual `ARG_MAX` (2 MiB, shared
  with the environment), so that every step's argv fits whatever the environment holds.
- stdin (`-f -` of a prepare, a run or its steps): 16 MiB; larger SQL belongs in a file,
  which is streamed, not held in the request and in state.db.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlrs_engine.errors import ApiError

MAX_ARG_BYTES = 128 * 1024 - 1
MAX_TOTAL_ARG_BYTES = 1024 * 1024
MAX_STDIN_BYTES = 16 * 1024 * 1024


def _too_large(details: str) -> ApiError:
    return ApiError(413, "invalid_argument", "request too large", details)


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_args(args: Sequence[str], field: str) -> None:
    """Refuse an argument list that no program could be started with (413)."""
    total = 0
    for index, arg in enumerate(args):
        size = _size(arg)
        if size > MAX_ARG_BYTES:
            raise _too_large(
                f"{field}[{index}] is {size} bytes; the limit is {MAX_ARG_BYTES} bytes per "
                "argument (an operating-system limit on program arguments): put the SQL in a "
                "file and pass it with -f"
            )
        total += size + 1
    if total > MAX_TOTAL_ARG_BYTES:
        raise _too_large(
            f"{field} add up to {total} bytes; the limit is {MAX_TOTAL_ARG_BYTES} bytes for all "
            "arguments together: put the SQL in files and pass them with -f"
        )


def check_stdin(texts: Iterable[str | None], field: str) -> None:
    """Refuse stdin text beyond MAX_STDIN_BYTES in total (413)."""
    total = sum(_size(text) for text in texts if text is not None)
    if total > MAX_STDIN_BYTES:
        raise _too_large(
            f"{field} is {total} bytes; the limit is {MAX_STDIN_BYTES} bytes: put the SQL in a "
            "file and pass it with -f"
        )
