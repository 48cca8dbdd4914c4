"""The built-in config tree: what `GET /v1/config?effective=true` shows with no overrides.

Only overrides are stored on disk; every reader sees defaults deep-merged with them, so a key
that is absent from `config.json` always has a well-defined value here. `null` defaults mean
"decided at run time" (see the comments), not "unset".
"""

from __future__ import annotations

import copy
from typing import Any

from sqlrs_engine.pool import settings as pool_settings

__all__ = [
    "CONTAINER_RUNTIMES",
    "DEFAULTS",
    "DEFAULT_EXPIRY_INTERVAL",
    "DEFAULT_HIGH_WATERMARK",
    "DEFAULT_HTTP_THREADS",
    "DEFAULT_JOB_MIN_AGE",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_LOW_WATERMARK",
    "DEFAULT_MAX_IDENTICAL",
    "DEFAULT_MAX_TASK_LOG_LINES",
    "DEFAULT_MIN_STATE_AGE",
    "LOG_LEVELS",
    "MAX_HTTP_THREADS",
    "MIN_HTTP_THREADS",
    "SNAPSHOT_BACKENDS",
    "defaults",
]

CONTAINER_RUNTIMES: tuple[str, ...] = ("auto", "docker", "podman", "host")
SNAPSHOT_BACKENDS: tuple[str, ...] = ("auto", "overlay", "btrfs", "copy")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error")

DEFAULT_LOG_LEVEL = "info"
DEFAULT_HIGH_WATERMARK = 0.9
DEFAULT_LOW_WATERMARK = 0.8
DEFAULT_MIN_STATE_AGE = "10m"
DEFAULT_MAX_IDENTICAL = 2
DEFAULT_JOB_MIN_AGE = "5m"
DEFAULT_EXPIRY_INTERVAL = "1s"
DEFAULT_MAX_TASK_LOG_LINES = 10_000
DEFAULT_HTTP_THREADS = 8
# Workers only serve short requests (event and run streams are served by one stream loop);
# the upper bound keeps a typo from making the engine start millions of threads.
MIN_HTTP_THREADS = 4
MAX_HTTP_THREADS = 4096

DEFAULTS: dict[str, Any] = {
    "cache": {
        "capacity": {
            "highWatermark": DEFAULT_HIGH_WATERMARK,
            "lowWatermark": DEFAULT_LOW_WATERMARK,
            "maxBytes": 0,  # 0 = no configured limit (only the reserve applies)
            "minStateAge": DEFAULT_MIN_STATE_AGE,
            "reserveBytes": None,  # null = max(10 GiB, 10% of the store's filesystem)
        },
    },
    "container": {"runtime": "auto"},
    # pinThreads: the engine's threads on one CPU, its child processes on all (affinity.py);
    # read once at startup
    "engine": {"pinThreads": True},
    "http": {"threads": DEFAULT_HTTP_THREADS},  # read once at startup
    # expiryInterval: how often expired instances (TTL) are deleted; 0 = never (startup)
    "instances": {"expiryInterval": DEFAULT_EXPIRY_INTERVAL},
    "liquibase": {
        "exec": None,  # null = only `liquibase` on the engine's PATH
        "warmJvm": True,  # one JVM per lb job where the installation allows it
    },
    "log": {"level": DEFAULT_LOG_LEVEL},
    # minAge: retention never trims a job that finished less than this ago (SPEC §0.1)
    "orchestrator": {
        "jobs": {
            "maxIdentical": DEFAULT_MAX_IDENTICAL,
            "maxTaskLogLines": DEFAULT_MAX_TASK_LOG_LINES,  # read when a job starts
            "minAge": DEFAULT_JOB_MIN_AGE,
        },
    },
    # The warm pool of ready instances (pool/settings.py; off by default: docs/configuration.md)
    "pool": {
        "enabled": pool_settings.DEFAULT_ENABLED,
        "fillConcurrency": pool_settings.DEFAULT_FILL_CONCURRENCY,
        "idleExpiry": pool_settings.DEFAULT_IDLE_EXPIRY,
        "maxMembers": pool_settings.DEFAULT_MAX_MEMBERS,
        "maxMemoryBytes": pool_settings.DEFAULT_MAX_MEMORY_BYTES,
        "membersPerState": pool_settings.DEFAULT_MEMBERS_PER_STATE,
        "pinnedStates": [],
        "shortPath": pool_settings.DEFAULT_SHORT_PATH,
    },
    "runtime": {
        "host": {
            "binDirs": None,  # null = only the standard PostgreSQL locations
            "user": None,  # null = `postgres` when running as root and that user exists
        },
    },
    "snapshot": {"backend": "auto"},
}
"""Keys in sorted order, as Go's encoder writes maps. Never mutate; use `defaults()`."""


def defaults() -> dict[str, Any]:
    """A fresh deep copy of `DEFAULTS` that the caller may change."""
    return copy.deepcopy(DEFAULTS)
