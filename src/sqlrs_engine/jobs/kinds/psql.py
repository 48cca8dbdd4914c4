"""`prepare_kind: "psql"` (SPEC §2.2 to §2.6, §2.11): one state per `-c` / `-f` input."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.jobs.kinds.base import KindPlan, PlanContext
from sqlrs_engine.jobs.planning import plan_psql
from sqlrs_engine.jobs.staging import InputEchoFilter, StagedStep, stage_step
from sqlrs_engine.prepare.digest import CONTENT_HASH_ERROR, ContentError, ContentLocks, step_digest
from sqlrs_engine.prepare.hashing import psql_task_hash
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import PlanTask, step_index
from sqlrs_engine.prepare.psql_args import PsqlPlanInput, parse_psql_args
from sqlrs_engine.process import LineBuffer
from sqlrs_engine.runtime.base import LogSink, Runtime, ServerHandle

OUTPUT_TAIL = 16 * 1024
"""Bytes of psql output kept for a failed step's error details."""


class PsqlSteps:
    """Runs one psql job's steps: `psql -X -v ON_ERROR_STOP=1 <step args> <dsn>` each.

    Each step runs from a private staging copy of exactly what its digest read
    (jobs/staging.py), as the runtime's unprivileged user (SPEC §0.9).
    """

    def __init__(
        self,
        request: PrepareRequest,
        args: PsqlPlanInput,
        runtime: Runtime,
        engine_version: str,
        log: LogSink,
        cancel: CancelToken,
        stage_dir: Path,
    ) -> None:
        self._request = request
        self._args = args
        self._runtime = runtime
        self._engine_version = engine_version
        self._log = log
        self._cancel = cancel
        self._stage_dir = stage_dir
        self._locks: ContentLocks | None = None

    @contextmanager
    def inputs(self, task: PlanTask) -> Iterator[str]:
        """Re-digest the step's files under locks held for the whole step (§2.9.2)."""
        with ContentLocks() as locks:
            digest = step_digest(self._args, step_index(task), locks)
            self._locks = locks
            try:
                yield psql_task_hash(digest.hash, self._engine_version)
            finally:
                self._locks = None

    def close(self) -> None:
        """Nothing is kept between psql steps."""
        shutil.rmtree(self._stage_dir, ignore_errors=True)

    def run(self, task: PlanTask, handle: ServerHandle) -> None:
        if self._locks is None:
            raise RuntimeError("PsqlSteps.run outside of inputs(): the step's files are unlocked")
        step = self._args.steps[step_index(task)]
        # The client's group may read the copy (psql runs unprivileged, SPEC §0.9).
        gid = self._runtime.input_gid(handle)
        try:
            staged = stage_step(
                self._stage_dir,
                step,
                self._request.stdin,
                self._args.work_dir_text,
                self._locks,
                gid,
            )
        except ContentError as error:
            raise JobFailure("invalid_argument", CONTENT_HASH_ERROR, str(error)) from None
        except OSError as error:
            raise JobFailure("internal_error", "cannot stage psql inputs", str(error)) from None
        try:
            self._run_staged(staged, handle)
        finally:
            shutil.rmtree(self._stage_dir, ignore_errors=True)

    def _run_staged(self, staged: StagedStep, handle: ServerHandle) -> None:
        self._log("psql: start")
        tail: list[str] = []
        tail_size = 0
        echo = InputEchoFilter()

        def on_line(stream: str, line: str) -> None:
            nonlocal tail_size
            line = staged.unstage(line)
            if stream == "stderr" and echo.hides(line):
                return
            self._log(f"psql: {line}")
            tail.append(line)
            tail_size += len(line) + 1
            while tail_size > OUTPUT_TAIL and len(tail) > 1:
                tail_size -= len(tail.pop(0)) + 1

        lines = LineBuffer(on_line)
        exit_code = self._runtime.run_client(
            handle,
            "psql",
            [*staged.args, handle.bare_dsn],
            stdin=staged.stdin,
            cwd=staged.cwd,
            on_output=lines.feed,
            cancel=self._cancel,
            inputs=staged.root,
        )
        lines.flush()
        if exit_code != 0:
            output = "\n".join(tail).strip() or f"psql exited with code {exit_code}"
            raise JobFailure("internal_error", "psql execution failed", output)


class PsqlKind:
    """The psql kind: scripts and commands run by the server's own `psql`."""

    name = "psql"

    def normalize(self, request: PrepareRequest, cwd: Path) -> str:
        return parse_psql_args(request.psql_args, request.stdin, cwd).normalized

    def plan(self, request: PrepareRequest, context: PlanContext) -> KindPlan:
        planned = plan_psql(
            request,
            runtime=context.runtime,
            engine_version=context.engine_version,
            state_exists=context.state_exists,
            cwd=context.cwd,
            log=context.log,
            cancel=context.cancel,
        )
        steps = PsqlSteps(
            request,
            planned.args,
            context.runtime,
            context.engine_version,
            context.log,
            context.cancel,
            (context.job_dir or context.store_root / "jobs" / "unplanned") / "stage",
        )
        return KindPlan(
            effective_image=planned.effective_image,
            tasks=planned.tasks,
            signature=planned.signature,
            normalized=planned.args.normalized,
            steps=steps,
        )
