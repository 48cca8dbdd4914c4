"""The hashes that name states and jobs (SPEC §2.6).

State ids, task hashes and job signatures must be byte-identical to the reference engine's:
a state built by one engine is found by the other, and clients compare them. Everything goes
through one field hasher, SHA-256 over `<key>=<byte length of value>:<value>\\n` per field,
so no value can run into the next one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

PSQL_TASK_HASH_SCHEMA = "psql-task-hash-v2"


def _encode(value: str) -> bytes:
    # surrogateescape keeps file-system paths that are not valid UTF-8 byte-exact.
    return value.encode("utf-8", "surrogateescape")


def sha256_hex(data: bytes | str) -> str:
    """Lowercase hex SHA-256 of bytes (or of a string's UTF-8 bytes)."""
    if isinstance(data, str):
        data = _encode(data)
    return hashlib.sha256(data).hexdigest()


class FieldHasher:
    """H(k1=v1, k2=v2, ...): fields are written in order, then `hexdigest()`."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def write(self, key: str, value: str) -> FieldHasher:
        raw = _encode(value)
        self._sha.update(_encode(key) + b"=" + str(len(raw)).encode("ascii") + b":" + raw + b"\n")
        return self

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def field_hash(fields: Iterable[tuple[str, str]]) -> str:
    """H over `(key, value)` pairs in the given order (lowercase hex, 64 chars)."""
    hasher = FieldHasher()
    for key, value in fields:
        hasher.write(key, value)
    return hasher.hexdigest()


def _go_bool(value: bool) -> str:
    return "true" if value else "false"


def psql_task_hash(content_hash: str, engine_version: str) -> str:
    """Task hash of a psql step (or of all inputs, for the signature) from its content digest."""
    return field_hash(
        [
            ("prepare_kind", "psql"),
            ("content_hash", content_hash),
            ("engine_version", engine_version),
            ("psql_task_hash_schema", PSQL_TASK_HASH_SCHEMA),
        ]
    )


def state_id(input_kind: str, input_id: str, task_hash: str) -> str:
    """Output state id (= state fingerprint) of a task applied to an image or a parent state."""
    return field_hash(
        [("input_kind", input_kind), ("input_id", input_id), ("task_hash", task_hash)]
    )


def psql_job_signature(task_hash: str, image_id: str, plan_only: bool) -> str:
    """Job signature of a psql job: all-inputs task hash + effective image id + plan_only."""
    return field_hash(
        [("task_hash", task_hash), ("image_id", image_id), ("plan_only", _go_bool(plan_only))]
    )


def lb_task_hash(prev_state_id: str, changeset_hash: str | None) -> str:
    """Task hash of one Liquibase changeset step; no changeset_hash field when there is none."""
    fields = [("prepare_kind", "lb"), ("prev_state_id", prev_state_id)]
    if changeset_hash is not None:
        fields.append(("changeset_hash", changeset_hash))
    return field_hash(fields)


class SignatureTask(Protocol):
    """What the lb signature reads from a plan task (`plan.PlanTask` satisfies it)."""

    @property
    def task_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def input_kind(self) -> str: ...
    @property
    def input_id(self) -> str: ...
    @property
    def task_hash(self) -> str: ...
    @property
    def changeset_id(self) -> str: ...
    @property
    def changeset_author(self) -> str: ...
    @property
    def changeset_path(self) -> str: ...


def lb_job_signature(
    image_id: str, plan_only: bool, engine_version: str, tasks: Sequence[SignatureTask]
) -> str:
    """Plan-based job signature of an lb job; optional task fields only when non-empty."""
    hasher = FieldHasher()
    hasher.write("image_id", image_id)
    hasher.write("plan_only", _go_bool(plan_only))
    hasher.write("engine_version", engine_version)
    for task in tasks:
        hasher.write("task_id", task.task_id)
        hasher.write("task_type", task.type)
        if task.input_kind:
            hasher.write("input_kind", task.input_kind)
            hasher.write("input_id", task.input_id)
        for key, value in (
            ("task_hash", task.task_hash),
            ("changeset_id", task.changeset_id),
            ("changeset_author", task.changeset_author),
            ("changeset_path", task.changeset_path),
        ):
            if value:
                hasher.write(key, value)
    return hasher.hexdigest()
