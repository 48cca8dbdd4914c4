"""The engine with capacity enforcement (SPEC §10.2) replaced by a no-op.

Only the baseline of `bench_cache.py --only hits`: the same engine source, started the same
way, minus every `CacheEnforcer.check` (the start-up trigger and the three triggers of a
build). SPEC §10.1 has no switch for this on purpose — enforcement is always on — so the
benchmark makes one here rather than in the product.
"""

from __future__ import annotations

import runpy
from typing import Any

from sqlrs_engine.cache import enforcer


def _no_check(self: enforcer.CacheEnforcer, trigger: str, protected: Any = frozenset()) -> None:
    return None


enforcer.CacheEnforcer.check = _no_check  # type: ignore[method-assign]
runpy.run_module("sqlrs_engine", run_name="__main__", alter_sys=True)
