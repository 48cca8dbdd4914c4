"""prepare end to end on every snapshot backend: copy, overlay (real mounts) and btrfs (a real
btrfs on a loop device), through the real engine process and real PostgreSQL.

Each backend gets one engine (module-scoped, parametrized) whose store is configured before
start with `<store>/config.json` (`snapshot.backend`); for btrfs `SQLRS_STATE_STORE` points
into the loop-mounted filesystem. The restart test runs last for each backend: it replaces
the engine.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sqlrs_engine import process
from sqlrs_engine.process import RunAs
from sqlrs_engine.snapshot.btrfs import subvolumes_below
from sqlrs_engine.snapshot.fsinfo import is_subvolume
from sqlrs_engine.snapshot.fsops import tree_size
from sqlrs_engine.snapshot.mounts import is_mount_point, mounts_under
from sqlrs_engine.snapshot.overlay import OverlayBackend
from tests.snapshot import btrfs_loop
from tests.support.dirs import make_scratch_dir, remove_scratch_dir, servers_under
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import (
    JobOutcome,
    files_of,
    prepare,
    psql_body,
    query,
    release_file,
    submit,
    wait,
    wait_for_running_step,
    waits_for,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

KINDS = {"copy": "copy", "overlay": "overlayfs", "btrfs": "btrfs"}
"""config value → backend kind."""

TWO_STEPS = (
    "-c",
    "create table t(a int, note text);"
    " insert into t select g, 'base' from generate_series(1, 1000) g",
    "-c",
    "create table gone(x int); insert into gone values (1)",
)
CHILD_STEP = ("-c", "drop table gone; insert into t values (0, 'child')")


@dataclass
class Env:
    config: str
    kind: str
    workdir: Path
    store: Path
    engine: EngineProcess

    @property
    def jobs(self) -> Path:
        return self.store / "jobs"

    def data_dir(self, job_id: str) -> Path:
        """The data dir of the instance a job created (runtime dir, or its overlay mount)."""
        runtime = self.jobs / job_id / "runtime"
        return runtime / "merged" if self.kind == "overlayfs" else runtime

    def state_dir(self, state_id: str) -> Path:
        (found,) = self.store.glob(f"engines/postgres/*/states/{state_id}")
        return found

    def start(self) -> None:
        self.engine = start_engine(self.workdir, state_store=self.store)


@pytest.fixture(scope="module", params=list(KINDS))
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    config: str = request.param
    fs = None
    if config == "btrfs":
        reason = btrfs_loop.unavailable()
        if reason is not None:
            pytest.skip(reason)
    if config == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay mounts need root")
    workdir = make_scratch_dir()
    try:
        if config == "btrfs":
            fs = btrfs_loop.make_loop_btrfs("2G")
            store = fs.mount_point / "store"
        else:
            store = workdir / "store"
        store.mkdir()
        (store / "config.json").write_text(json.dumps({"snapshot": {"backend": config}}))
        env = Env(config, KINDS[config], workdir, store, start_engine(workdir, state_store=store))
        try:
            yield env
        finally:
            env.engine.stop()
    finally:
        if fs is not None:
            btrfs_loop.remove_loop_btrfs(fs)
        remove_scratch_dir(workdir)


@dataclass
class RunOutcome:
    events: list[dict[str, Any]]

    @property
    def stdout(self) -> str:
        return "".join(e["data"] for e in self.events if e["type"] == "stdout")

    @property
    def logs(self) -> list[str]:
        return [e["data"] for e in self.events if e["type"] == "log"]

    @property
    def exit_code(self) -> int | None:
        last = self.events[-1] if self.events else {}
        return last.get("exit_code") if last.get("type") == "exit" else None


def run_psql(engine: EngineProcess, instance_id: str, sql: str) -> RunOutcome:
    """`POST /v1/runs` (run:psql) and read its NDJSON stream to the end."""
    body = {"instance_ref": instance_id, "kind": "psql", "args": ["-At", "-c", sql]}
    with engine.post("/v1/runs", json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        return RunOutcome([json.loads(line) for line in response.iter_lines() if line])


def succeeded(outcome: JobOutcome) -> JobOutcome:
    assert outcome.status["status"] == "succeeded", outcome.status
    return outcome


def test_the_configured_backend_is_used_and_logged(env: Env) -> None:
    log = env.engine.stderr_text()
    assert f"snapshot backend {env.kind} (configured {env.config})" in log


def test_prepare_cache_hit_and_isolation(env: Env) -> None:
    first = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    state_id = first.result["state_id"]
    state = env.state_dir(state_id)
    if env.kind == "overlayfs":
        assert (state / "layers.json").is_file() and (state / "layer").is_dir()
    elif env.kind == "btrfs":
        assert is_subvolume(state) and not os.access(state, os.W_OK)
    else:
        assert (state / "pgdata" / "PG_VERSION").is_file()

    size = env.engine.get(f"/v1/states/{state_id}").json()["size_bytes"]
    full = tree_size(env.data_dir(first.job_id))
    if env.kind == "copy":
        assert size > 0.9 * full
    else:
        assert 0 < size < 0.75 * full, (size, full)  # only what the step changed

    second = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    assert [t["cached"] for t in second.status["tasks"] if t["type"] == "state_execute"] == [
        True,
        True,
    ]
    assert second.result["state_id"] == state_id
    query(second.dsn, "update t set note = 'changed'; delete from t where a > 500; drop table gone")
    assert query(first.dsn, "select count(*), min(note) from t") == "1000|base"
    assert query(first.dsn, "select count(*) from gone") == "1"
    third = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    assert query(third.dsn, "select count(*), min(note) from t") == "1000|base"
    assert query(third.dsn, "select count(*) from gone") == "1", "a clone's write reached the state"

    child = succeeded(prepare(env.engine, psql_body(*TWO_STEPS, *CHILD_STEP)))
    child_state = env.engine.get(f"/v1/states/{child.result['state_id']}").json()
    assert child_state["parent_state_id"] == state_id
    assert query(child.dsn, "select count(*) from t") == "1001"
    assert query(child.dsn, "select count(*) from pg_tables where tablename = 'gone'") == "0"
    query(child.dsn, "insert into t values (-1, 'child instance')")
    fourth = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    assert query(fourth.dsn, "select count(*) from gone") == "1", "a child changed its parent"
    assert query(fourth.dsn, "select count(*) from t") == "1000"
    again = succeeded(prepare(env.engine, psql_body(*TWO_STEPS, *CHILD_STEP)))
    assert query(again.dsn, "select count(*) from t") == "1001"


def _as_server_user(script: str) -> tuple[int, str]:
    """Run a shell script as the server user (`postgres` when the engine is root)."""
    user = RunAs.from_name("postgres") if os.geteuid() == 0 else RunAs.current()
    result = process.run(["sh", "-c", script], user=user, cwd="/", timeout=30)
    return result.exit_code, result.output


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the server runs as the engine user")
def test_states_and_base_are_immutable_for_the_server_user(env: Env) -> None:
    """SPEC §0.9: the server user writes only into clones, never into a state or the base."""
    hit = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    state = env.state_dir(hit.result["state_id"])
    (base,) = env.store.glob("engines/postgres/*/base")
    targets = [
        state,
        state / "pgdata",
        state / "pgdata" / "PG_VERSION",
        state.parent,
        base,
        base / "pgdata",
        base / "pgdata" / "PG_VERSION",
    ]
    if env.kind == "overlayfs":
        targets += [state / "layer", state / "layer" / "pgdata" / "new-file"]
    for target in targets:
        code, output = _as_server_user(
            f"echo poison >> '{target}' || touch '{target}/poison' || mkdir '{target}/poison'"
        )
        assert code != 0, f"the server user could write into {target}"
        assert "Permission denied" in output, output
    code, _ = _as_server_user(f"ls '{state.parent}' || ls '{base}'")
    assert code != 0, "the server user can list the states"
    # ... while its own clone stays writable, through the same files.
    clone = env.data_dir(hit.job_id) / "pgdata"
    code, output = _as_server_user(f"touch '{clone}/sqlrs-test' && rm '{clone}/sqlrs-test'")
    assert code == 0, output
    assert query(hit.dsn, "select count(*) from t") == "1000"


def _not_owned_by(root: Path, uid: int, gid: int) -> list[Path]:
    """Entries under `root` (itself included) another user owns; overlay whiteouts (character
    devices the kernel makes as the mounter) are not files and are left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for path in [Path(dirpath), *(Path(dirpath, name) for name in dirnames + filenames)]:
            st = path.lstat()
            if stat.S_ISCHR(st.st_mode):
                continue
            if (st.st_uid, st.st_gid) != (uid, gid):
                found.append(path)
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
    return sorted(set(found))


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the server runs as the engine user")
def test_states_belong_to_the_server_user_so_a_hit_changes_no_owner(env: Env) -> None:
    """Issue 16: a cache hit does no work per file of its clone. Ownership is made right once,
    in the base and when a state is built, so every clone starts as it is, still sealed."""
    hit = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    server = pwd.getpwnam("postgres")
    state = env.state_dir(hit.result["state_id"])
    (base,) = env.store.glob("engines/postgres/*/base")
    data = state / "layer" if env.kind == "overlayfs" else state / "pgdata"
    for root in (base / "pgdata", data, env.data_dir(hit.job_id)):
        assert _not_owned_by(root, server.pw_uid, server.pw_gid) == [], root
    for sealed in (state.parent, base):
        st = sealed.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), sealed
    assert query(hit.dsn, "select count(*) from t") == "1000"


def test_servers_start_without_crash_recovery(env: Env) -> None:
    """States are taken after a clean shutdown: a clone starts like a stopped server."""
    hit = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    pid_file = (env.data_dir(hit.job_id) / "pgdata" / "postmaster.pid").read_text().splitlines()
    log = (Path(pid_file[4]) / "postgres.log").read_text()
    assert "database system was shut down at" in log
    assert "not properly shut down" not in log
    assert "automatic recovery in progress" not in log


def test_failed_and_cancelled_jobs_leave_no_clone_behind(env: Env) -> None:
    failed = prepare(env.engine, psql_body("-c", "create table ok(a int)", "-c", "select 1/0"))
    assert failed.status["status"] == "failed"
    job_id = submit(env.engine, psql_body("-c", "select pg_sleep(60)"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = env.engine.get("/v1/tasks", params={"job": job_id}).json()
        if any(t["task_id"] == "execute-0" and t["status"] == "running" for t in tasks):
            break
        time.sleep(0.05)
    time.sleep(0.5)  # psql is running on the clone's server
    assert env.engine.post(f"/v1/prepare-jobs/{job_id}/cancel").status_code == 202
    cancelled = wait(env.engine, job_id)
    assert cancelled.status["error"]["code"] == "cancelled"
    for job in (failed.job_id, job_id):
        job_dir = env.jobs / job
        assert not (job_dir / "runtime").exists()
        assert servers_under(job_dir) == []
        if job_dir.exists():
            assert mounts_under(job_dir) == []
            assert subvolumes_below(job_dir) == []


def test_run_and_delete(env: Env) -> None:
    """Runs (including the restart of a killed server) and deletions on each backend leave
    no clone, mount, subvolume or layer behind."""
    steps = ("-c", "create table l1(a int)", "-c", "create table l2(a int)")
    chain = succeeded(prepare(env.engine, psql_body(*steps, "-c", "insert into l2 values (7)")))
    middle = succeeded(prepare(env.engine, psql_body(*steps)))
    ids = [t["output_state_id"] for t in chain.status["tasks"] if t["type"] == "state_execute"]
    instance_id = chain.result["instance_id"]
    first = run_psql(env.engine, instance_id, "select a from l2")
    assert (first.stdout, first.exit_code) == ("7\n", 0), first.events
    pid = int(env.engine.get(f"/v1/instances/{instance_id}").json()["runtime_id"][5:])
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    again = run_psql(env.engine, instance_id, "insert into l2 values (8); select count(*) from l2")
    assert (again.stdout, again.exit_code) == ("INSERT 0 1\n2\n", 0), again.events
    assert "run: server not running - restarting" in again.logs

    middle_dir = env.data_dir(middle.job_id)
    deleted = env.engine.delete(f"/v1/instances/{middle.result['instance_id']}")
    assert deleted.status_code == 200, deleted.text
    assert not middle_dir.exists() and mounts_under(env.jobs / middle.job_id) == []

    state_dirs = [env.state_dir(state_id) for state_id in ids]
    removed = env.engine.delete(f"/v1/states/{ids[0]}", params={"recurse": "true"})
    assert removed.status_code == 200 and removed.json()["outcome"] == "deleted", removed.text
    for state_dir in state_dirs:
        assert not state_dir.exists()
        assert not state_dir.parent.joinpath(".build", f"{state_dir.name}.ok").exists()
    for outcome in (chain, middle):
        assert env.engine.delete(f"/v1/prepare-jobs/{outcome.job_id}").status_code == 200
        job_dir = env.jobs / outcome.job_id
        assert not job_dir.exists() and servers_under(job_dir) == []
    left = [str(m.mount_point) for m in mounts_under(env.store)]
    assert not [m for m in left if chain.job_id in m or middle.job_id in m], left


def test_a_state_a_running_job_relies_on_is_blocked_on_every_backend(env: Env) -> None:
    """docs/api.md, Deletion: the same rule on every backend. On overlay the job's clone
    stands on the state's layer; on copy and btrfs it no longer needs the state's files, but
    its result (the next state's parent, the instance) names the state, so deleting it is
    blocked all the same — 409 `active_tasks` naming the job, even with recurse and force —
    and goes through once the job has ended."""
    step = ("-c", "create table held_by_job(a int)")
    first = succeeded(prepare(env.engine, psql_body(*step)))
    root = first.result["state_id"]
    assert env.engine.delete(f"/v1/instances/{first.result['instance_id']}").status_code == 200
    files = files_of(env.state_dir(root))
    with release_file() as go:
        job_id = submit(env.engine, psql_body(*step, "-c", waits_for(go)))
        wait_for_running_step(env.engine, job_id)
        runtime = env.jobs / job_id / "runtime"
        assert wait_for(lambda: servers_under(runtime) != []), "the job's server never started"
        refused = env.engine.delete(
            f"/v1/states/{root}", params={"recurse": "true", "force": "true"}
        )
        assert refused.status_code == 409, refused.text
        assert refused.json()["root"] == {
            "kind": "state",
            "id": root,
            "blocked": "active_tasks",
            "children": [{"kind": "job", "id": job_id, "blocked": "active_tasks"}],
        }
        assert files_of(env.state_dir(root)) == files
        go.touch()
        job = succeeded(wait(env.engine, job_id))
    child = job.result["state_id"]
    assert env.engine.get(f"/v1/states/{child}").json()["parent_state_id"] == root
    deleted = env.engine.delete(f"/v1/states/{root}", params={"recurse": "true"})
    assert (deleted.status_code, deleted.json()["outcome"]) == (200, "deleted")
    assert list(env.store.glob(f"engines/postgres/*/states/{root}")) == []
    assert servers_under(env.jobs / job_id) == []


def test_restart_keeps_instances_and_cleans_stale_mounts(env: Env) -> None:
    running = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    stopped = succeeded(prepare(env.engine, psql_body(*TWO_STEPS)))
    stopped_dir = env.data_dir(stopped.job_id)
    postmaster = int((stopped_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGQUIT)  # its server dies behind the engine's back
    _wait_gone(postmaster)
    env.engine.stop()

    leftovers: list[Path] = []
    if env.kind == "overlayfs":
        # What a crashed engine can leave: the clone of a job that never became an instance,
        # and a runtime that was renamed aside while its removal failed.
        (base,) = env.store.glob("engines/postgres/*/base")
        backend = OverlayBackend(env.store)
        leftovers.append(backend.clone(base, env.jobs / ("e" * 32) / "runtime"))
        stale = env.jobs / ("f" * 32) / "runtime.stale-1"
        leftovers.append(backend.clone(base, stale))
        assert all(is_mount_point(p) for p in leftovers)

    env.start()
    assert query(running.dsn, "select count(*) from t") == "1000", "a running instance survives"
    instances = {i["instance_id"] for i in env.engine.get("/v1/instances").json()}
    assert {running.result["instance_id"], stopped.result["instance_id"]} <= instances
    for leftover in leftovers:
        assert not is_mount_point(leftover), f"stale mount {leftover} survived the start"
    if env.kind == "overlayfs":
        assert is_mount_point(env.data_dir(running.job_id))
        # The stopped instance's clone is mounted again, ready for its server to restart.
        assert is_mount_point(stopped_dir)
        assert (stopped_dir / "pgdata" / "PG_VERSION").is_file()
        assert "unmounted" in env.engine.stderr_text()
    # `run` restarts the stopped instance's server on its (remounted) data dir.
    restarted = run_psql(env.engine, stopped.result["instance_id"], "select count(*) from t")
    assert restarted.stdout == "1000\n" and restarted.exit_code == 0, restarted.events
    assert "run: server not running - restarting" in restarted.logs


def test_a_prepare_evicts_unused_states_to_make_room(env: Env) -> None:
    """SPEC §10 on each backend: with the store over its limit, a prepare that builds a state
    first evicts unused states (least recently used first) instead of failing; states with
    instances and the job's own chain stay. Last in the module: it evicts other tests' unused
    states too."""
    engine = env.engine
    made = [
        succeeded(prepare(engine, psql_body("-c", f"create table ev{i}(a int)"))) for i in range(3)
    ]
    for outcome in made:
        assert engine.delete(f"/v1/instances/{outcome.result['instance_id']}").ok
    kept = succeeded(prepare(engine, psql_body("-c", "create table ev_kept(a int)")))
    usage = sum(s["size_bytes"] for s in engine.get("/v1/states").json())
    settings = {"reserveBytes": 0, "minStateAge": "0s", "maxBytes": int(usage / 0.9) - 1}
    for key, value in settings.items():
        path = f"cache.capacity.{key}"
        assert engine.patch("/v1/config", json={"path": path, "value": value}).ok
    try:
        new = succeeded(prepare(engine, psql_body("-c", "create table ev_new(a int)")))
        status = engine.get("/v1/cache/status").json()
        assert status["last_eviction"]["trigger"] in ("prepare_step", "metadata_commit")
        assert status["last_eviction"]["evicted_count"] >= 1
        left = {s["state_id"] for s in engine.get("/v1/states").json()}
        assert made[0].result["state_id"] not in left, "the least recently used went first"
        assert {kept.result["state_id"], new.result["state_id"]} <= left
        assert query(new.dsn, "select count(*) from ev_new") == "0"
        assert status["usage_bytes"] <= int(status["effective_max_bytes"] * 0.9)
    finally:
        for key in settings:
            engine.delete("/v1/config", params={"path": f"cache.capacity.{key}"})


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
