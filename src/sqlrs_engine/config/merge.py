"""Effective config = defaults deep-merged with overrides.

Kept apart from the store so validation can compute the effective tree of a *proposed*
overrides document (the watermark cross-check needs it) before anything is persisted.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlrs_engine.config.defaults import DEFAULTS

__all__ = ["deep_merge", "effective_tree"]


def deep_merge(base: Any, override: Any) -> Any:
    """A new value: maps merge key by key (recursively); any other override value replaces.

    A `null` override replaces too (it does not fall back to the base), exactly as in the
    reference engine; readers decide what a `null` means for their setting.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def effective_tree(overrides: dict[str, Any]) -> dict[str, Any]:
    """`DEFAULTS` deep-merged with `overrides` (neither is modified)."""
    merged: dict[str, Any] = deep_merge(DEFAULTS, overrides)
    return merged
