"""Warm pool benchmark (issue 16, parts 2 and 3): cache hit → DSN with a ready member.

In one run, on the overlay backend, for each database size (~58 MB and ~1 GB by default):

- **pooled hit**: `POST /v1/prepare-jobs` of a cached script until the job's result (a DSN)
  is read, and until that DSN answers one `psql -c 'select 1'`; the pool is refilled (and
  the instance deleted, untimed) before each hit, so every hit finds a ready member. Twice:
  through the short path (`pool.shortPath`, the default: the hit is recorded without a job)
  and through a job (`pool.shortPath: false`, as before the short path existed);
- **unpooled hit**: the same with the pool disabled, alternating with the pooled hits;
- **floor**: what an unpooled hit cannot avoid, measured on the same state with the engine's
  own parts and no engine around: overlay mount of a clone + `pg_ctl start -w` + the one
  `psql` readiness probe (`HostRuntime.start`). A DSN from the engine always answers (the
  server was probed when it started), so "hit → DSN" is the figure to hold against it; "→
  answered" adds the client's own first `psql -c 'select 1'` over TCP (SCRAM).

Beside them, IntegreSQL's mechanism on the same data: `CREATE DATABASE … TEMPLATE postgres
STRATEGY WAL_LOG` and `… FILE_COPY` through one `psql` in an instance of the state
(`bench_hot_path.template_figures`, `--templates` of each, alternated).

Then a **burst** of 16 concurrent hits with a pool of 16 ready members (short path, then
through jobs), against the same burst with the pool disabled (instances per second from the
first POST to the last DSN), each starting `SETTLE_S` after the pool is full (or drained).
Each member's memory (PSS of its server) is read from `GET /v1/pool`.

Run (as root, overlay needs it):
    .venv/bin/python bench/bench_pool.py [--hits 15] [--sizes 58,1024] [--bursts 3]
        [--templates 5]

Raw numbers go to bench/results/pool-<timestamp>.json (`common.save`), with `uptime` before
and after: the machine is shared, so only same-run ratios and medians mean anything.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import build_args
from bench_hot_path import template_figures
from common import save
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import PSQL, prepare, psql_body, query

from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.snapshot.overlay import OverlayBackend

FILL_TIMEOUT = 600.0
SETTLE_S = 1.0
"""Pause between a pool that is full (or drained) and the burst: the members filled last
are still starting their servers' background processes, and the instances of the previous
burst are still going away. A pool is normally full long before the burst that uses it."""
BURST_MB = 58
"""The bursts hit the state of this size (it must be among --sizes)."""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


SHORT = "cache hit served from the warm pool"
"""The engine log line of a hit recorded through the short path."""


def configure(engine: EngineProcess, **pool: Any) -> None:
    response = engine.patch("/v1/config", json={"path": "pool", "value": pool})
    assert response.status_code == 200, response.text
    short = pool.get("shortPath")
    deadline = time.monotonic() + FILL_TIMEOUT
    while short is not None and engine.get("/v1/pool").json()["settings"]["short_path"] != short:
        assert time.monotonic() < deadline, "the pool never read pool.shortPath"
        time.sleep(0.02)


def short_hits(engine: EngineProcess) -> int:
    return engine.stderr_text().count(SHORT)


def wait_pool(engine: EngineProcess, state_id: str, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + FILL_TIMEOUT
    while True:
        status: dict[str, Any] = engine.get("/v1/pool").json()
        ready = [m for m in status["members"] if m["state_id"] == state_id]
        enough = len(ready) >= count if count else not status["members"]
        if enough and not status["filling_count"] and not status["removing_count"]:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def answer(dsn: str) -> None:
    """One `psql -c 'select 1'` against the DSN (what a user's first connection costs)."""
    result = subprocess.run(
        [PSQL, "-X", "-At", "-c", "select 1", dsn], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr


def timed_hit(engine: EngineProcess, body: dict[str, Any]) -> tuple[float, float, str, str]:
    """(seconds to the DSN, seconds to an answering DSN, instance id, job log text)."""
    started = time.perf_counter()
    response = engine.post("/v1/prepare-jobs", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    events = list(engine.ndjson(f"/v1/prepare-jobs/{job_id}/events", timeout=300))
    result = next(e["result"] for e in events if e["type"] == "result")
    to_dsn = time.perf_counter() - started
    answer(result["dsn"])
    to_answer = time.perf_counter() - started
    logs = "\n".join(e.get("message", "") for e in events if e["type"] == "log")
    return to_dsn, to_answer, result["instance_id"], logs


def delete_instance(engine: EngineProcess, instance_id: str) -> None:
    response = engine.delete(f"/v1/instances/{instance_id}")
    assert response.status_code == 200, response.text


def floor_sample(state_dir: Path, image_id: str, workdir: Path, run: int) -> float:
    """Overlay mount of a clone + `pg_ctl start -w` + the one psql readiness probe
    (`HostRuntime.start`), no engine: what an unpooled hit cannot avoid."""
    backend = OverlayBackend(workdir)
    runtime = HostRuntime()
    runtime_dir = workdir / f"clone-{run}"
    started = time.perf_counter()
    data_dir = backend.clone(state_dir, runtime_dir)
    mounted = time.perf_counter()
    runtime.prepare_data_dir(data_dir)  # ownership: not part of the floor
    starting = time.perf_counter()
    handle = runtime.start(image_id, data_dir, lambda _line: None, NEVER_CANCELLED)
    elapsed = mounted - started + time.perf_counter() - starting
    runtime.kill(handle)
    backend.remove(runtime_dir)
    return elapsed


def measure_size(
    engine: EngineProcess, target_mb: int, hits: int, templates: int, log: Any
) -> dict[str, Any]:
    body = psql_body(*build_args(target_mb))
    configure(engine, enabled=False)
    built = prepare(engine, body)
    assert built.status["status"] == "succeeded", built.status
    state_id, image_id = built.result["state_id"], built.result["image_id"]
    db_bytes = int(query(built.dsn, "select pg_database_size(current_database())"))
    delete_instance(engine, built.result["instance_id"])
    log(f"{target_mb} MB target: database {db_bytes / 2**20:.0f} MB, state {state_id[:12]}")
    # Warm-up hit (also makes the state wanted once the pool is on).
    _, _, warm, _ = timed_hit(engine, body)
    delete_instance(engine, warm)
    pooled_dsn: list[float] = []
    pooled_answer: list[float] = []
    job_dsn: list[float] = []
    plain_dsn: list[float] = []
    plain_answer: list[float] = []
    memory: list[int] = []
    state_dir = next(engine.state_store.glob(f"engines/*/*/states/{state_id}"))
    floor_dir = make_scratch_dir("sqlrs-bench-floor-")
    floors: list[float] = []
    for run in range(hits):
        # The floor alternates with the hits, so that load changes hit all three alike.
        floors.append(floor_sample(state_dir, image_id, floor_dir, run))
        pool = {"enabled": True, "membersPerState": 1, "maxMembers": 1, "maxMemoryBytes": 0}
        configure(engine, **pool, shortPath=True)
        wait_pool_for(engine, body, state_id, memory)
        before = short_hits(engine)
        to_dsn, to_answer, instance, logs = timed_hit(engine, body)
        assert "ready server taken from the warm pool" in logs, logs
        assert short_hits(engine) == before + 1, "the hit did not take the short path"
        pooled_dsn.append(to_dsn)
        pooled_answer.append(to_answer)
        delete_instance(engine, instance)
        configure(engine, **pool, shortPath=False)
        wait_pool_for(engine, body, state_id, memory)
        to_dsn, _, instance, logs = timed_hit(engine, body)
        assert "ready server taken from the warm pool" in logs, logs
        assert short_hits(engine) == before + 1, "the hit took the short path"
        job_dsn.append(to_dsn)
        delete_instance(engine, instance)
        configure(engine, enabled=False)
        wait_pool(engine, state_id, 0)
        to_dsn, to_answer, instance, logs = timed_hit(engine, body)
        assert "warm pool" not in logs, logs
        plain_dsn.append(to_dsn)
        plain_answer.append(to_answer)
        delete_instance(engine, instance)
    remove_scratch_dir(floor_dir)
    result = {
        "target_mb": target_mb,
        "db_bytes": db_bytes,
        "pooled_to_dsn_s": pooled_dsn,
        "pooled_to_answer_s": pooled_answer,
        "pooled_by_job_to_dsn_s": job_dsn,
        "unpooled_to_dsn_s": plain_dsn,
        "unpooled_to_answer_s": plain_answer,
        "floor_s": floors,
        "member_pss_bytes": memory,
    }
    if templates > 0:  # the pool is off: an ordinary instance of the state
        result.update(template_figures(engine, body, templates))
    med = {k: statistics.median(v) for k, v in result.items() if isinstance(v, list) and v}
    log(
        f"  pooled hit → DSN {med['pooled_to_dsn_s'] * 1000:.1f} ms, → answering DSN "
        f"{med['pooled_to_answer_s'] * 1000:.1f} ms | pooled through a job → DSN "
        f"{med['pooled_by_job_to_dsn_s'] * 1000:.1f} ms | unpooled → DSN "
        f"{med['unpooled_to_dsn_s'] * 1000:.1f} ms, → answering "
        f"{med['unpooled_to_answer_s'] * 1000:.1f} ms | floor {med['floor_s'] * 1000:.1f} ms"
        f" | member PSS {med['member_pss_bytes'] / 2**20:.1f} MiB"
    )
    if templates > 0:
        log(
            f"  TEMPLATE WAL_LOG {result['template_wal_log_s'] * 1000:.1f} ms, "
            f"FILE_COPY {result['template_file_copy_s'] * 1000:.1f} ms"
        )
    result["medians"] = med
    return result


def wait_pool_for(
    engine: EngineProcess, body: dict[str, Any], state_id: str, memory: list[int]
) -> None:
    """Until one member of the state is ready (a hit first if the state is not wanted)."""
    status = engine.get("/v1/pool").json()
    if not any(s["state_id"] == state_id for s in status["states"]):
        _, _, instance, _ = timed_hit(engine, body)
        delete_instance(engine, instance)
    status = wait_pool(engine, state_id, 1)
    memory.append(status["members"][0]["memory_bytes"])


def burst(engine: EngineProcess, body: dict[str, Any], size: int) -> tuple[float, int]:
    """`size` concurrent hits: (seconds from the first POST to the last DSN, pooled count)."""
    results: list[tuple[str, str]] = []
    lock = threading.Lock()
    gate = threading.Barrier(size)

    def one() -> None:
        gate.wait()
        response = engine.request("POST", "/v1/prepare-jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        events = list(engine.ndjson(f"/v1/prepare-jobs/{job_id}/events", timeout=300))
        result = next(e["result"] for e in events if e["type"] == "result")
        logs = "\n".join(e.get("message", "") for e in events if e["type"] == "log")
        with lock:
            results.append((result["instance_id"], logs))

    threads = [threading.Thread(target=one) for _ in range(size)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert len(results) == size
    for instance, _ in results:
        delete_instance(engine, instance)
    return elapsed, sum("warm pool" in logs for _, logs in results)


def burst_pool(size: int) -> dict[str, Any]:
    """The `pool` settings of a burst: `size` members of its one state, no memory bound."""
    return {
        "enabled": True,
        "membersPerState": size,
        "maxMembers": size,
        "maxMemoryBytes": 0,
        "fillConcurrency": 2,
    }


def state_without_instances(engine: EngineProcess, body: dict[str, Any]) -> str:
    """Prepare `body` (a cache hit after the first time) and delete every instance: its
    state's id."""
    state_id: str = prepare(engine, body).result["state_id"]
    for entry in engine.get("/v1/instances").json():
        delete_instance(engine, entry["instance_id"])
    return state_id


def measure_burst(engine: EngineProcess, rounds: int, size: int, log: Any) -> dict[str, Any]:
    body = psql_body(*build_args(BURST_MB))  # cached by its size's section
    state_id = state_without_instances(engine, body)
    pooled: list[float] = []
    by_job: list[float] = []
    plain: list[float] = []
    pool = burst_pool(size)
    for _ in range(rounds):
        for short, rates in ((True, pooled), (False, by_job)):
            configure(engine, **pool, shortPath=short)
            wait_pool_for(engine, body, state_id, [])
            wait_pool(engine, state_id, size)
            time.sleep(SETTLE_S)
            before = short_hits(engine)
            elapsed, taken = burst(engine, body, size)
            assert taken == size, f"only {taken} of {size} hits took a member"
            assert short_hits(engine) - before == (size if short else 0)
            rates.append(size / elapsed)
        configure(engine, enabled=False)
        wait_pool(engine, state_id, 0)
        time.sleep(SETTLE_S)
        elapsed, taken = burst(engine, body, size)
        assert taken == 0
        plain.append(size / elapsed)
    log(
        f"burst of {size}: pooled {statistics.median(pooled):.1f} instances/s, "
        f"pooled through jobs {statistics.median(by_job):.1f} instances/s, "
        f"unpooled {statistics.median(plain):.1f} instances/s"
    )
    return {
        "size": size,
        "pooled_instances_per_s": pooled,
        "pooled_by_job_instances_per_s": by_job,
        "unpooled_instances_per_s": plain,
        "medians": {
            "pooled_instances_per_s": statistics.median(pooled),
            "pooled_by_job_instances_per_s": statistics.median(by_job),
            "unpooled_instances_per_s": statistics.median(plain),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=15)
    parser.add_argument("--sizes", default="58,1024")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--burst-size", type=int, default=16)
    parser.add_argument("--templates", type=int, default=5, help="TEMPLATE clones of each kind")
    args = parser.parse_args()
    load_before = uptime()
    print(f"load: {load_before}", flush=True)
    workdir = make_scratch_dir("sqlrs-bench-pool-")
    store = workdir / "store"
    store.mkdir()
    (store / "config.json").write_text('{"snapshot": {"backend": "overlay"}}')
    engine = start_engine(workdir, state_store=store)
    data: dict[str, Any] = {"load_before": load_before, "sizes": [], "burst": None}
    try:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            data["sizes"].append(measure_size(engine, size, args.hits, args.templates, print))
            if size == BURST_MB and args.bursts > 0:
                # Before a bigger state is hit: then this one is the only state the pool
                # wants, and all of the burst's members are its own.
                data["burst"] = measure_burst(engine, args.bursts, args.burst_size, print)
    except BaseException:
        pool_lines = [line for line in engine.stderr_text().splitlines() if "pool" in line]
        print("\n".join(pool_lines[-60:]), file=sys.stderr)
        raise
    finally:
        engine.stop()
        remove_scratch_dir(workdir)
    data["load_after"] = uptime()
    print(f"load: {data['load_after']}")
    print(f"raw numbers: {save('pool', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
