"""SPEC §2.6 hash formulas and their test vectors."""

from __future__ import annotations

import hashlib

import pytest

from sqlrs_engine.prepare.digest import all_inputs_digest, signature_task_hash, step_task_hashes
from sqlrs_engine.prepare.hashing import (
    FieldHasher,
    field_hash,
    lb_job_signature,
    lb_task_hash,
    psql_job_signature,
    psql_task_hash,
    sha256_hex,
    state_id,
)
from sqlrs_engine.prepare.plan import PlanTask
from sqlrs_engine.prepare.psql_args import parse_psql_args

VECTOR_IMAGE = "postgres:17@sha256:" + "0" * 64
VECTOR_CONTENT = "8903abffd68710879da59014708c6187f8e839fadc2bdf94ae73a036aa591623"
VECTOR_TASK = "98c759b26d16aee411a24a6a1784792c227e2646c7af6dfa71002893b3e2603b"
VECTOR_STATE = "244c583aff02ac7a73f50615e87b0db5ec805d53442b385b0ecf9cb5c51b2325"
VECTOR_SIGNATURE = "5f211ac2d26d2136d1979b39c032bdbf804dfb4b29df313996402d31a633d11a"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            [("key", "value")],
            "5162d108c14e0c64d529a82f5f1d08c13e96c74342f8fd699042d9d391e261e1",
        ),
        ([], hashlib.sha256(b"").hexdigest()),
        ([("a", "")], hashlib.sha256(b"a=0:\n").hexdigest()),
        # byte length, not character length
        ([("k", "é")], hashlib.sha256("k=2:é\n".encode()).hexdigest()),
        ([("a", "1"), ("b", "22")], hashlib.sha256(b"a=1:1\nb=2:22\n").hexdigest()),
    ],
)
def test_field_hash(fields: list[tuple[str, str]], expected: str) -> None:
    assert field_hash(fields) == expected
    hasher = FieldHasher()
    for key, value in fields:
        hasher.write(key, value)
    assert hasher.hexdigest() == expected


def test_spec_vectors_from_formulas() -> None:
    assert sha256_hex("select 1\n") == VECTOR_CONTENT
    assert psql_task_hash(VECTOR_CONTENT, "dev") == VECTOR_TASK
    assert state_id("image", VECTOR_IMAGE, VECTOR_TASK) == VECTOR_STATE
    assert psql_job_signature(VECTOR_TASK, VECTOR_IMAGE, False) == VECTOR_SIGNATURE


def test_spec_vectors_end_to_end_from_args() -> None:
    plan = parse_psql_args(["-c", "select 1"], None)
    assert all_inputs_digest(plan).hash == VECTOR_CONTENT
    assert step_task_hashes(plan, "dev") == [VECTOR_TASK]
    assert signature_task_hash(plan, "dev") == VECTOR_TASK


@pytest.mark.parametrize(
    ("plan_only", "flag"),
    [(False, "false"), (True, "true")],
)
def test_psql_job_signature_plan_only(plan_only: bool, flag: str) -> None:
    expected = field_hash(
        [("task_hash", VECTOR_TASK), ("image_id", VECTOR_IMAGE), ("plan_only", flag)]
    )
    assert psql_job_signature(VECTOR_TASK, VECTOR_IMAGE, plan_only) == expected


@pytest.mark.parametrize(
    ("prev", "changeset_hash", "fields"),
    [
        ("img", None, [("prepare_kind", "lb"), ("prev_state_id", "img")]),
        (
            "s1",
            "abc",
            [("prepare_kind", "lb"), ("prev_state_id", "s1"), ("changeset_hash", "abc")],
        ),
    ],
)
def test_lb_task_hash(prev: str, changeset_hash: str | None, fields: list[tuple[str, str]]) -> None:
    assert lb_task_hash(prev, changeset_hash) == field_hash(fields)


def test_lb_job_signature_writes_optional_fields_only_when_set() -> None:
    tasks = [
        PlanTask(task_id="plan", type="plan", planner_kind="lb"),
        PlanTask(
            task_id="execute-0",
            type="state_execute",
            input_kind="image",
            input_id="img@sha256:1",
            task_hash="th",
            output_state_id="s0",
            cached=False,
            changeset_id="1",
            changeset_author="me",
            changeset_path="db/x.xml",
        ),
        PlanTask(
            task_id="prepare-instance",
            type="prepare_instance",
            input_kind="state",
            input_id="s0",
            instance_mode="ephemeral",
        ),
    ]
    expected = field_hash(
        [
            ("image_id", "img@sha256:1"),
            ("plan_only", "true"),
            ("engine_version", "dev"),
            ("task_id", "plan"),
            ("task_type", "plan"),
            ("task_id", "execute-0"),
            ("task_type", "state_execute"),
            ("input_kind", "image"),
            ("input_id", "img@sha256:1"),
            ("task_hash", "th"),
            ("changeset_id", "1"),
            ("changeset_author", "me"),
            ("changeset_path", "db/x.xml"),
            ("task_id", "prepare-instance"),
            ("task_type", "prepare_instance"),
            ("input_kind", "state"),
            ("input_id", "s0"),
        ]
    )
    assert lb_job_signature("img@sha256:1", True, "dev", tasks) == expected
