"""What a state store must look like once nothing runs: rows, directories, servers and
mounts agree exactly. Shared by the load and crash-safety suites."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlrs_engine.runtime import procs
from tests.support.dirs import servers_under


class Api(Protocol):
    def get_json(self, path: str) -> Any: ...


def mount_points_under(path: Path) -> list[str]:
    prefix = os.path.realpath(path) + os.sep
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


def instance_runtime_dirs(store: Path) -> dict[str, str]:
    """instance id → runtime_dir, read from state.db (the API entries do not carry it)."""
    with sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT instance_id, runtime_dir FROM instances").fetchall()
    return {instance_id: runtime_dir or "" for instance_id, runtime_dir in rows}


def _marker(state_dir: Path) -> Path:
    """`.build.ok` inside the state dir, or `states/.build/<id>.ok` (btrfs)."""
    beside = state_dir.parent / ".build" / f"{state_dir.name}.ok"
    return beside if beside.exists() else state_dir / ".build.ok"


def store_problems(api: Api, store: Path) -> list[str]:
    """Every mismatch between rows, directories, servers and mounts (the engine is idle)."""
    problems: list[str] = []
    active = [
        j["job_id"]
        for j in api.get_json("/v1/prepare-jobs")
        if j["status"] not in ("succeeded", "failed")
    ]
    if active:
        problems.append(f"jobs still active: {active}")
    states = {s["state_id"]: s for s in api.get_json("/v1/states")}
    instances = {i["instance_id"]: i for i in api.get_json("/v1/instances")}
    runtime_dirs = instance_runtime_dirs(store)
    if set(runtime_dirs) != set(instances):
        problems.append(f"API and state.db disagree: {sorted(runtime_dirs)} / {sorted(instances)}")

    state_dirs = {p.name: p for p in store.glob("engines/*/*/states/*") if p.name != ".build"}
    for state_id, state in states.items():
        directory = state_dirs.get(state_id)
        if directory is None:
            problems.append(f"state row {state_id} has no directory")
        elif not _marker(directory).is_file():
            problems.append(
                f"state row {state_id}: its directory has no .build.ok marker "
                f"({sorted(p.name for p in directory.iterdir())})"
            )
        parent = state.get("parent_state_id")
        if parent and parent not in states:
            problems.append(f"state row {state_id} names a parent without a row: {parent}")
    for name, directory in state_dirs.items():
        if name in states or ".stale-" in name:
            continue
        content = sorted(p.name for p in directory.iterdir())
        # A failed or cancelled build keeps the state dir with its build lock only, on
        # purpose: lock files are not deleted while another job may wait on them.
        if content not in ([], [".build.lock"]):
            problems.append(f"state dir {name} has no row: {content}")

    # btrfs keeps markers and parent records beside its read-only snapshots, in states/.build/.
    for meta in store.glob("engines/*/*/states/.build/*"):
        state_id, _, kind = meta.name.rpartition(".")
        if kind in ("ok", "json") and state_id not in states:
            problems.append(f"{meta.name} in states/.build has no state row")
    # Warm-pool members are owned by the pool (GET /v1/pool), not by instance rows.
    pool = api.get_json("/v1/pool")
    if pool["filling_count"] or pool["removing_count"]:
        problems.append(
            f"pool still filling {pool['filling_count']} and removing "
            f"{pool['removing_count']} member(s)"
        )
    member_dirs = {str(store / "jobs" / m["member_id"] / "runtime") for m in pool["members"]}
    owned: set[int] = set()
    for member_dir in member_dirs:
        pids = set(servers_under(Path(member_dir)))
        if len(pids) != 1:
            problems.append(f"pool member {member_dir}: servers there: {sorted(pids)}")
        owned |= pids
    for instance_id, instance in instances.items():
        runtime_dir = runtime_dirs.get(instance_id, "")
        if not runtime_dir or not Path(runtime_dir).is_dir():
            problems.append(f"instance row {instance_id}: runtime dir {runtime_dir!r} is missing")
            continue
        pids = set(servers_under(Path(runtime_dir)))
        owned |= pids
        runtime_id = instance.get("runtime_id", "")
        pid = int(runtime_id.removeprefix("host:")) if runtime_id.startswith("host:") else -1
        if not procs.is_alive(pid) or pid not in pids:
            problems.append(
                f"instance row {instance_id}: runtime {runtime_id!r} is not a live server of "
                f"its runtime dir (servers there: {sorted(pids)})"
            )
    for runtime in store.glob("jobs/*/runtime"):
        if str(runtime) not in runtime_dirs.values() and str(runtime) not in member_dirs:
            problems.append(f"runtime dir without an instance row or pool member: {runtime}")
    for leftover in store.glob("jobs/pool-*"):
        if not (leftover / "runtime").is_dir():
            problems.append(f"pool member dir without a clone: {leftover}")
    for pid in sorted(set(servers_under(store)) - owned):
        problems.append(f"server without an instance row: {pid} {procs.cmdline(pid)}")
    expected_mounts = {
        os.path.join(d, "merged") for d in [*runtime_dirs.values(), *member_dirs] if d
    }
    for point in mount_points_under(store):
        if point not in expected_mounts:
            problems.append(f"mount without an owner: {point}")
    return problems


def settled_store_problems(
    api: Api,
    store: Path,
    timeout: float = 60.0,
    ignore: Callable[[str], bool] = lambda _: False,
) -> list[str]:
    """The store's problems once it settles (a job's rows are written after its files)."""
    deadline = time.monotonic() + timeout
    while True:
        problems = [p for p in store_problems(api, store) if not ignore(p)]
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.5)


def stale_leftovers(store: Path) -> list[Path]:
    """Copies that a removal moved aside and could not delete (swept at the next start)."""
    patterns = ("jobs/*.stale-*", "jobs/*/*.stale-*", "engines/*/*/*.stale-*")
    return [p for pattern in patterns for p in store.glob(pattern)] + [
        p for p in store.glob("engines/*/*/states/*.stale-*")
    ]


def live_pid(runtime_id: str) -> bool:
    return runtime_id.startswith("host:") and procs.is_alive(int(runtime_id.removeprefix("host:")))
