"""The JSON Schema (draft 2020-12) served by `GET /v1/config/schema`.

Clients use it to offer completion and show types; the engine itself validates with the
explicit per-path rules in `validate.py` (as the reference engine does), so the two are kept
in step by hand. Every object allows additional properties: unknown keys are legal config.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlrs_engine.config.defaults import (
    CONTAINER_RUNTIMES,
    DEFAULTS,
    LOG_LEVELS,
    MAX_HTTP_THREADS,
    MIN_HTTP_THREADS,
    SNAPSHOT_BACKENDS,
)
from sqlrs_engine.pool.settings import MAX_FILL_CONCURRENCY, MAX_MEMBERS_LIMIT

__all__ = ["SCHEMA", "config_schema"]


def _obj(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "type": "object",
        "additionalProperties": True,
        "properties": properties,
    }
    if description:
        node["description"] = description
    return node


def _enum(values: tuple[str, ...], default: str, description: str) -> dict[str, Any]:
    return {
        "type": ["string", "null"],
        "enum": [*values, None],
        "default": default,
        "description": description,
    }


def _boolean(default: bool, description: str) -> dict[str, Any]:
    return {"type": ["boolean", "null"], "default": default, "description": description}


def _non_negative_int(default: int | None, description: str) -> dict[str, Any]:
    return {
        "type": ["integer", "null"],
        "minimum": 0,
        "default": default,
        "description": description,
    }


def _watermark(default: float, description: str) -> dict[str, Any]:
    return {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "maximum": 1,
        "default": default,
        "description": description,
    }


def _int_range(low: int, high: int, default: int, description: str) -> dict[str, Any]:
    return {
        "type": ["integer", "null"],
        "minimum": low,
        "maximum": high,
        "default": default,
        "description": description,
    }


_capacity = DEFAULTS["cache"]["capacity"]
_pool = DEFAULTS["pool"]

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sqlrs-engine config",
    **_obj(
        {
            "cache": _obj(
                {
                    "capacity": _obj(
                        {
                            "maxBytes": _non_negative_int(
                                _capacity["maxBytes"],
                                "Upper bound for cached states in bytes; 0 = no bound "
                                "besides the reserve.",
                            ),
                            "reserveBytes": _non_negative_int(
                                _capacity["reserveBytes"],
                                "Free space to keep on the store's filesystem; null = "
                                "max(10 GiB, 10% of the filesystem).",
                            ),
                            "highWatermark": _watermark(
                                _capacity["highWatermark"],
                                "Eviction starts above this fraction of the limit.",
                            ),
                            "lowWatermark": _watermark(
                                _capacity["lowWatermark"],
                                "Eviction stops at this fraction of the limit; must be "
                                "below highWatermark.",
                            ),
                            "minStateAge": {
                                "type": ["string", "null"],
                                "default": _capacity["minStateAge"],
                                "description": "Go duration (e.g. 10m, 1h30m); younger "
                                "states are never evicted.",
                            },
                        }
                    )
                }
            ),
            "container": _obj(
                {
                    "runtime": _enum(
                        CONTAINER_RUNTIMES,
                        DEFAULTS["container"]["runtime"],
                        "Where PostgreSQL runs; read once at startup. "
                        "SQLRS_CONTAINER_RUNTIME overrides it.",
                    )
                }
            ),
            "engine": _obj(
                {
                    "pinThreads": _boolean(
                        DEFAULTS["engine"]["pinThreads"],
                        "Run the engine's own threads on one CPU (one runs "
                        "Python at a time; on one CPU they hand over without waking another); "
                        "the programs it starts (PostgreSQL, psql, Liquibase) get every CPU; "
                        "read once at startup.",
                    )
                }
            ),
            "http": _obj(
                {
                    "threads": {
                        "type": ["integer", "null"],
                        "minimum": MIN_HTTP_THREADS,
                        "maximum": MAX_HTTP_THREADS,
                        "default": DEFAULTS["http"]["threads"],
                        "description": "HTTP server thread pool size; read once at startup.",
                    }
                }
            ),
            "instances": _obj(
                {
                    "expiryInterval": {
                        "type": ["string", "null"],
                        "default": DEFAULTS["instances"]["expiryInterval"],
                        "description": "Go duration; how often instances past their "
                        "expires_at (a prepare's ttl) are deleted; 0 = never (expires_at "
                        "then only shows); read once at startup.",
                    }
                }
            ),
            "log": _obj(
                {
                    "level": _enum(
                        LOG_LEVELS,
                        DEFAULTS["log"]["level"],
                        "Engine log level (accepted case-insensitively).",
                    )
                }
            ),
            "orchestrator": _obj(
                {
                    "jobs": _obj(
                        {
                            "maxIdentical": _non_negative_int(
                                DEFAULTS["orchestrator"]["jobs"]["maxIdentical"],
                                "Finished jobs kept per signature; 0 = keep all.",
                            ),
                            "minAge": {
                                "type": ["string", "null"],
                                "default": DEFAULTS["orchestrator"]["jobs"]["minAge"],
                                "description": "Go duration; retention never removes a job "
                                "that finished less than this ago, nor one whose events are "
                                "being streamed.",
                            },
                            "maxTaskLogLines": _non_negative_int(
                                DEFAULTS["orchestrator"]["jobs"]["maxTaskLogLines"],
                                "Log lines one task stores as job events; later lines are "
                                "only in the task's log file. Read when a job starts.",
                            ),
                        }
                    )
                }
            ),
            "liquibase": _obj(
                {
                    "exec": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "default": None,
                        "description": "Absolute path of the liquibase executable used by lb "
                        "prepares when the request has no liquibase_exec and no liquibase is "
                        "on the engine's PATH.",
                    },
                    "warmJvm": _boolean(
                        True,
                        "Run all Liquibase commands of an lb job in one warm "
                        "JVM (needs a JDK and a standard Liquibase distribution; falls back "
                        "to one process per command otherwise); false = always one process "
                        "per command.",
                    ),
                },
                "Liquibase (prepare_kind lb).",
            ),
            "pool": _obj(
                {
                    "enabled": _boolean(
                        _pool["enabled"],
                        "Keep ready, running instances of recently hit "
                        "states and hand them out on a cache hit.",
                    ),
                    "membersPerState": _int_range(
                        0,
                        MAX_MEMBERS_LIMIT,
                        _pool["membersPerState"],
                        "Ready instances kept per wanted state.",
                    ),
                    "maxMembers": _int_range(
                        0,
                        MAX_MEMBERS_LIMIT,
                        _pool["maxMembers"],
                        "Ready instances kept in all (global cap).",
                    ),
                    "maxMemoryBytes": _non_negative_int(
                        _pool["maxMemoryBytes"],
                        "Memory (PSS of their servers) the ready instances may use in all; "
                        "0 = no bound besides maxMembers.",
                    ),
                    "idleExpiry": {
                        "type": ["string", "null"],
                        "default": _pool["idleExpiry"],
                        "description": "Go duration; a state not hit for this long (and not "
                        "pinned) loses its ready instances.",
                    },
                    "fillConcurrency": _int_range(
                        1,
                        MAX_FILL_CONCURRENCY,
                        _pool["fillConcurrency"],
                        "Ready instances made at the same time (only while no prepare job "
                        "is queued or running).",
                    ),
                    "pinnedStates": {
                        "type": ["array", "null"],
                        "items": {"type": "string"},
                        "default": [],
                        "description": "State ids kept warm whether or not they are hit.",
                    },
                    "shortPath": _boolean(
                        _pool["shortPath"],
                        "Record a cache hit that finds a ready instance "
                        "without running a job (same job, events and result).",
                    ),
                },
                "Warm pool of ready instances (docs/configuration.md).",
            ),
            "runtime": _obj(
                {
                    "host": _obj(
                        {
                            "user": {
                                "type": ["string", "null"],
                                "minLength": 1,
                                "default": None,
                                "description": "OS user that runs PostgreSQL server "
                                "processes when the engine runs as root; null = postgres "
                                "if that user exists.",
                            },
                            "binDirs": {
                                "type": ["array", "null"],
                                "items": {"type": "string"},
                                "default": None,
                                "description": "Extra absolute directories searched for "
                                "PostgreSQL server binaries.",
                            },
                        },
                        "Settings of the `host` runtime (no containers).",
                    )
                }
            ),
            "snapshot": _obj(
                {
                    "backend": _enum(
                        SNAPSHOT_BACKENDS,
                        DEFAULTS["snapshot"]["backend"],
                        "State snapshot backend; read once at startup.",
                    )
                }
            ),
        }
    ),
}
"""Never mutate; use `config_schema()`."""


def config_schema() -> dict[str, Any]:
    """A fresh deep copy of `SCHEMA` for a response body."""
    return copy.deepcopy(SCHEMA)
