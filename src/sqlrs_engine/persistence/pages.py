"""Keyset pages: how a listing is read a bounded piece at a time.

A listing is read in pages of at most `limit` rows, each resuming after the *key* (the
ORDER BY columns) of the previous page's last row. Unlike OFFSET, a keyset page costs the
same wherever it starts (an index seeks to the key), and rows inserted or deleted between
two pages neither repeat nor shift the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlrs_engine.persistence.rows import Row

K = TypeVar("K")


@dataclass(frozen=True)
class Page(Generic[K]):
    """Some entries of a list, and the keyset to ask for the next page (None: no more)."""

    rows: list[Row]
    next_key: K | None


def page_of(
    rows: list[Row], limit: int, entry: Callable[[Row], Row], key: Callable[[Row], K]
) -> Page[K]:
    """The page of `rows` (read with `limit`; -1: all): a full page may have a successor,
    resumed after the key of its last row; a short one is the last."""
    full = 0 <= limit <= len(rows) and bool(rows)
    return Page([entry(row) for row in rows], key(rows[-1]) if full else None)


def entries_page(entries: list[Row], limit: int, last_key: K | None) -> Page[K]:
    """`page_of` for entries built by their SELECT (`sql.fetch_entries`), whose last key
    came with them."""
    full = 0 <= limit <= len(entries) and bool(entries)
    return Page(entries, last_key if full else None)
