"""The JSON bodies of prepare requests (SPEC §2.1, §3), built from Python arguments.

Paths are resolved here, against the caller's working directory, because the engine would
resolve relative ones against its own (an auto-started engine's is its state directory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlrs_engine.client.psql_files import absolute_file_args


def psql_request(
    args: Sequence[str], image: str, stdin: str | None = None, cwd: str | None = None
) -> dict[str, Any]:
    """A `prepare_kind: psql` body; relative `-f` operands made absolute against `cwd`."""
    body: dict[str, Any] = {
        "prepare_kind": "psql",
        "image_id": image,
        "psql_args": absolute_file_args(args, cwd),
    }
    if stdin is not None:
        body["stdin"] = stdin
    return body


def lb_request(
    args: Sequence[str],
    image: str,
    *,
    liquibase_exec: str | None = None,
    exec_mode: str | None = None,
    env: Mapping[str, str] | None = None,
    work_dir: str | Path | None = None,
    cwd: str | None = None,
) -> dict[str, Any]:
    """A `prepare_kind: lb` body; `work_dir` (default: `cwd`) is sent as an absolute path:
    Liquibase's relative paths (changelog, search path) are taken relative to it."""
    base = cwd or os.getcwd()
    body: dict[str, Any] = {
        "prepare_kind": "lb",
        "image_id": image,
        "liquibase_args": list(args),
        "work_dir": os.path.normpath(os.path.join(base, str(work_dir or base))),
    }
    if liquibase_exec:
        body["liquibase_exec"] = liquibase_exec
    if exec_mode:
        body["liquibase_exec_mode"] = exec_mode
    if env:
        body["liquibase_env"] = dict(env)
    return body
