"""Run request validation (SPEC §5): every row of the table, in order, and the step argv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine.errors import ApiError
from sqlrs_engine.runs.requests import (
    FoundInstance,
    RunPlan,
    RunStep,
    pgbench_connection_conflict,
    psql_connection_conflict,
    psql_positional,
    step_args,
    validate_run_request,
)
from sqlrs_engine.runtime.base import ServerHandle

INSTANCE = "0123456789abcdef0123456789abcdef"
NO_RUNTIME = "fedcba9876543210fedcba9876543210"
INSTANCES = {
    INSTANCE: FoundInstance(INSTANCE, "host:4242"),
    "named": FoundInstance(INSTANCE, "host:4242"),
    NO_RUNTIME: FoundInstance(NO_RUNTIME, None),
}


def lookup(ref: str) -> FoundInstance | None:
    return INSTANCES.get(ref)


_ABSENT = object()


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"instance_ref": INSTANCE, "kind": "psql", "args": []}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _ABSENT}


# (case id, body, status, code, message, details)
ERRORS: list[tuple[str, dict[str, Any], int, str, str, str | None]] = [
    # 1. body shape (the reference's JSON decoder)
    ("args not a list", body(args="-c select 1"), 400, "invalid_argument",
     "invalid json payload", "args must be an array of strings"),
    ("args with a number", body(args=["-c", 1]), 400, "invalid_argument",
     "invalid json payload", "args must be an array of strings"),
    ("instance_ref not a string", body(instance_ref=7), 400, "invalid_argument",
     "invalid json payload", "instance_ref must be a string"),
    ("stdin not a string", body(stdin=["x"]), 400, "invalid_argument",
     "invalid json payload", "stdin must be a string"),
    ("steps not a list", body(steps={"args": []}), 400, "invalid_argument",
     "invalid json payload", "steps must be an array of objects"),
    ("step not an object", body(steps=["-c"]), 400, "invalid_argument",
     "invalid json payload", "steps[0] must be an object"),
    ("step args not strings", body(steps=[{"args": [True]}]), 400, "invalid_argument",
     "invalid json payload", "steps[0].args must be an array of strings"),
    # 2. instance_ref
    ("instance_ref missing", body(instance_ref=_ABSENT), 400, "invalid_argument",
     "instance_ref is required", None),
    ("instance_ref blank", body(instance_ref=" \t"), 400, "invalid_argument",
     "instance_ref is required", None),
    ("blank ref before bad kind", body(instance_ref="", kind="bash"), 400, "invalid_argument",
     "instance_ref is required", None),
    # 3. kind
    ("kind missing", body(kind=_ABSENT), 400, "invalid_argument", "unknown run kind", None),
    ("kind unknown", body(kind="bash"), 400, "invalid_argument", "unknown run kind", "bash"),
    ("bad kind before unknown instance", body(instance_ref="nope", kind="lb"), 400,
     "invalid_argument", "unknown run kind", "lb"),
    # 4. instance
    ("instance unknown", body(instance_ref="nope"), 404, "not_found", "instance not found", None),
    ("unknown instance before conflicts", body(instance_ref="nope", args=["-h", "x"]), 404,
     "not_found", "instance not found", None),
    # 5. runtime id
    ("no runtime id", body(instance_ref=NO_RUNTIME), 409, "conflict",
     "instance runtime id is missing", None),
    ("no runtime id before conflicts", body(instance_ref=NO_RUNTIME, args=["-h", "x"]), 409,
     "conflict", "instance runtime id is missing", None),
    # 6. psql connection arguments
    *[
        (f"psql {arg}", body(args=["-c", "select 1", arg, "v"]), 409, "conflict",
         "conflicting psql connection arguments", arg)
        for arg in ["-h", "-p", "-U", "-d", "--host", "--port", "--username", "--dbname",
                    "--database", "--host=x", "--port=1", "--username=u", "--dbname=d",
                    "--database=d", "-hx", "-p5432", "-Uu", "-dpostgres"]
    ],
    ("psql url positional", body(args=["postgres://u@h/db"]), 409, "conflict",
     "conflicting psql connection arguments", "postgres://u@h/db"),
    ("psql url in a -c value", body(args=["-c", "select 'http://x'"]), 409, "conflict",
     "conflicting psql connection arguments", "select 'http://x'"),
    ("psql conflict before steps rules", body(args=["-h", "x"], steps=[{"args": []}]), 409,
     "conflict", "conflicting psql connection arguments", "-h"),
    # 7. pgbench connection arguments
    *[
        (f"pgbench {arg}", body(kind="pgbench", args=["-T", "2", arg]), 409, "conflict",
         "conflicting pgbench connection arguments", arg)
        for arg in ["-h", "-p", "-U", "-d", "-hlocalhost", "-p5432", "-Usqlrs", "-dpostgres"]
    ],
    ("pgbench conflict before steps rules",
     body(kind="pgbench", args=["-p", "1"], steps=[{"args": []}]), 409, "conflict",
     "conflicting pgbench connection arguments", "-p"),
    # 8. steps
    ("steps with pgbench", body(kind="pgbench", steps=[{"args": ["-i"]}]), 400,
     "invalid_argument", "steps are only supported for run:psql", None),
    ("steps with args", body(args=["-c", "select 1"], steps=[{"args": ["-c", "select 2"]}]),
     400, "invalid_argument", "steps cannot be combined with args", None),
    ("steps with stdin", body(stdin="select 1;", steps=[{"args": ["-f", "-"]}]), 400,
     "invalid_argument", "steps cannot be combined with stdin", None),
    ("steps with empty stdin", body(stdin="", steps=[{"args": []}]), 400,
     "invalid_argument", "steps cannot be combined with stdin", None),
    ("steps rules before step conflicts", body(stdin="x", steps=[{"args": ["-h", "x"]}]), 400,
     "invalid_argument", "steps cannot be combined with stdin", None),
    # 9. step connection arguments
    ("step with -U", body(steps=[{"args": ["-c", "select 1"]}, {"args": ["-U", "x"]}]), 409,
     "conflict", "conflicting psql connection arguments", "-U"),
    ("step with url", body(steps=[{"args": ["postgresql://x/y"]}]), 409, "conflict",
     "conflicting psql connection arguments", "postgresql://x/y"),
    # 10. (this project) command
    ("command other program", body(command="/bin/sh"), 400, "invalid_argument",
     "unsupported run command", None),
    ("command of the other kind", body(command="pgbench"), 400, "invalid_argument",
     "unsupported run command", None),
    ("command path", body(kind="pgbench", command="/usr/bin/pgbench"), 400,
     "invalid_argument", "unsupported run command", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "status", "code", "message", "details"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_validation_errors_in_spec_order(
    payload: dict[str, Any], status: int, code: str, message: str, details: str | None
) -> None:
    with pytest.raises(ApiError) as caught:
        validate_run_request(payload, lookup)
    error = caught.value
    assert (error.status, error.code, error.message) == (status, code, message)
    if details is not None:
        if message == "unsupported run command":
            assert details in (error.details or "")
        else:
            assert error.details == details


def test_unsupported_command_says_what_to_do() -> None:
    with pytest.raises(ApiError) as caught:
        validate_run_request(body(command="/bin/sh"), lookup)
    assert caught.value.details is not None
    assert 'omit "command" or set it to "psql"' in caught.value.details
    assert "/bin/sh" in caught.value.details


# (case id, body, expected plan)
VALID: list[tuple[str, dict[str, Any], RunPlan]] = [
    ("psql args and stdin become one step",
     body(args=["-f", "-"], stdin="select 1;"),
     RunPlan(INSTANCE, "psql", "psql", (RunStep(("-f", "-"), "select 1;"),))),
    ("kind trimmed and lowercased; ref trimmed; found by name",
     body(instance_ref=" named ", kind=" PgBench ", args=["-i"]),
     RunPlan(INSTANCE, "pgbench", "pgbench", (RunStep(("-i",), None),))),
    ("null args and no stdin", body(args=None),
     RunPlan(INSTANCE, "psql", "psql", (RunStep((), None),))),
    ("steps each with own stdin",
     body(args=None, steps=[{"args": ["-c", "select 1"]}, {"args": ["-f", "-"], "stdin": "x"}]),
     RunPlan(INSTANCE, "psql", "psql",
             (RunStep(("-c", "select 1"), None), RunStep(("-f", "-"), "x")))),
    ("empty steps mean no steps", body(args=["-c", "select 1"], steps=[]),
     RunPlan(INSTANCE, "psql", "psql", (RunStep(("-c", "select 1"), None),))),
    ("command naming the default program, padded", body(command=" psql "),
     RunPlan(INSTANCE, "psql", "psql", (RunStep((), None),))),
    ("blank command means default", body(kind="pgbench", command="  "),
     RunPlan(INSTANCE, "pgbench", "pgbench", (RunStep((), None),))),
    ("psql: other dash args and empty strings pass", body(args=["", "-At", "--csv", "-c", "x"]),
     RunPlan(INSTANCE, "psql", "psql", (RunStep(("", "-At", "--csv", "-c", "x"), None),))),
    ("pgbench: long forms are not checked (the engine's options come last and win)",
     body(kind="pgbench", args=["--host=elsewhere", "-T", "1"]),
     RunPlan(INSTANCE, "pgbench", "pgbench", (RunStep(("--host=elsewhere", "-T", "1"), None),))),
    ("unknown fields are ignored", body(extra={"a": 1}),
     RunPlan(INSTANCE, "psql", "psql", (RunStep((), None),))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "expected"), [case[1:] for case in VALID], ids=[case[0] for case in VALID]
)
def test_valid_requests(payload: dict[str, Any], expected: RunPlan) -> None:
    assert validate_run_request(payload, lookup) == expected


def test_lookup_gets_the_trimmed_ref() -> None:
    seen: list[str] = []

    def recording(ref: str) -> FoundInstance | None:
        seen.append(ref)
        return None

    with pytest.raises(ApiError):
        validate_run_request(body(instance_ref="  abc \n"), recording)
    assert seen == ["abc"]


def test_conflict_helpers_skip_empty_strings_and_return_the_first_offender() -> None:
    assert psql_connection_conflict(["", "-c", "select 1"]) is None
    assert psql_connection_conflict(["-X", "--port=5", "-h"]) == "--port=5"
    assert psql_connection_conflict(["-v", "x=1", "-c", "select 'a://'"]) == "select 'a://'"
    assert psql_connection_conflict(["--set=url=a://b"]) is None  # dash args are not URLs
    assert pgbench_connection_conflict(["", "--port=1", "-c", "4"]) is None
    assert pgbench_connection_conflict(["-i", "-Ux", "-h"]) == "-Ux"


HANDLE = ServerHandle("host:1", Path("/d"), "127.0.0.1", 54321)


def test_psql_gets_the_dsn_as_last_positional() -> None:
    assert step_args("psql", ["-c", "select 1"], HANDLE) == [
        "-c",
        "select 1",
        "postgres://sqlrs@127.0.0.1:54321/postgres",
    ]


def test_pgbench_gets_connection_options_after_user_args_and_db_last() -> None:
    assert step_args("pgbench", ["-T", "2"], HANDLE) == [
        "-T",
        "2",
        "-h",
        "127.0.0.1",
        "-p",
        "54321",
        "-U",
        "sqlrs",
        "postgres",
    ]


@pytest.mark.parametrize(
    ("args", "positional"),
    [
        ([], None),
        (["-At", "-c", "select 1"], None),
        (["-c", "host=x port=1"], None),  # a -c value, not a positional
        (["-Atc", "select 'a b'"], None),  # -c last in a cluster: the next arg is its value
        (["-Atcselect 1"], None),  # the rest of the cluster is the value
        (["-v", "a=1", "--set", "b=2", "--set=c=3", "-vd=4"], None),
        (["-P", "pager=off", "-F", ",", "-R", ";", "-T", "border=1", "-L", "/tmp/l"], None),
        (["--comm", "select 1"], None),  # getopt_long accepts a unique prefix
        (["--csv", "--no-psqlrc", "-X", "-q", "-1"], None),
        (["", "-c", "select 1"], None),  # empty arguments are skipped
        (["-c", "select 1", "template1"], "template1"),
        (["host=127.0.0.1 port=5433"], "host=127.0.0.1 port=5433"),
        (["-A", "dbname=other", "-c", "x"], "dbname=other"),
        (["-"], "-"),
        (["-c", "select 1", "--", "-x"], "-x"),  # after --, everything is positional
        (["--", ""], None),
    ],
)
def test_psql_positional_arguments_are_found_like_getopt_long(
    args: list[str], positional: str | None
) -> None:
    """Any positional would redirect psql (database = the client's, user = our DSN)."""
    assert psql_positional(args) == positional


def test_a_conninfo_positional_is_a_connection_conflict() -> None:
    body = {"instance_ref": "i1", "kind": "psql", "args": ["-c", "select 1", "port=1"]}
    with pytest.raises(ApiError) as raised:
        validate_run_request(body, lambda _ref: FoundInstance("i1", "host:1"))
    error = raised.value
    assert (error.status, error.code, error.message) == (
        409,
        "conflict",
        "conflicting psql connection arguments",
    )
    assert error.details == "port=1"
