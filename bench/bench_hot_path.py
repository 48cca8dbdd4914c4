"""Benchmark (not a test): the cache-hit hot path against its physical floor and IntegreSQL.

For each database size (default ~58 MB and ~1 GB, overlay backend), in one run:

- **hit → DSN**: `POST /v1/prepare-jobs` of a prepare whose every step is cached, until its
  result (a DSN whose server has answered the engine's probe) is read, as the CLI does;
- **floor**: what no engine can avoid for a separate server on that state, measured by hand
  on the same state and alternated with the hits: an overlay mount of the state's layers
  (mount(2)), `pg_ctl start -w` as the server user with the engine's settings, one `psql`
  probe on the private socket; stop and unmount are untimed;
- **burst**: `--burst` concurrent cache hits (separate HTTP connections), wall time from the
  first POST to the last DSN → instances/s;
- **IntegreSQL's mechanism** on the same data: in one running server (an instance of the
  state), `CREATE DATABASE … TEMPLATE postgres STRATEGY WAL_LOG` and `… STRATEGY FILE_COPY`
  (PostgreSQL 15), each through one `psql -c` (the client connection is part of the cost, as
  the probe is part of ours); the copy is dropped again, untimed.

Medians are reported, with the ratio hit / floor of the same run and the load average.
Instances are deleted through the API between samples (untimed), so each hit starts from the
same engine state. Needs root (overlay mounts) and PostgreSQL 15.

    .venv/bin/python bench/bench_hot_path.py [--sizes 58,1024] [--runs 15] [--burst 16]
        [--bursts 3] [--templates 5]

Reusable for other engine configurations (a warm pool): `hot_path_figures(engine, body,
state_dir, …)` measures hits, floor and bursts on any running engine whose store holds the
state; `main` only builds the states and prints. Raw numbers go to
bench/results/hot_path-<timestamp>.json (`common.save`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, save
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import PSQL, psql_body, query

from sqlrs_engine.dbms import postgres as pg
from sqlrs_engine.snapshot.mounts import mount_overlay, unmount
from sqlrs_engine.snapshot.overlay import OverlayBackend

BIN = Path("/usr/lib/postgresql/15/bin")
ROW_BYTES = 300
"""Approximate on-disk bytes per row of the benchmark table (int + 256-char text + header)."""


def build_body(target_mb: int) -> dict[str, Any]:
    """A prepare whose state holds a ~`target_mb` table (frozen once, in the state)."""
    rows = target_mb * 1024 * 1024 // ROW_BYTES
    return psql_body(
        "-c",
        "create table big as select g as id, repeat(md5(g::text), 8) as payload "
        f"from generate_series(1, {rows}) g",
        "-c",
        "vacuum (freeze, analyze) big",
    )


# -- one cache hit ---------------------------------------------------------------------------


def _session(engine: EngineProcess) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {engine.token}"
    return session


def hit(engine: EngineProcess, body: dict[str, Any], session: requests.Session) -> dict[str, Any]:
    """POST a prepare, follow its events to the end, read its status (what `sqlrs` does)."""
    base = engine.base_url
    response = session.post(f"{base}/v1/prepare-jobs", json=body, timeout=120)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    with session.get(f"{base}/v1/prepare-jobs/{job_id}/events", stream=True, timeout=300) as ev:
        ev.raise_for_status()
        for _line in ev.iter_lines():
            pass
    status: dict[str, Any] = session.get(f"{base}/v1/prepare-jobs/{job_id}", timeout=60).json()
    if status.get("status") != "succeeded":
        raise RuntimeError(f"prepare failed: {status}")
    if not all(t["cached"] for t in status["tasks"] if t["type"] == "state_execute"):
        raise RuntimeError(f"not a cache hit: {status['tasks']}")
    return status


def delete_instance(engine: EngineProcess, status: dict[str, Any]) -> None:
    instance = status["result"]["instance_id"]
    response = engine.delete(f"/v1/instances/{instance}", params={"force": "true"})
    response.raise_for_status()


def hit_to_dsn(engine: EngineProcess, body: dict[str, Any]) -> float:
    """Seconds from POST to a DSN whose server answered; the instance is deleted (untimed).

    The hook for other configurations: with a warm pool this is the pooled hit."""
    session = _session(engine)
    started = time.perf_counter()
    status = hit(engine, body, session)
    elapsed = time.perf_counter() - started
    delete_instance(engine, status)
    return elapsed


def burst_rate(engine: EngineProcess, body: dict[str, Any], size: int) -> float:
    """Instances per second of `size` concurrent cache hits (first POST → last DSN)."""
    sessions = [_session(engine) for _ in range(size)]
    statuses: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(size + 1)

    def one(session: requests.Session) -> None:
        gate.wait()
        try:
            statuses.append(hit(engine, body, session))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for status in statuses:
        delete_instance(engine, status)
    if errors:
        raise errors[0]
    return size / elapsed


# -- the floor -------------------------------------------------------------------------------


def floor_once(state_dir: Path, scratch: Path, port: int, *, pg_ctl_wait: bool = True) -> float:
    """Overlay mount + server start + one psql probe on `state_dir`; untimed teardown.

    `pg_ctl_wait`: `pg_ctl start -w` (the floor as issue 16 defines it; pg_ctl looks for
    readiness 10 times a second). Else `pg_ctl start -W` and a 1 ms watch of
    `postmaster.pid` for `ready`: what a server start costs without that polling."""
    user = pwd.getpwnam("postgres")
    run = scratch / "run"
    clone = scratch / "clone"
    for directory in (run, clone):
        shutil.rmtree(directory, ignore_errors=True)
    run.mkdir(mode=0o700)
    (run / pg.HBA_FILE_NAME).write_text(pg.hba_text())
    os.chown(run / pg.HBA_FILE_NAME, user.pw_uid, user.pw_gid)
    os.chown(run, user.pw_uid, user.pw_gid)
    clone.mkdir()
    upper, work, merged = clone / "upper", clone / "work", clone / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(mode=0o700)
    os.chown(upper, user.pw_uid, user.pw_gid)
    lowers = [layer.path for layer in OverlayBackend(state_dir.parents[4]).stack_of(state_dir)]
    pgdata = merged / "pgdata"
    settings = pg.server_settings(15, port, run, run / pg.HBA_FILE_NAME)
    start = pg.pg_ctl_start_argv(BIN, pgdata, run / "server.log", settings, 60)
    if not pg_ctl_wait:
        start[start.index("-w")] = "-W"
    probe = [PSQL, "-X", "-q", "-A", "-t", "-h", str(run), "-p", str(port)]
    probe += ["-U", pg.SUPERUSER, "-d", pg.DATABASE, "-c", pg.PROBE_SQL]
    as_server: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    started = time.perf_counter()
    mount_overlay(lowers, upper, work, merged)
    subprocess.run(start, check=True, capture_output=True, env=env, **as_server)
    while not pg_ctl_wait:
        info = pg.read_postmaster_pid(pgdata)
        if info is not None and info.status == "ready":
            break
        if time.perf_counter() - started > 60:
            raise RuntimeError(f"server on {pgdata} not ready in 60 s")
        time.sleep(0.001)
    out = subprocess.run(probe, check=True, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    assert out.stdout.strip() == "1", out
    stop = pg.pg_ctl_stop_argv(BIN, pgdata, "fast")
    subprocess.run(stop, check=True, capture_output=True, env=env, **as_server)
    _unmount_when_free(merged)
    shutil.rmtree(clone)
    shutil.rmtree(run)
    return elapsed


def _unmount_when_free(path: Path) -> None:
    """`pg_ctl stop -w` returns once postmaster.pid is gone, a moment before the last server
    process has closed its files: retry while the mount is busy."""
    for _ in range(500):
        try:
            unmount(path)
            return
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    unmount(path)


# -- IntegreSQL's mechanism -----------------------------------------------------------------


def template_copy(dsn: str, strategy: str, name: str) -> float:
    """`CREATE DATABASE name TEMPLATE postgres STRATEGY …` through one psql; drop untimed."""
    admin = dsn.rsplit("/", 1)[0] + "/template1"
    started = time.perf_counter()
    subprocess.run(
        [
            PSQL,
            "-X",
            "-q",
            "-c",
            f"create database {name} template postgres strategy {strategy}",
            admin,
        ],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    query(admin, f"drop database {name}")
    return elapsed


# -- one size --------------------------------------------------------------------------------


def hot_path_figures(
    engine: EngineProcess,
    body: dict[str, Any],
    state_dir: Path | None,
    *,
    runs: int,
    burst: int,
    bursts: int,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Hits alternated with the floor (when `state_dir` is given, overlay only), then bursts.

    Works on any engine whose store has `body` cached; a pool engineer can call it on an
    engine with a warm pool to get "with a pool" figures beside the floor of the same run."""
    hits: list[float] = []
    floors: list[float] = []
    fast_starts: list[float] = []
    scratch = make_scratch_dir("sqlrs-bench-floor-")
    try:
        hit_to_dsn(engine, body)  # warm-up (page cache, first connection)
        if state_dir is not None:
            floor_once(state_dir, scratch, 54990)
        for _ in range(runs):
            hits.append(hit_to_dsn(engine, body))
            if state_dir is not None:
                floors.append(floor_once(state_dir, scratch, 54990))
                fast_starts.append(floor_once(state_dir, scratch, 54990, pg_ctl_wait=False))
    finally:
        remove_scratch_dir(scratch)
    log(f"  hits   {[round(h * 1000) for h in hits]} ms")
    log(f"  floors {[round(f * 1000) for f in floors]} ms")
    log(f"  floors without pg_ctl's polling {[round(f * 1000) for f in fast_starts]} ms")
    rates = [burst_rate(engine, body, burst) for _ in range(bursts)]
    log(f"  bursts of {burst}: {[round(r, 1) for r in rates]} instances/s")
    figures: dict[str, Any] = {
        "hit_s": statistics.median(hits),
        "hits_s": hits,
        "burst": burst,
        "burst_rate": statistics.median(rates),
        "burst_rates": rates,
    }
    if floors:
        figures |= {
            "floor_s": statistics.median(floors),
            "floors_s": floors,
            "hit_over_floor": statistics.median(hits) / statistics.median(floors),
            "floor_no_poll_s": statistics.median(fast_starts),
            "floors_no_poll_s": fast_starts,
        }
    return figures


def template_figures(engine: EngineProcess, body: dict[str, Any], runs: int) -> dict[str, Any]:
    """IntegreSQL's clone, both strategies alternated, in one instance of the state."""
    session = _session(engine)
    status = hit(engine, body, session)
    dsn = status["result"]["dsn"]
    times: dict[str, list[float]] = {"wal_log": [], "file_copy": []}
    try:
        for i in range(runs):
            for strategy in times:
                times[strategy].append(template_copy(dsn, strategy, f"clone_{strategy}_{i}"))
    finally:
        delete_instance(engine, status)
    return {f"template_{k}_s": statistics.median(v) for k, v in times.items()} | {
        f"template_{k}_all_s": v for k, v in times.items()
    }


def state_dir_of(engine: EngineProcess, state_id: str) -> Path:
    (found,) = engine.state_store.glob(f"engines/postgres/*/states/{state_id}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="50,1024", help="target table sizes in MB (50: a ~58 MB database)"
    )
    parser.add_argument("--runs", type=int, default=15, help="hits (and floors) per size")
    parser.add_argument("--burst", type=int, default=16, help="concurrent hits per burst")
    parser.add_argument("--bursts", type=int, default=3, help="bursts per size")
    parser.add_argument("--templates", type=int, default=5, help="CREATE DATABASE per strategy")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (overlay mounts, the server user)", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    workdir = make_scratch_dir("sqlrs-bench-")
    store = workdir / "store"
    store.mkdir(mode=0o700)
    (store / "config.json").write_text(json.dumps({"snapshot": {"backend": "overlay"}}))
    engine = start_engine(workdir, state_store=store)
    rows: list[dict[str, Any]] = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            body = build_body(size)
            session = _session(engine)
            built = _build(engine, body, session)
            db_bytes = int(query(built["result"]["dsn"], "select pg_database_size('postgres')"))
            delete_instance(engine, built)
            state_dir = state_dir_of(engine, built["result"]["state_id"])
            log(f"{size} MB target: database {db_bytes / 2**20:.0f} MB, state {state_dir.name}")
            row = {"target_mb": size, "db_bytes": db_bytes}
            row |= hot_path_figures(
                engine,
                body,
                state_dir,
                runs=args.runs,
                burst=args.burst,
                bursts=args.bursts,
                log=log,
            )
            row |= template_figures(engine, body, args.templates)
            rows.append(row)
    finally:
        engine.stop()
        remove_scratch_dir(workdir)

    load = os.getloadavg()
    print(
        "| DB size | floor (mount + pg_ctl start -w + probe) | hit → DSN | hit / floor "
        f"| floor without pg_ctl's polling | burst of {args.burst} | TEMPLATE WAL_LOG "
        "| TEMPLATE FILE_COPY |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['db_bytes'] / 2**20:.0f} MB | {r['floor_s'] * 1000:.0f} ms "
            f"| {r['hit_s'] * 1000:.0f} ms | {r['hit_over_floor']:.2f}x "
            f"| {r['floor_no_poll_s'] * 1000:.0f} ms | {r['burst_rate']:.1f}/s "
            f"| {r['template_wal_log_s'] * 1000:.0f} ms "
            f"| {r['template_file_copy_s'] * 1000:.0f} ms |"
        )
    info = machine()
    print(f"commit {info['commit']}, kernel {info['kernel']}, {info['cpus']} CPUs, load {load}")
    path = save("hot_path", {"load": load, "results": rows})
    print(f"raw results: {path}")
    return 0


def _build(engine: EngineProcess, body: dict[str, Any], session: requests.Session) -> Any:
    """The first prepare of `body` (builds or finds the state; cached or not)."""
    base = engine.base_url
    response = session.post(f"{base}/v1/prepare-jobs", json=body, timeout=120)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    with session.get(f"{base}/v1/prepare-jobs/{job_id}/events", stream=True, timeout=3600) as ev:
        for _line in ev.iter_lines():
            pass
    status = session.get(f"{base}/v1/prepare-jobs/{job_id}", timeout=60).json()
    if status.get("status") != "succeeded":
        raise RuntimeError(f"build failed: {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
