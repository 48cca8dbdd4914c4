"""Run requests (SPEC §5): validation in the reference order, and the argv of each step.

Pure: the only outside fact validation needs — which instance `instance_ref` names — comes
from an injected `lookup`, so every row of the §5 table is tested here without a server.

Order (first failing check wins), with this project's additions marked (+):

1. body shape: not a JSON object, or a field of the wrong JSON type → 400 `invalid json
   payload` (the reference's JSON decoder fails on a type mismatch, before any check);
2. `instance_ref` blank → 400 `instance_ref is required`;
3. `kind` (trimmed, lowercased) not `psql`/`pgbench` → 400 `unknown run kind`;
4. instance not found (exact id, then name; no redirect) → 404 `instance not found`;
5. instance without `runtime_id` → 409 `instance runtime id is missing`;
6. psql `args` with a §2.2 connection flag or a non-dash arg containing `://` → 409;
   (+) also any other positional argument (`psql_positional`): psql would take it as the
   database (a conninfo string redirects it) and the engine's DSN as the user;
7. pgbench `args` with `-h -p -U -d` or those with an attached value → 409;
8. `steps` with kind ≠ psql / with non-empty `args` / with `stdin` → 400;
9. a step with psql connection args → 409;
10. (+) `command` other than the kind's own program → 400 `unsupported run command`.

Decision on `command` (10): the host runtime runs client programs as the engine's OS user on
the engine's machine, not inside a container, so an arbitrary path would let any API client
run any program. A run therefore always executes the instance's own `psql`/`pgbench` (from
the bin dir of the instance's PostgreSQL major); `command` may only name that program
(`"psql"` for run:psql, `"pgbench"` for run:pgbench) or be omitted. The check comes last so
that every §5 row answers exactly as the reference does.

Connection injection: psql gets the DSN as its last positional argument, as §5 says. pgbench
gets `-h 127.0.0.1 -p <port> -U sqlrs` **after** the user's arguments and the database name
last: `getopt` keeps the last value of an option, so the engine's values also win over the
long forms (`--host=…`) that §5 does not reject; and a positional of the user's makes pgbench
stop with "too many command-line arguments" before it connects. (The reference passes
`-d postgres`, but for pgbench `-d` means `--debug`; the database is the positional.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlrs_engine.errors import ApiError, conflict, invalid_argument, not_found
from sqlrs_engine.limits import check_args, check_stdin
from sqlrs_engine.prepare.psql_args import is_connection_flag, refuse_nul_characters
from sqlrs_engine.prepare.textutil import go_trim_space
from sqlrs_engine.runtime.base import DB_NAME, DB_USER, ServerHandle

RunKind = Literal["psql", "pgbench"]

PROGRAMS: dict[RunKind, str] = {"psql": "psql", "pgbench": "pgbench"}
"""The client program each run kind executes."""

_PGBENCH_CONNECTION_FLAGS = ("-h", "-p", "-U", "-d")


@dataclass(frozen=True)
class FoundInstance:
    """What validation needs to know about the instance `instance_ref` names."""

    instance_id: str
    runtime_id: str | None


InstanceLookup = Callable[[str], FoundInstance | None]
"""Resolves a trimmed `instance_ref` (exact id first, then name); None when unknown."""


@dataclass(frozen=True)
class RunStep:
    """One execution of the client program, with its own stdin."""

    args: tuple[str, ...]
    stdin: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """A validated run: which instance, which program, and the steps in order."""

    instance_id: str
    kind: RunKind
    program: str
    steps: tuple[RunStep, ...]


@dataclass(frozen=True)
class _Body:
    """The request body after type checks (step 1)."""

    instance_ref: str
    kind: str
    command: str | None
    args: tuple[str, ...]
    stdin: str | None
    steps: tuple[RunStep, ...]


def validate_run_request(body: dict[str, Any], lookup: InstanceLookup) -> RunPlan:
    """Apply the §5 checks in order; raise the first failing one as an `ApiError`."""
    request = _decode(body)
    check_args(request.args, "args")
    check_stdin([request.stdin], "stdin")
    for index, step in enumerate(request.steps):
        check_args(step.args, f"steps[{index}].args")
    check_stdin((step.stdin for step in request.steps), "the steps' stdin")
    instance_ref = go_trim_space(request.instance_ref)
    if not instance_ref:
        raise invalid_argument("instance_ref is required")
    kind = go_trim_space(request.kind).lower()
    if kind not in PROGRAMS:
        raise invalid_argument("unknown run kind", request.kind)
    run_kind: RunKind = "psql" if kind == "psql" else "pgbench"
    found = lookup(instance_ref)
    if found is None:
        raise not_found("instance not found")
    if not found.runtime_id:
        raise conflict("instance runtime id is missing")
    _check_connection_args(run_kind, request.args)
    if request.steps:
        if run_kind != "psql":
            raise invalid_argument("steps are only supported for run:psql")
        if request.args:
            raise invalid_argument("steps cannot be combined with args")
        if request.stdin is not None:
            raise invalid_argument("steps cannot be combined with stdin")
        for step in request.steps:
            _check_connection_args(run_kind, step.args)
        steps = request.steps
    else:
        steps = (RunStep(request.args, request.stdin),)
    program = _program(run_kind, request.command)
    return RunPlan(found.instance_id, run_kind, program, steps)


def step_args(kind: RunKind, args: Sequence[str], handle: ServerHandle) -> list[str]:
    """The program's arguments for one step, with the engine's connection injected."""
    if kind == "psql":
        return [*args, handle.bare_dsn]
    return [*args, "-h", handle.host, "-p", str(handle.port), "-U", DB_USER, DB_NAME]


def psql_connection_conflict(args: Sequence[str]) -> str | None:
    """The first argument that would point psql at another server (§5), else None."""
    for arg in args:
        if not arg:
            continue
        if is_connection_flag(arg) or (not arg.startswith("-") and "://" in arg):
            return arg
    return None


_PSQL_VALUE_LETTERS = frozenset("cdfFhLopPRTUv")
"""psql's short options that take a value (its getopt string, PostgreSQL 15)."""
_PSQL_VALUE_LONG = (
    "command",
    "dbname",
    "field-separator",
    "file",
    "host",
    "log-file",
    "output",
    "port",
    "pset",
    "record-separator",
    "set",
    "table-attr",
    "username",
    "variable",
)
"""psql's long options that take a value; getopt_long also accepts unique prefixes."""


def psql_positional(args: Sequence[str]) -> str | None:
    """The first positional argument psql would see (getopt_long rules), else None.

    psql reads its first positional as the database — a name, a URI or a conninfo string
    such as `host=… port=…` — and its second as the user. With one of the client's, the
    engine's DSN (appended last) would become the user name, and psql would connect to
    whatever the client's argument says: another server than the instance's. §5 only
    names `://`; a conninfo string or a bare database name redirects just the same.
    """
    remaining = iter(args)
    for arg in remaining:
        if not arg:
            continue
        if arg == "--":
            return next((rest for rest in remaining if rest), None)
        if arg.startswith("--"):
            name, has_value, _ = arg[2:].partition("=")
            if not has_value and any(option.startswith(name) for option in _PSQL_VALUE_LONG):
                next(remaining, None)
            continue
        if arg.startswith("-") and arg != "-":
            letters = arg[1:]
            for index, letter in enumerate(letters):
                if letter in _PSQL_VALUE_LETTERS:
                    if index == len(letters) - 1:
                        next(remaining, None)  # the value is the next argument
                    break  # the rest of the cluster is the value
            continue
        return arg
    return None


def pgbench_connection_conflict(args: Sequence[str]) -> str | None:
    """The first `-h -p -U -d` argument, alone or with an attached value (§5), else None."""
    for arg in args:
        if arg.startswith(_PGBENCH_CONNECTION_FLAGS):
            return arg
    return None


def _check_connection_args(kind: RunKind, args: Sequence[str]) -> None:
    if kind == "psql":
        arg = psql_connection_conflict(args) or psql_positional(args)
        if arg is not None:
            raise conflict("conflicting psql connection arguments", arg)
    else:
        arg = pgbench_connection_conflict(args)
        if arg is not None:
            raise conflict("conflicting pgbench connection arguments", arg)


def _program(kind: RunKind, command: str | None) -> str:
    """The program to run: the kind's own; `command` may only name it (module docstring)."""
    default = PROGRAMS[kind]
    name = go_trim_space(command or "")
    if name and name != default:
        raise invalid_argument(
            "unsupported run command",
            f"run:{kind} executes the instance's own {default} (from its PostgreSQL version); "
            f'omit "command" or set it to "{default}", got {name!r}',
        )
    return default


# -- body decoding (step 1) ----------------------------------------------------------------


def _decode(body: dict[str, Any]) -> _Body:
    steps_value = body.get("steps")
    if steps_value is not None and not isinstance(steps_value, list):
        raise _bad_type("steps must be an array of objects")
    steps: list[RunStep] = []
    for index, item in enumerate(steps_value or []):
        if not isinstance(item, dict):
            raise _bad_type(f"steps[{index}] must be an object")
        steps.append(
            RunStep(
                _strings(item.get("args"), f"steps[{index}].args"),
                _optional_string(item.get("stdin"), f"steps[{index}].stdin"),
            )
        )
    return _Body(
        instance_ref=_optional_string(body.get("instance_ref"), "instance_ref") or "",
        kind=_optional_string(body.get("kind"), "kind") or "",
        command=_optional_string(body.get("command"), "command"),
        args=_strings(body.get("args"), "args"),
        stdin=_optional_string(body.get("stdin"), "stdin"),
        steps=tuple(steps),
    )


def _optional_string(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _bad_type(f"{name} must be a string")


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _bad_type(f"{name} must be an array of strings")
    refuse_nul_characters(value, name)
    return tuple(value)


def _bad_type(details: str) -> ApiError:
    return invalid_argument("invalid json payload", details)
