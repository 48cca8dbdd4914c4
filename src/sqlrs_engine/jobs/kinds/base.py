"""The prepare-kind seam: what a kind (psql, lb, ...) supplies to the state builder.

Everything that every kind needs — the cache check and dirty-state invalidation, the build
lock, a server on the right source state, stop/snapshot/restart, the state row, handing the
server to the instance — lives once in `jobs/builder.py`. A kind only knows its request
fields and its tool:

* `normalize(request, cwd)`: validate the kind's request fields at submit time (a 400) and
  return `prepare_args_normalized`;
* `plan(request, context)`: resolve the image, split the work into steps, hash them into the
  chained plan tasks (SPEC §2.8) and the job signature; the returned `KindPlan` carries a
  `StepRunner` bound to this job;
* `StepRunner.inputs(task)`: just before a step runs, re-check its inputs (under the locks held
  for the whole step) and yield the step's task hash as it is *now*;
* `StepRunner.run(task, handle)`: execute the step against the running server;
* `StepRunner.close()`: release what it keeps between steps, when the job ends.

The one table of kinds is `jobs/kinds/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.plan import PlanTask, final_state_id
from sqlrs_engine.runtime.base import LogSink, Runtime, ServerHandle

PlanningServer = Callable[[str], ServerHandle]
"""Given the effective image id, a running server on that image's base (for planners that
must ask a live database, like Liquibase's `updateSQL`); the caller owns and releases it."""


@dataclass(frozen=True)
class PlanContext:
    """What planning may use: it reads inputs and asks questions, but changes nothing."""

    runtime: Runtime
    engine_version: str
    state_exists: Callable[[str], bool]
    cwd: Path
    """The engine's working directory (relative paths in requests are resolved against it)."""
    log: LogSink
    cancel: CancelToken
    planning_server: PlanningServer
    store_root: Path
    """The state store root (kinds may keep small caches under it)."""
    config_value: Callable[[str], object] = lambda _path: None
    """Effective config value at a path (e.g. `liquibase.exec`), None when unset."""
    job_dir: Path | None = None
    """The job's own directory (`jobs/<job>/`), for per-step scratch files; None when
    planning only (explain)."""


class StepRunner(Protocol):
    """Executes the steps of one planned job (bound to its request, log and cancel token)."""

    def inputs(self, task: PlanTask) -> AbstractContextManager[str]:
        """Hold the step's inputs steady for the whole step; yields its current task hash.

        A kind that can re-hash a changed input yields the new hash (the builder re-chains
        the plan); one that cannot raises `JobFailure`, so no state is stored under a name
        that no longer matches its content.
        """
        ...

    def run(self, task: PlanTask, handle: ServerHandle) -> None:
        """Run the step on `handle`'s server; raise `JobFailure` when it fails."""
        ...

    def close(self) -> None:
        """Release what the runner keeps between steps (e.g. a warm JVM); idempotent."""
        ...


@dataclass(frozen=True)
class KindPlan:
    """A planned job: what the builder persists and executes."""

    effective_image: str
    tasks: list[PlanTask]
    signature: str
    normalized: str
    """`prepare_args_normalized` of the job (stored on every state it builds)."""
    steps: StepRunner

    @property
    def final_state_id(self) -> str:
        return final_state_id(self.tasks)


class PrepareKind(Protocol):
    """One prepare kind; instances live in the kind table (`jobs/kinds/__init__.py`)."""

    @property
    def name(self) -> str: ...

    def normalize(self, request: PrepareRequest, cwd: Path) -> str:
        """Validate the kind's fields (400 `ApiError`); the job's `prepare_args_normalized`."""
        ...

    def plan(self, request: PrepareRequest, context: PlanContext) -> KindPlan:
        """Plan the job (`JobFailure` on bad inputs or tool failures)."""
        ...
