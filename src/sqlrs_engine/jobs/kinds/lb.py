"""`prepare_kind: "lb"` (SPEC §3): Liquibase changelogs, one state per changeset.

Planning asks Liquibase itself which changesets are pending: `updateSQL` against a server
started from the input state prints every pending changeset with its checksum, and each
changeset becomes one chained task whose hash is that checksum on its parent state (§3.4).
Each task then applies exactly one changeset (`update-count --count 1`) on the server that
holds the previous changeset's state, and the builder snapshots the result.

Beyond the reference engine, a plan is kept under `<store>/plans/lb/<fingerprint>.json`,
where the fingerprint covers the input state, the arguments, the Liquibase executable, its
environment and the content of every file Liquibase would read (prepare/lb_inputs.py): when
nothing of that changed, planning reuses the stored changesets without a server or a JVM.

Liquibase runs from a private staging copy of exactly the files planning read and hashed
(jobs/kinds/lb_stage.py), as the unprivileged client user when the engine is root (SPEC §0.9),
so a changelog edited while a job runs does not change what it applies. A state is never
wrongly named anyway: after each step, the rows Liquibase recorded in `databasechangelog`
must be exactly the planned changesets so far, the last one with the planned id, author, path
and checksum (a job resumed after a restart re-copies the files; a `runAlways` changeset runs
again); otherwise the job fails before the builder snapshots anything.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import ujson

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import ApiError, JobFailure
from sqlrs_engine.jobs.kinds.base import KindPlan, PlanContext
from sqlrs_engine.jobs.kinds.lb_jvm import WarmLiquibase, direct_command
from sqlrs_engine.jobs.kinds.lb_stage import STAGE_DIR_NAME, LbStage, StageError, staged_args
from sqlrs_engine.prepare.digest import ContentError, ContentLocks
from sqlrs_engine.prepare.hashing import lb_job_signature
from sqlrs_engine.prepare.images import has_digest
from sqlrs_engine.prepare.job_request import PrepareRequest
from sqlrs_engine.prepare.lb_args import (
    LbArgs,
    check_exec_mode,
    connection_args,
    parse_lb_args,
    planning_args,
    sanitize_exec,
    step_args,
)
from sqlrs_engine.prepare.lb_inputs import (
    LbInputs,
    Uncacheable,
    lockable_files,
    read_inputs,
    search_roots,
)
from sqlrs_engine.prepare.lb_output import parse_update_sql
from sqlrs_engine.prepare.plan import (
    LbChangeset,
    PlanTask,
    build_lb_plan,
    execute_tasks,
    step_index,
)
from sqlrs_engine.prepare.psql_args import refuse_nul_characters
from sqlrs_engine.process import LineBuffer, ProcessError, RunAs, child_env, exit_status, run
from sqlrs_engine.runtime.base import LogSink, Runtime, ServerHandle
from sqlrs_engine.runtime.clients import CLIENT_TAG_ENV, client_user
from sqlrs_engine.runtime.users import ServerUserError, grant_traversal

EXEC_CONFIG_KEY = "liquibase.exec"
WARM_JVM_CONFIG_KEY = "liquibase.warmJvm"
HOST_USER_CONFIG_KEY = "runtime.host.user"
OUTPUT_TAIL = 16 * 1024
"""Bytes of Liquibase output kept for a failed run's error details."""
EXECUTION_FAILED = "liquibase execution failed"
UNPLANNED_CHANGESET = "liquibase did not apply the planned changeset"
NOT_INSTALLED = (
    "liquibase is not installed: put a liquibase executable on the engine's PATH, set config "
    "liquibase.exec to its absolute path, or give liquibase_exec in the request "
    "(scripts/bootstrap installs Liquibase 4.28 from npm; it needs Java 17)"
)
PLAN_CACHE_VERSION = "lb-plan-v1"
FAST_START_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
"""JVM options for Liquibase when neither the engine nor the request sets JAVA_OPTS.

Every changeset is one short JVM run dominated by start-up and class loading; the C1-only
JIT and the serial collector cut Liquibase's start from about 2.1 s to 1.4 s here
(docs/performance.md). A request's `liquibase_env` JAVA_OPTS (even empty) replaces them."""
_ENVIRONMENT_PREFIXES = ("LIQUIBASE_", "JAVA_", "JDK_")
_CHANGELOG_QUERY = (
    "SELECT (SELECT count(*) FROM databasechangelog), id, author, filename, md5sum "
    "FROM databasechangelog ORDER BY orderexecuted DESC LIMIT 1"
)


def liquibase_cwd(lb: LbArgs, cwd: Path) -> str:
    """Where Liquibase runs: `work_dir`, else the changelog's directory, else the engine's.

    Liquibase 4 finds changelogs through its search path, which is its working directory:
    an absolute changelog outside it is "not found". Running next to the changelog (as the
    reference engine's Windows mode does, §3.6) keeps recorded changeset paths short and
    independent of where the project is checked out.
    """
    if lb.work_dir:
        return lb.work_dir
    if lb.changelog and os.path.isabs(lb.changelog):
        return os.path.dirname(lb.changelog)
    return str(cwd)


def _with_work_dir(lb: LbArgs, cwd: Path) -> LbArgs:
    return LbArgs(
        lb.normalized_args, lb.changelog, lb.defaults_file, lb.search_paths, liquibase_cwd(lb, cwd)
    )


def _password_of(dsn: str) -> str | None:
    password = urlsplit(dsn).password
    return unquote(password) if password else None


class Liquibase:
    """Runs Liquibase commands against a server, streaming their lines as log events.

    With `warm_jvm_dir` set, the commands of the job run in one warm JVM (jobs/kinds/lb_jvm.py)
    when the installation allows it; otherwise, or when it is not set, each command is its
    own process (the JVM started directly for a standard distribution, else the executable).
    Either way the log shows the same command line and output.

    SPEC §0.9: every Liquibase process runs as `user` (None: as the engine, which is then not
    root), dies with the engine (parent-death signal; its process group is killed on cancel
    and when the job ends) and carries the store's client tag, so an engine starting after a
    crash kills one that escaped. With a `stage`, Liquibase reads only that private copy of
    the files the plan was hashed from (jobs/kinds/lb_stage.py); its output names the user's
    paths again.
    """

    def __init__(
        self,
        executable: str,
        lb: LbArgs,
        extra_env: Mapping[str, str],
        log: LogSink,
        cancel: CancelToken,
        warm_jvm_dir: Path | None = None,
        *,
        user: RunAs | None = None,
        client_tag: str | None = None,
    ) -> None:
        self.executable = executable
        self.lb = lb
        self.extra_env = dict(extra_env)
        self._log = log
        self._cancel = cancel
        self._warm_jvm_dir = warm_jvm_dir
        self._warm: WarmLiquibase | None = None
        self._user = user
        self._client_tag = client_tag
        self._stage: LbStage | None = None
        self._search_roots: list[str] = []
        self._unfollowed: list[str] = []

    def use_stage(self, stage: LbStage, search_roots: list[str], unfollowed: list[str]) -> None:
        """Run from `stage` from now on (before the first command); `unfollowed` says what
        the copy may lack (named in a failure's details)."""
        self._stage = stage
        self._search_roots = search_roots
        self._unfollowed = unfollowed

    @property
    def stage(self) -> LbStage | None:
        return self._stage

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("LIQUIBASE_COMMAND_PASSWORD", None)
        env.pop(CLIENT_TAG_ENV, None)
        if "JAVA_OPTS" not in env and "JAVA_OPTS" not in self.extra_env:
            env["JAVA_OPTS"] = FAST_START_JAVA_OPTS
        if self.extra_env:
            env.update(self.extra_env)
        if self._client_tag is not None:
            env[CLIENT_TAG_ENV] = self._client_tag
        return child_env(env, self._user, inherit=False)

    def _cwd(self) -> str | None:
        work_dir = self.lb.work_dir
        if self._stage is None or work_dir is None:
            return work_dir
        return self._stage.ensure_dir(work_dir)

    def _unstage(self, text: str) -> str:
        return self._stage.unstage(text) if self._stage is not None else text

    def _warm_jvm(self) -> WarmLiquibase | None:
        if self._warm is None and self._warm_jvm_dir is not None:
            self._warm = WarmLiquibase.start(
                self.executable,
                tools_dir=self._warm_jvm_dir,
                cwd=self._cwd(),
                env=self._environment(),
                cancel=self._cancel,
                user=self._user,
            )
            if self._warm is None:
                self._warm_jvm_dir = None  # not available here: one process per command
        return self._warm

    def run(self, args: list[str], handle: ServerHandle, cancel_message: str) -> list[str]:
        """Run; the output lines on success, `JobFailure` with the output's tail otherwise."""
        connection = connection_args(handle.host, handle.port)
        if self._stage is not None:
            args = staged_args(args, self._stage, self._search_roots)
        password = _password_of(handle.dsn)
        warm = self._warm_jvm()
        self._log(
            f"liquibase: exec {self._unstage(shlex.join([self.executable, *connection, *args]))}"
        )
        self._log("liquibase: start")
        lines: list[str] = []

        def on_line(_stream: str, line: str) -> None:
            line = self._unstage(line)
            self._log(f"liquibase: {line}")
            lines.append(line)

        if warm is not None:
            # The password travels on the JVM's stdin: never on a command line or in a log.
            secret = [f"--password={password}"] if password else []
            code = warm.run([*connection, *secret, *args], lambda line: on_line("", line))
        else:
            env = self._environment()
            if password:
                # Through the environment: never on a command line or in a log event.
                env["LIQUIBASE_COMMAND_PASSWORD"] = password
            direct = direct_command(self.executable, env)
            command = [self.executable]
            if direct is not None:
                command = direct[0]
                env.update(direct[1])
            buffer = LineBuffer(on_line)
            try:
                result = run(
                    [*command, *connection, *args],
                    env=env,
                    inherit_env=False,
                    cwd=self._cwd(),
                    user=self._user,
                    on_output=buffer.feed,
                    cancel=self._cancel,
                    die_with_parent=True,
                )
            except ProcessError as error:
                raise JobFailure(
                    "internal_error", EXECUTION_FAILED, self._unstage(str(error))
                ) from None
            buffer.flush()
            code = exit_status(result.exit_code)
        self._cancel.raise_if_cancelled(cancel_message)
        if code != 0:
            details = _failure_details(lines, code)
            if self._unfollowed and self._stage is not None:
                details += (
                    "\n(Liquibase runs from a private copy of the files the engine could "
                    "name; these references could not be followed, so what they name is not "
                    f"in it: {'; '.join(self._unfollowed)})"
                )
            raise JobFailure("internal_error", EXECUTION_FAILED, details)
        return lines

    def close(self) -> None:
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.close()


def _failure_details(lines: list[str], code: int) -> str:
    """Liquibase's own error lines (its `ERROR:` block and the final message), else the tail."""
    errors = [line for line in lines if line.startswith(("ERROR", "Unexpected error"))]
    chosen = errors or lines
    text = "\n".join(chosen).strip()
    if len(text) > OUTPUT_TAIL:
        text = text[-OUTPUT_TAIL:]
    return text or f"liquibase exited with code {code}"


def find_executable(request: PrepareRequest, config_value: object) -> str:
    """`liquibase_exec`, else `liquibase` on PATH, else config `liquibase.exec` (§3.6)."""
    requested = sanitize_exec(request.liquibase_exec)
    candidates = [requested] if requested else []
    if not requested:
        found = shutil.which("liquibase")
        if found:
            candidates.append(found)
        if isinstance(config_value, str) and config_value.strip():
            candidates.append(config_value.strip())
    for candidate in candidates:
        path = shutil.which(candidate) if os.sep not in candidate else candidate
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    if requested:
        raise JobFailure(
            "internal_error",
            "liquibase is not installed",
            f"liquibase_exec {requested!r} is not an executable file; {NOT_INSTALLED}",
        )
    raise JobFailure("internal_error", "liquibase is not installed", NOT_INSTALLED)


def _environment(request: PrepareRequest) -> list[tuple[str, str]]:
    seen = {k: v for k, v in os.environ.items() if k.startswith(_ENVIRONMENT_PREFIXES)}
    seen.update(request.liquibase_env)
    return sorted(seen.items())


def _identity(image: str, engine_version: str, executable: str) -> list[tuple[str, str]]:
    real = os.path.realpath(executable)
    try:
        info = os.stat(real)
        stamp = f"{info.st_size}:{info.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return [
        ("schema", PLAN_CACHE_VERSION),
        ("input", image),
        ("engine_version", engine_version),
        ("executable", f"{real}:{stamp}"),
    ]


class PlanCache:
    """Stored changeset lists by inputs fingerprint, one small JSON file each."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "plans" / "lb"

    def load(self, fingerprint: str) -> list[LbChangeset] | None:
        try:
            data = ujson.loads((self.dir / f"{fingerprint}.json").read_text(encoding="utf-8"))
            return [LbChangeset(*item) for item in data["changesets"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, fingerprint: str, changesets: list[LbChangeset]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = ujson.dumps(
            {
                "changesets": [
                    [c.changeset_id, c.author, c.path, c.changeset_hash] for c in changesets
                ]
            }
        )
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(body)
            os.replace(tmp, self.dir / f"{fingerprint}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def _locked(paths: list[str | None]) -> Iterator[None]:
    """Shared non-blocking locks on the existing files among `paths` (§3.2)."""
    with ContentLocks() as locks:
        try:
            for path in lockable_files(paths):
                locks.lock(path)
        except ContentError as error:
            raise JobFailure(
                "invalid_argument", "cannot lock liquibase inputs", str(error)
            ) from None
        yield


class LbSteps:
    """Applies one planned changeset per task and checks what Liquibase recorded."""

    def __init__(
        self,
        liquibase: Liquibase,
        runtime: Runtime,
        changesets: Mapping[str, LbChangeset],
        cancel: CancelToken,
    ) -> None:
        self._liquibase = liquibase
        self._runtime = runtime
        self._changesets = dict(changesets)
        self._cancel = cancel

    def _changeset_file(self, task: PlanTask) -> str | None:
        if not task.changeset_path:
            return None
        lb = self._liquibase.lb
        if os.path.isabs(task.changeset_path):
            return task.changeset_path
        for root in [lb.work_dir or "", *lb.search_paths]:
            candidate = os.path.join(root, task.changeset_path)
            if root and os.path.isfile(candidate):
                return candidate
        return None

    @contextmanager
    def inputs(self, task: PlanTask) -> Iterator[str]:
        """Lock the changelog, defaults file and this changeset's file for the whole step.

        Stored task hashes are trusted (§3.5): re-hashing one changeset would need Liquibase.
        Instead `run` checks afterwards that Liquibase applied exactly the planned changeset
        with the planned checksum, before the builder snapshots anything.
        """
        lb = self._liquibase.lb
        with _locked([lb.changelog, lb.defaults_file, self._changeset_file(task)]):
            yield task.task_hash

    def close(self) -> None:
        _close(self._liquibase)

    def run(self, task: PlanTask, handle: ServerHandle) -> None:
        self._liquibase.run(step_args(self._liquibase.lb), handle, "task cancelled")
        self._verify(task, handle)

    def _verify(self, task: PlanTask, handle: ServerHandle) -> None:
        """The server must now hold exactly the planned changesets, the last one this task's."""
        expected = step_index(task) + 1 if task.changeset_id else 0
        chunks: list[bytes] = []
        code = self._runtime.run_client(
            handle,
            "psql",
            ["-X", "-q", "-A", "-t", "-F", "\t", "-c", _CHANGELOG_QUERY, handle.bare_dsn],
            stdin=None,
            cwd=None,
            on_output=lambda _stream, chunk: chunks.append(chunk),
            cancel=self._cancel,
        )
        output = b"".join(chunks).decode("utf-8", "replace").strip()
        if code != 0:
            if expected == 0 and "does not exist" in output:
                return
            raise JobFailure("internal_error", "cannot read databasechangelog", output)
        fields = output.split("\t") if output else ["0"]
        count = int(fields[0]) if fields[0].isdigit() else -1
        applied = fields[1:4]
        checksum = fields[4] if len(fields) > 4 else ""
        planned = [task.changeset_id, task.changeset_author, task.changeset_path]
        planned_changeset = self._changesets.get(task.task_id)
        planned_hash = planned_changeset.changeset_hash if planned_changeset else ""
        wrong_checksum = ":" in planned_hash and checksum != planned_hash
        if count != expected or (expected and (applied != planned or wrong_checksum)):
            raise JobFailure(
                "invalid_argument",
                UNPLANNED_CHANGESET,
                f"{task.task_id} left {'::'.join(applied) or 'nothing'}"
                f"{f' (checksum {checksum})' if checksum else ''} as the last of {count} "
                f"recorded changesets; the plan expected {'::'.join(planned) or 'nothing'}"
                f"{f' (checksum {planned_hash})' if planned_hash else ''} as the last of "
                f"{expected}. No state was stored for it. Either the changelog changed since "
                "the plan was made (a job resumed after a restart: run the prepare again to "
                "plan the change), or a runAlways changeset ran again (it cannot be prepared "
                "one state per changeset)",
            )


def _close(liquibase: Liquibase) -> None:
    """End the job's Liquibase: its JVM, then its staging copy."""
    liquibase.close()
    if liquibase.stage is not None:
        liquibase.stage.remove()


def _liquibase_user(context: PlanContext) -> RunAs | None:
    """Who Liquibase runs as (SPEC §0.9): None when the engine is not root."""
    configured = context.config_value(HOST_USER_CONFIG_KEY)
    try:
        return client_user(context.runtime, configured if isinstance(configured, str) else None)
    except ServerUserError as error:
        raise JobFailure("internal_error", "cannot run liquibase", str(error)) from None


def _reachable(paths: list[Path], user: RunAs | None, log: LogSink) -> None:
    """Let `user` reach `paths` (the Liquibase installation, the compiled stepper, the
    staging copy): one ACL entry `u:<user>:x` on each directory on the way that blocks it,
    as for the state store at start-up (runtime/users.py); logged."""
    if user is None:
        return
    for path in paths:
        try:
            granted = grant_traversal(path, user)
        except ServerUserError as error:
            raise JobFailure(
                "internal_error", "liquibase cannot reach its files", str(error)
            ) from None
        if granted:
            names = ", ".join(str(d) for d in granted)
            log(f"liquibase: granted {user.name} search permission (ACL) on {names}")


def _stage_inputs(
    liquibase: Liquibase,
    request: PrepareRequest,
    context: PlanContext,
    effective: str,
    user: RunAs | None,
) -> LbInputs:
    """Read Liquibase's inputs into a fresh staging copy; returns what was read.

    As root Liquibase always runs from the copy. An engine that is not root runs it from the
    copy too, unless the walk could not follow everything (a `${…}` path, say): then from the
    user's files, as Liquibase does on its own.
    """
    lb = liquibase.lb
    cwd = lb.work_dir or str(context.cwd)
    if context.job_dir is not None:
        path = context.job_dir / STAGE_DIR_NAME
    else:  # explain: no job, so a private directory of its own
        (context.store_root / "jobs").mkdir(mode=0o711, parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=".explain-lb-", dir=context.store_root / "jobs"))
    try:
        stage = LbStage(path, user.gid if user is not None else None)
    except OSError as error:
        shutil.rmtree(path, ignore_errors=True)
        raise JobFailure("internal_error", "cannot stage liquibase inputs", str(error)) from None
    try:
        inputs = read_inputs(
            lb,
            liquibase_cwd=cwd,
            environment=_environment(request),
            identity=_identity(effective, context.engine_version, liquibase.executable),
            stage=stage,
        )
    except (Uncacheable, OSError) as error:  # a file Liquibase would read cannot be read
        inputs = LbInputs(None, [str(error)])
    except StageError as error:
        stage.remove()
        raise JobFailure("internal_error", "cannot stage liquibase inputs", str(error)) from None
    except BaseException:
        stage.remove()
        raise
    if inputs.unfollowed:
        context.log(f"liquibase: plan not cacheable ({'; '.join(inputs.unfollowed)})")
    if inputs.unfollowed and user is None:
        stage.remove()
        context.log("liquibase: runs from the original files (not everything it reads is known)")
        return inputs
    liquibase.use_stage(stage, search_roots(lb, cwd), inputs.unfollowed)
    executable = Path(liquibase.executable)
    installation = [executable.parent, Path(os.path.realpath(executable)).parent]
    _reachable([stage.path, *installation, context.store_root], user, context.log)
    return inputs


class LbKind:
    """The lb kind: Liquibase on the host, against the job's server on 127.0.0.1."""

    name = "lb"

    def normalize(self, request: PrepareRequest, cwd: Path) -> str:
        check_exec_mode(request.liquibase_exec_mode, request.liquibase_exec)
        refuse_nul_characters([request.liquibase_exec, request.work_dir], "liquibase")
        refuse_nul_characters(
            [f"{k}={v}" for k, v in request.liquibase_env.items()], "liquibase_env"
        )
        return parse_lb_args(request.liquibase_args, cwd, request.work_dir).normalized

    def plan(self, request: PrepareRequest, context: PlanContext) -> KindPlan:
        try:
            self.normalize(request, context.cwd)
            lb = _with_work_dir(
                parse_lb_args(request.liquibase_args, context.cwd, request.work_dir), context.cwd
            )
        except ApiError as error:
            raise JobFailure(error.code, error.message, error.details) from None
        effective = request.image_id
        if has_digest(request.image_id):
            context.runtime.check_image(request.image_id)  # fail at planning, like psql
        else:
            effective = context.runtime.resolve_image(request.image_id, context.log, context.cancel)
        executable = find_executable(request, context.config_value(EXEC_CONFIG_KEY))
        warm = context.config_value(WARM_JVM_CONFIG_KEY) is not False
        user = _liquibase_user(context)
        liquibase = Liquibase(
            executable,
            lb,
            request.liquibase_env,
            context.log,
            context.cancel,
            warm_jvm_dir=context.store_root / "tools" if warm else None,
            user=user,
            client_tag=str(context.store_root),
        )
        try:
            with _locked([lb.changelog, lb.defaults_file]):
                inputs = _stage_inputs(liquibase, request, context, effective, user)
                fingerprint = inputs.fingerprint
                cache = PlanCache(context.store_root)
                changesets = cache.load(fingerprint) if fingerprint else None
                if changesets is not None:
                    context.log("liquibase: plan reused (changelog, arguments and input unchanged)")
                else:
                    handle = context.planning_server(effective)
                    lines = liquibase.run(planning_args(lb), handle, "task cancelled")
                    changesets = parse_update_sql(lines)
                    if fingerprint is not None:
                        # Planned from the staged copy of exactly the bytes fingerprinted.
                        cache.store(fingerprint, changesets)
        except BaseException:
            _close(liquibase)  # no plan, so no runner that the job would close
            raise
        tasks = build_lb_plan(
            requested_image_id=request.image_id,
            effective_image_id=effective,
            changesets=changesets,
            state_exists=context.state_exists,
        )
        signature = lb_job_signature(effective, request.plan_only, context.engine_version, tasks)
        by_task = {
            task.task_id: changeset
            for task, changeset in zip(execute_tasks(tasks), changesets, strict=False)
        }
        steps = LbSteps(
            liquibase,
            context.runtime,
            by_task,
            context.cancel,
        )
        return KindPlan(effective, tasks, signature, lb.normalized, steps)
