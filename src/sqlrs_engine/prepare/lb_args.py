"""Liquibase arguments of `prepare_kind: "lb"` (SPEC §3.1, §3.2, §3.3, §3.5): pure rules.

The engine owns the connection (it builds the JDBC URL of the server it started) and the
runtime (its Liquibase and bundled driver), so those flags are refused. Only `update*`
commands are accepted: a prepare applies changesets, it never rolls back or drops. Path flags
are made absolute against the engine's working directory and checked to exist, so a job never
depends on where it happens to run; they are always moved before the command, where
Liquibase reads global options. `--contexts`, `--labels` and every other flag pass through
unchanged and are part of `prepare_args_normalized`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlrs_engine.errors import invalid_argument
from sqlrs_engine.prepare.psql_args import refuse_nul_characters
from sqlrs_engine.prepare.textutil import go_clean, go_trim_space, is_abs

CONNECTION_FLAGS = ("--url", "--username", "--password")
RUNTIME_FLAGS = ("--classpath", "--driver")
CHANGELOG_FLAG = "--changelog-file"
DEFAULTS_FLAG = "--defaults-file"
SEARCH_PATH_FLAG = "--searchPath"
PATH_FLAGS = (CHANGELOG_FLAG, DEFAULTS_FLAG, SEARCH_PATH_FLAG, "--search-path")
VALUE_FLAGS = frozenset(PATH_FLAGS + CONNECTION_FLAGS + RUNTIME_FLAGS)
"""Flags whose separate next argument is their value (the command replacement rule, §3.3)."""

EXEC_MODES = ("auto", "windows-bat", "native")


@dataclass(frozen=True)
class LbArgs:
    """A validated lb request: normalized args and the local paths Liquibase reads."""

    normalized_args: list[str]
    changelog: str | None = None
    defaults_file: str | None = None
    search_paths: list[str] = field(default_factory=list)
    """Search path items after normalization (local ones absolute)."""
    work_dir: str | None = None

    @property
    def normalized(self) -> str:
        return " ".join(self.normalized_args)


def _flag_of(arg: str) -> tuple[str, str | None]:
    """`--x=v` → (`--x`, `v`); `--x` → (`--x`, None)."""
    name, sep, value = arg.partition("=")
    return (name, value) if sep else (arg, None)


def is_remote(path: str) -> bool:
    """A path Liquibase resolves itself (a URL or the classpath): kept as it is."""
    return "://" in path or path.startswith("classpath:")


def _local_path(value: str, cwd: Path, missing: str) -> str:
    if is_remote(value):
        return value
    path = value if is_abs(value) else os.path.join(str(cwd), value)
    path = go_clean(path)
    if not os.path.exists(path):
        raise invalid_argument(missing, path)
    return path


def _search_path(value: str, cwd: Path) -> list[str]:
    items = [go_trim_space(item) for item in value.split(",")]
    if any(item == "" for item in items):
        raise invalid_argument("searchPath is empty", value)
    return [_local_path(item, cwd, "searchPath path does not exist") for item in items]


def check_exec_mode(mode: str, liquibase_exec: str) -> None:
    """Windows modes (`windows-bat`, or `auto` with a `.bat`/`.cmd` exec) are out of scope."""
    normalized = go_trim_space(mode).lower() or "auto"
    if normalized not in EXEC_MODES:
        normalized = "auto"  # unknown values mean auto (§3.2)
    windows = normalized == "windows-bat" or (
        normalized == "auto" and liquibase_exec.lower().endswith((".bat", ".cmd"))
    )
    if windows:
        raise invalid_argument(
            "unsupported liquibase_exec_mode",
            "Windows batch mode is not supported by this engine (it runs Liquibase on a "
            "Linux host); use a native liquibase executable",
        )


def sanitize_exec(liquibase_exec: str) -> str:
    """`liquibase_exec` without surrounding quotes and with `\\"` unescaped (§3.6)."""
    value = go_trim_space(liquibase_exec).replace('\\"', '"')
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return go_trim_space(value)


def parse_lb_args(args: Sequence[str], cwd: Path, work_dir: str = "") -> LbArgs:
    """Validate and normalize `liquibase_args` (400 `ApiError` on any rule of §3.1/§3.2)."""
    refuse_nul_characters(args, "liquibase_args")
    pre: list[str] = []
    post: list[str] = []
    paths: list[str] = []
    changelog: str | None = None
    defaults_file: str | None = None
    search_paths: list[str] = []
    command: str | None = None
    index = 0
    while index < len(args):
        raw = args[index]
        arg = go_trim_space(raw)
        index += 1
        if arg in ("", "--"):
            continue
        name, value = _flag_of(arg)
        if name in CONNECTION_FLAGS:
            raise invalid_argument("connection flags are not allowed", arg)
        if name in RUNTIME_FLAGS:
            raise invalid_argument("runtime flags are not allowed", arg)
        if name in PATH_FLAGS:
            if value is None:
                if index >= len(args):
                    raise invalid_argument("missing value for flag", name)
                value = args[index]
                index += 1
            value = go_trim_space(value)
            if value == "":
                raise invalid_argument("missing value for flag", name)
            if name in ("--searchPath", "--search-path"):
                items = _search_path(value, cwd)
                search_paths.extend(items)
                paths += [SEARCH_PATH_FLAG, ",".join(items)]
            elif name == CHANGELOG_FLAG:
                changelog = _local_path(value, cwd, "path does not exist")
                paths += [name, changelog]
            else:
                defaults_file = _local_path(value, cwd, "path does not exist")
                paths += [name, defaults_file]
            continue
        if arg.startswith("-"):
            (pre if command is None else post).append(raw)
            continue
        if command is None:
            command = arg
        post.append(raw)
    if command is None:
        raise invalid_argument("lb command is required")
    if not command.lower().startswith("update"):
        raise invalid_argument("unsupported lb command", command)
    work = go_trim_space(work_dir)
    if work:
        work = _local_path(work, cwd, "work_dir does not exist")
    return LbArgs(
        normalized_args=paths + pre + post,
        changelog=changelog,
        defaults_file=defaults_file,
        search_paths=search_paths,
        work_dir=work or None,
    )


def replace_command(args: Sequence[str], command: str) -> list[str]:
    """`args` with its command token replaced by `command` (appended when there is none).

    The command is the first positional token that is not the separate value of a
    value-taking flag (§3.3).
    """
    out = list(args)
    skip = False
    for index, arg in enumerate(out):
        if skip:
            skip = False
            continue
        token = go_trim_space(arg)
        if token.startswith("-"):
            skip = token in VALUE_FLAGS
            continue
        out[index] = command
        return out
    return [*out, command]


def relative_to_work_dir(args: Sequence[str], work_dir: str | None) -> list[str]:
    """Changelog / defaults paths under `work_dir` made relative to it (§3.3).

    Liquibase records a changeset's path as the changelog was named, so a work dir keeps the
    recorded paths (and the plan) independent of where the project is checked out.
    """
    out = list(args)
    if not work_dir:
        return out
    prefix = work_dir.rstrip("/") + "/"
    for index in range(len(out) - 1):
        if out[index] in (CHANGELOG_FLAG, DEFAULTS_FLAG) and out[index + 1].startswith(prefix):
            out[index + 1] = out[index + 1][len(prefix) :]
    return out


def planning_args(lb: LbArgs) -> list[str]:
    """The `updateSQL` arguments of planning, without the connection (§3.3)."""
    return replace_command(relative_to_work_dir(lb.normalized_args, lb.work_dir), "updateSQL")


def step_args(lb: LbArgs) -> list[str]:
    """The arguments that apply exactly one pending changeset (§3.5)."""
    args = replace_command(relative_to_work_dir(lb.normalized_args, lb.work_dir), "update-count")
    return [*args, "--count", "1"]


def connection_args(host: str, port: int, user: str = "sqlrs") -> list[str]:
    """The engine's connection flags, put before everything else."""
    return [f"--url=jdbc:postgresql://{host}:{port}/postgres", f"--username={user}"]
