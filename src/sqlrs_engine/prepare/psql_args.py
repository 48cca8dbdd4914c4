"""psql argument rules, normalization and steps (SPEC §2.2-§2.4, §4.9, decision §0.1).

A prepare job may only run psql scripts against the engine's own database, so the arguments
are checked here before a job exists: no connection flags, no positional arguments, inputs
with absolute paths, `ON_ERROR_STOP` never disabled. The same scan yields the normalized
argument string (which names states and is shown to users, so it is byte-compatible with the
reference engine) and the steps: one state per `-c`/`-f` input.

Decision (§0.1): every step is *executed* with `-X -v ON_ERROR_STOP=1`. The reference engine
appends the defaults after the inputs, so its steps run without them; here each step's
`exec_args` are `<shared prefix> [-X] [-v ON_ERROR_STOP=1] <input>`, where a default is only
added when the shared prefix does not already set it. Empty strings and a trailing `--` are
dropped from `exec_args` (psql would read `""` as a database name, and arguments after `--`
as positionals); both stay in the normalized args. Hashes never depend on `exec_args`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlrs_engine.errors import ApiError, invalid_argument
from sqlrs_engine.prepare.textutil import go_dir, go_trim_space, is_abs

InputKind = Literal["command", "file", "stdin"]

NO_PSQLRC_DEFAULT: tuple[str, ...] = ("-X",)
ON_ERROR_STOP_DEFAULT: tuple[str, ...] = ("-v", "ON_ERROR_STOP=1")

_CONNECTION_FLAGS = frozenset(
    {"-h", "-p", "-U", "-d", "--host", "--port", "--username", "--dbname", "--database"}
)
_CONNECTION_PREFIXES = ("--host=", "--port=", "--username=", "--dbname=", "--database=")
_SHORT_CONNECTION_PREFIXES = ("-h", "-p", "-U", "-d")


@dataclass(frozen=True)
class PsqlInput:
    """One script input: a `-c` command, an `-f` file (absolute path) or `-f -` stdin text."""

    kind: InputKind
    value: str

    @property
    def exec_args(self) -> list[str]:
        """The canonical short form passed to psql."""
        if self.kind == "command":
            return ["-c", self.value]
        if self.kind == "stdin":
            return ["-f", "-"]
        return ["-f", self.value]

    @property
    def args_summary(self) -> str:
        """`-c <sql>`, `-f <path>` or `-f -` (the `/v1/tasks` `args_summary`, §4.9)."""
        return " ".join(self.exec_args)


@dataclass(frozen=True)
class PsqlStep:
    """One `state_execute` task's psql invocation (without connection arguments)."""

    index: int
    exec_args: list[str]
    input: PsqlInput | None

    @property
    def task_id(self) -> str:
        return f"execute-{self.index}"

    @property
    def kind(self) -> InputKind | None:
        return self.input.kind if self.input else None

    @property
    def value(self) -> str | None:
        return self.input.value if self.input else None

    @property
    def uses_stdin(self) -> bool:
        return self.input is not None and self.input.kind == "stdin"

    @property
    def args_summary(self) -> str:
        """Empty for the single no-input step."""
        return self.input.args_summary if self.input else ""


@dataclass(frozen=True)
class PsqlPlanInput:
    """Everything planning and execution need from validated psql arguments."""

    args: list[str]
    stdin: str | None
    normalized_args: list[str]
    normalized: str
    inputs: list[PsqlInput]
    steps: list[PsqlStep]
    work_dir: Path | None
    """First `-f` file's directory, else the engine cwd; None only if the cwd is unknown."""
    file_paths: list[str]
    """The `-f` paths (not stdin, not include targets), as given, in order."""

    @property
    def uses_stdin(self) -> bool:
        return any(item.kind == "stdin" for item in self.inputs)

    @property
    def work_dir_text(self) -> str:
        """The work dir as the digest uses it (`""` when unknown)."""
        return str(self.work_dir) if self.work_dir is not None else ""


@dataclass(frozen=True)
class _Option:
    args: tuple[str, ...]
    no_psqlrc: bool = False
    on_error_stop: bool = False


_Item = _Option | PsqlInput


def refuse_nul_characters(args: Sequence[str], label: str = "") -> None:
    """400 for an argument with a NUL character: no process argument can hold one, so the
    program would never start (details: `label: arg`, or the arg alone)."""
    for arg in args:
        if "\x00" in arg:
            details = f"{label}: {arg}" if label else arg
            raise invalid_argument("arguments must not contain NUL characters", details)


def is_connection_flag(arg: str) -> bool:
    """A psql connection flag of §2.2 (also the run conflict rule of §5)."""
    if arg in _CONNECTION_FLAGS or arg.startswith(_CONNECTION_PREFIXES):
        return True
    return len(arg) > 2 and arg.startswith(_SHORT_CONNECTION_PREFIXES)


def _check_on_error_stop(value: str) -> bool:
    """True when `value` assigns ON_ERROR_STOP (which must then be 1)."""
    name, sep, val = value.partition("=")
    if not sep:
        if go_trim_space(value).casefold() == "on_error_stop":
            raise invalid_argument("ON_ERROR_STOP must be set to 1")
        return False
    if go_trim_space(name).casefold() != "on_error_stop":
        return False
    if go_trim_space(val) != "1":
        raise invalid_argument("ON_ERROR_STOP must be set to 1", value)
    return True


def _scan(args: Sequence[str], stdin: str | None, check: bool) -> list[_Item]:
    """Classify `args` left to right (§2.2 order); with `check`, apply every rule."""
    items: list[_Item] = []
    count = len(args)

    def file_input(path: str) -> PsqlInput:
        if path == "-":
            if stdin is None and check:
                raise invalid_argument("stdin is required when using -f -")
            return PsqlInput("stdin", stdin or "")
        if check:
            if path == "":
                raise invalid_argument("file path is empty")
            if not is_abs(path):
                raise invalid_argument("file path must be absolute", path)
            try:
                os.stat(path)
            except (OSError, ValueError):
                raise invalid_argument("cannot read file", path) from None
        return PsqlInput("file", path)

    i = 0
    while i < count:
        arg = args[i]
        i += 1
        if arg == "":
            continue
        if arg == "--":
            if i < count:
                raise invalid_argument("positional arguments are not allowed")
            continue
        if is_connection_flag(arg):
            raise invalid_argument("connection flags are not allowed", arg)
        if arg in ("-X", "--no-psqlrc"):
            items.append(_Option((arg,), no_psqlrc=True))
            continue
        # variable flags
        if arg in ("-v", "--set", "--variable"):
            if i >= count:
                raise invalid_argument("missing value for variable flag", arg)
            value = args[i]
            i += 1
            items.append(_Option((arg, value), on_error_stop=_check_on_error_stop(value)))
            continue
        if len(arg) > 2 and arg.startswith("-v"):
            items.append(_Option((arg,), on_error_stop=_check_on_error_stop(arg[2:])))
            continue
        if arg.startswith(("--set=", "--variable=")):
            value = arg.partition("=")[2]
            items.append(_Option((arg,), on_error_stop=_check_on_error_stop(value)))
            continue
        # file flags
        if arg in ("-f", "--file"):
            if i >= count:
                raise invalid_argument("missing value for file flag", arg)
            items.append(file_input(args[i]))
            i += 1
            continue
        if arg.startswith("--file="):
            path = arg[len("--file=") :]
            if path == "":
                raise invalid_argument("missing value for file flag", arg)
            items.append(file_input(path))
            continue
        if len(arg) > 2 and arg.startswith("-f"):
            items.append(file_input(arg[2:]))
            continue
        # command flags
        if arg in ("-c", "--command"):
            if i >= count:
                raise invalid_argument("missing value for command flag", arg)
            items.append(PsqlInput("command", args[i]))
            i += 1
            continue
        if arg.startswith("--command="):
            items.append(PsqlInput("command", arg[len("--command=") :]))
            continue
        if len(arg) > 2 and arg.startswith("-c"):
            items.append(PsqlInput("command", arg[2:]))
            continue
        if arg.startswith("-"):
            items.append(_Option((arg,)))
            continue
        raise invalid_argument("positional database arguments are not allowed", arg)
    return items


def _defaults_for(items: Sequence[_Item]) -> list[_Option]:
    options = [item for item in items if isinstance(item, _Option)]
    missing: list[_Option] = []
    if not any(o.no_psqlrc for o in options):
        missing.append(_Option(NO_PSQLRC_DEFAULT, no_psqlrc=True))
    if not any(o.on_error_stop for o in options):
        missing.append(_Option(ON_ERROR_STOP_DEFAULT, on_error_stop=True))
    return missing


def _steps(items: Sequence[_Item]) -> list[PsqlStep]:
    """One step per input; each runs its shared prefix plus any missing default (§0.1)."""
    steps: list[PsqlStep] = []
    prefix: list[_Option] = []
    for item in items:
        if isinstance(item, _Option):
            prefix.append(item)
            continue
        options = prefix + _defaults_for(prefix)
        exec_args = [a for o in options for a in o.args] + item.exec_args
        steps.append(PsqlStep(len(steps), exec_args, item))
    if not steps:
        options = prefix + _defaults_for(prefix)
        steps.append(PsqlStep(0, [a for o in options for a in o.args], None))
    return steps


def normalize_psql_args(args: Sequence[str], items: Sequence[_Item] | None = None) -> list[str]:
    """`args` (order and empty strings kept) + `-X` / `-v ON_ERROR_STOP=1` when absent (§2.3)."""
    scanned = _scan(args, None, check=False) if items is None else items
    normalized = list(args)
    for option in _defaults_for(scanned):
        normalized.extend(option.args)
    return normalized


def parse_psql_args(
    args: Sequence[str], stdin: str | None, cwd: str | os.PathLike[str] | None = None
) -> PsqlPlanInput:
    """Validate psql arguments and derive normalized args, inputs, steps and work dir.

    Raises a 400 `invalid_argument` `ApiError` with the exact §2.2 message and details.
    `cwd` is the work dir fallback when there is no `-f` file (default: the process cwd).
    """
    refuse_nul_characters(args)
    items = _scan(args, stdin, check=True)
    inputs = [item for item in items if isinstance(item, PsqlInput)]
    uses_stdin = any(item.kind == "stdin" for item in inputs)
    if stdin is not None and not uses_stdin:
        raise invalid_argument("stdin is only valid with -f -")
    file_paths = [item.value for item in inputs if item.kind == "file"]

    work_dir = Path(go_dir(file_paths[0])) if file_paths else _fallback_cwd(cwd)

    normalized = normalize_psql_args(args, items)
    return PsqlPlanInput(
        args=list(args),
        stdin=stdin,
        normalized_args=normalized,
        normalized=" ".join(normalized),
        inputs=inputs,
        steps=_steps(items),
        work_dir=work_dir,
        file_paths=file_paths,
    )


def _fallback_cwd(cwd: str | os.PathLike[str] | None) -> Path | None:
    if cwd is not None:
        text = os.fspath(cwd)
        return Path(text) if go_trim_space(text) else None
    try:
        return Path(os.getcwd())
    except OSError:
        return None


def split_psql_steps(args: Sequence[str]) -> list[PsqlStep]:
    """Steps of already-validated (original or normalized) args, without touching files.

    For listings that rebuild `args_summary` from a stored request long after its files may
    have changed; stdin steps carry an empty value. Returns [] for args that do not pass the
    syntactic rules (they cannot come from a stored, validated request).
    """
    try:
        return _steps(_scan(args, None, check=False))
    except ApiError:
        return []


def psql_args_summaries(args: Sequence[str]) -> list[str]:
    """`args_summary` of each step, in step order (`""` for a no-input step)."""
    return [step.args_summary for step in split_psql_steps(args)]
