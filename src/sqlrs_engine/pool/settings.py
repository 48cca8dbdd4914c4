"""The `pool.*` config keys, read into one typed value (pure: table-tested).

Every key is optional; a missing, null or unusable value means its built-in default, so a
hand-edited config.json can never stop the pool from working (the API refuses bad values
through `config/validate.py`, which uses the bounds defined here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlrs_engine.durations import DurationError, parse_duration

DEFAULT_ENABLED = False
DEFAULT_MEMBERS_PER_STATE = 2
DEFAULT_MAX_MEMBERS = 8
DEFAULT_MAX_MEMORY_BYTES = 1 << 30
DEFAULT_IDLE_EXPIRY = "10m"
DEFAULT_FILL_CONCURRENCY = 1
DEFAULT_SHORT_PATH = True
MAX_MEMBERS_LIMIT = 256
"""Upper bound of `pool.maxMembers` and `pool.membersPerState` (each member is a server)."""
MAX_FILL_CONCURRENCY = 8


@dataclass(frozen=True)
class PoolSettings:
    """What the pool is allowed to keep warm, and how fast it may refill."""

    enabled: bool = DEFAULT_ENABLED
    members_per_state: int = DEFAULT_MEMBERS_PER_STATE
    max_members: int = DEFAULT_MAX_MEMBERS
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES
    """0 = no memory bound besides `max_members`."""
    idle_expiry_seconds: float = 600.0
    """A state not hit for this long loses its members (pinned states never do)."""
    fill_concurrency: int = DEFAULT_FILL_CONCURRENCY
    pinned_states: tuple[str, ...] = ()
    """States kept warm whether or not they are hit (config `pool.pinnedStates`)."""
    short_path: bool = DEFAULT_SHORT_PATH
    """A hit that finds a ready member is recorded without a job (jobs/pooled_hit.py);
    False: every hit runs as a job (to compare both, or to rule the short path out)."""

    @classmethod
    def from_config(cls, tree: dict[str, Any] | None) -> PoolSettings:
        """The settings of an effective `pool` config subtree (None: all defaults)."""
        node = tree if isinstance(tree, dict) else {}
        enabled = node.get("enabled")
        short_path = node.get("shortPath")
        return cls(
            enabled=enabled if isinstance(enabled, bool) else DEFAULT_ENABLED,
            members_per_state=_count(
                node.get("membersPerState"), DEFAULT_MEMBERS_PER_STATE, 0, MAX_MEMBERS_LIMIT
            ),
            max_members=_count(node.get("maxMembers"), DEFAULT_MAX_MEMBERS, 0, MAX_MEMBERS_LIMIT),
            max_memory_bytes=_count(
                node.get("maxMemoryBytes"), DEFAULT_MAX_MEMORY_BYTES, 0, (1 << 63) - 1
            ),
            idle_expiry_seconds=_seconds(node.get("idleExpiry"), DEFAULT_IDLE_EXPIRY),
            fill_concurrency=_count(
                node.get("fillConcurrency"), DEFAULT_FILL_CONCURRENCY, 1, MAX_FILL_CONCURRENCY
            ),
            pinned_states=_state_ids(node.get("pinnedStates")),
            short_path=short_path if isinstance(short_path, bool) else DEFAULT_SHORT_PATH,
        )

    @property
    def active(self) -> bool:
        """Whether the pool may hold any member at all."""
        return self.enabled and self.max_members > 0 and self.members_per_state > 0

    def as_json(self) -> dict[str, Any]:
        """The effective settings, as the status endpoint shows them."""
        return {
            "enabled": self.enabled,
            "members_per_state": self.members_per_state,
            "max_members": self.max_members,
            "max_memory_bytes": self.max_memory_bytes,
            "idle_expiry_seconds": self.idle_expiry_seconds,
            "fill_concurrency": self.fill_concurrency,
            "pinned_states": list(self.pinned_states),
            "short_path": self.short_path,
        }


def _count(value: Any, default: int, low: int, high: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return default


def _seconds(value: Any, default: str) -> float:
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except DurationError:
            pass
        else:
            if seconds > 0:
                return seconds
    return parse_duration(default)


def _state_ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    seen: dict[str, None] = {}
    for item in value:
        if isinstance(item, str) and item.strip():
            seen.setdefault(item.strip(), None)
    return tuple(seen)
