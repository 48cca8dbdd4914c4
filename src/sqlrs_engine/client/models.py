"""Typed values the client returns. Each keeps the engine's JSON in `raw` for fields the
engine adds later; the typed attributes are the ones the API contract promises (SPEC §4, §7).

`dsn` fields never appear in a repr: a DSN carries the instance's password, and reprs end up
in logs and pytest failure reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Instance:
    """A running, writable database handed out by a prepare."""

    instance_id: str
    state_id: str
    image_id: str
    cached: bool
    """True when every step came from the cache (nothing was executed for this prepare)."""
    job_id: str
    dsn: str = field(repr=False)
    expires_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Event:
    """One prepare-job event (SPEC §4.3); `index` is its position in the job's stream."""

    index: int
    type: str
    ts: str
    status: str | None = None
    task_id: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)
    error: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, index: int, data: dict[str, Any]) -> Event:
        return cls(
            index=index,
            type=str(data.get("type", "")),
            ts=str(data.get("ts", "")),
            status=data.get("status"),
            task_id=data.get("task_id"),
            message=data.get("message"),
            result=data.get("result"),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class Task:
    """A task of a prepare job's plan (`GET /v1/tasks?job=`)."""

    task_id: str
    type: str
    status: str
    cached: bool | None = None
    args_summary: str | None = None
    output_state_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(
            task_id=str(data.get("task_id", "")),
            type=str(data.get("type", "")),
            status=str(data.get("status", "")),
            cached=data.get("cached"),
            args_summary=data.get("args_summary"),
            output_state_id=data.get("output_state_id"),
        )


@dataclass(frozen=True)
class RunResult:
    """The outcome of `POST /v1/runs`: exit code and the output streams."""

    instance_id: str
    exit_code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class InstanceEntry:
    """An entry of `GET /v1/instances` (SPEC §7)."""

    instance_id: str
    state_id: str
    image_id: str
    created_at: str
    status: str
    expires_at: str | None = None
    name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceEntry:
        return cls(
            instance_id=str(data["instance_id"]),
            state_id=str(data.get("state_id", "")),
            image_id=str(data.get("image_id", "")),
            created_at=str(data.get("created_at", "")),
            status=str(data.get("status", "")),
            expires_at=data.get("expires_at"),
            name=data.get("name"),
            raw=data,
        )


@dataclass(frozen=True)
class StateEntry:
    """An entry of `GET /v1/states` (SPEC §7)."""

    state_id: str
    image_id: str
    prepare_kind: str
    created_at: str
    refcount: int
    parent_state_id: str | None = None
    size_bytes: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StateEntry:
        return cls(
            state_id=str(data["state_id"]),
            image_id=str(data.get("image_id", "")),
            prepare_kind=str(data.get("prepare_kind", "")),
            created_at=str(data.get("created_at", "")),
            refcount=int(data.get("refcount", 0)),
            parent_state_id=data.get("parent_state_id"),
            size_bytes=data.get("size_bytes"),
            raw=data,
        )


@dataclass(frozen=True)
class JobEntry:
    """An entry of `GET /v1/prepare-jobs` (SPEC §4.9)."""

    job_id: str
    status: str
    prepare_kind: str
    image_id: str
    created_at: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobEntry:
        return cls(
            job_id=str(data["job_id"]),
            status=str(data.get("status", "")),
            prepare_kind=str(data.get("prepare_kind", "")),
            image_id=str(data.get("image_id", "")),
            created_at=str(data.get("created_at", "")),
            raw=data,
        )
