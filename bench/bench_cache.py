"""Cache capacity benchmark (issue 14, SPEC §10).

Sections, each with a baseline measured in the same run, medians over repeated samples:
  status  `GET /v1/cache/status` latency on a store with 10 000 states, interleaved with the
          same request on a store with 1 state and with `GET /v1/health` (the HTTP floor);
  evict   one eviction pass over 1 000 small states (its own duration, from the engine log),
          against removing 1 000 identical directories with `shutil.rmtree`;
  hits    prepare time with capacity enforcement on vs off (the engine with every capacity
          check replaced by a no-op, `engine_without_cache_checks.py`), both stores holding
          1 000 other states, interleaved: a cache hit, and a one-step miss on top of the
          base (the path that runs the prepare_step, snapshot and metadata_commit checks);
          the order alternates every round (on, off, off, on, …).

States are seeded while no engine runs: rows through SQL on the engine's own database
(`tests.support.seed.Seeder` opens and migrates it), and for each row a complete directory
of the copy backend (`pgdata/PG_VERSION` and the `.build.ok` marker; for `evict`, also 70
files of 4 KiB each, the file count of a small overlay layer), since the start-up sweep
deletes rows whose directory is missing or incomplete. `created_at` is spaced a second apart,
so least-recently-used order is seeding order.

Run: .venv/bin/python bench/bench_cache.py [--only status,evict,hits] [--states 10000]
         [--victims 1000] [--samples 200] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import median, save, timed  # type: ignore[import-not-found]
from tests.support import engine_process
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import prepare, psql_body
from tests.support.seed import IMAGE, Seeder

from sqlrs_engine.clock import format_rfc3339
from sqlrs_engine.snapshot.layout import StoreLayout

OFF_ENGINE = Path(__file__).resolve().parent / "engine_without_cache_checks.py"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PASS_LINE = re.compile(r"cache eviction \((\w+)\): (\d+) state\(s\) evicted.*took ([\d.]+) s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def seed_states(
    store: Path, count: int, *, size_bytes: int, files: int = 0, file_bytes: int = 0
) -> list[str]:
    """`count` complete, unused copy-backend states, oldest first (see module docstring)."""
    ids = [f"{n:064x}" for n in range(1, count + 1)]
    rows = [
        {
            "id": state_id,
            "image": IMAGE,
            "created": format_rfc3339(EPOCH + timedelta(seconds=n)),
            "size": size_bytes,
        }
        for n, state_id in enumerate(ids)
    ]
    seeder = Seeder(store)
    with seeder.db as tx:
        tx.executable.exec_driver_sql(
            """INSERT INTO states (state_id, state_fingerprint, image_id, prepare_kind,
                   prepare_args_normalized, created_at, last_used_at, size_bytes,
                   snapshot_backend)
               VALUES (:id, :id, :image, 'psql', '-c select 1', :created, :created, :size,
                   'copy')""",
            rows,
        )
    seeder.close()
    layout = StoreLayout(store)
    payload = b"\0" * file_bytes
    for state_id in ids:
        pgdata = layout.state_dir(IMAGE, state_id) / "pgdata"
        (pgdata / "base").mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text("15\n")
        for n in range(files):
            (pgdata / "base" / f"{16384 + n}").write_bytes(payload)
        (pgdata.parent / ".build.ok").write_text("ok")
    os.sync()  # no writeback of the seeding left to slow down what is measured next
    return ids


def write_config(store: Path, capacity: dict[str, Any] | None = None) -> None:
    config: dict[str, Any] = {"snapshot": {"backend": "copy"}}
    if capacity:
        config["cache"] = {"capacity": capacity}
    (store / "config.json").write_text(json.dumps(config))


@contextmanager
def seeded_engine(
    count: int, *, off: bool = False, capacity: dict[str, Any] | None = None, **seed: Any
) -> Iterator[tuple[EngineProcess, float]]:
    """An engine on a fresh store seeded with `count` states; yields it and its start time."""
    workdir = make_scratch_dir("sqlrs-bench-")
    store = workdir / "state-store"
    store.mkdir(mode=0o700)
    seed_states(store, count, **{"size_bytes": 1 << 20, **seed})
    write_config(store, capacity)
    command = engine_process.engine_command
    if off:
        engine_process.engine_command = lambda args: [sys.executable, str(OFF_ENGINE), *args]
    try:
        started = time.perf_counter()
        engine = start_engine(workdir)
        startup = time.perf_counter() - started
    finally:
        engine_process.engine_command = command
    try:
        yield engine, startup
    finally:
        engine.stop()
        remove_scratch_dir(workdir)


# -- status ----------------------------------------------------------------------------------


def bench_status(count: int, samples: int) -> dict[str, Any]:
    with seeded_engine(1) as (small, _), seeded_engine(count) as (big, startup):
        body = big.get("/v1/cache/status").json()
        assert body["state_count"] == count, body
        times: dict[str, list[float]] = {"health": [], "status_1": [], f"status_{count}": []}
        for _ in range(samples):
            times["health"].append(timed(lambda: big.get("/v1/health").raise_for_status()))
            times["status_1"].append(
                timed(lambda: small.get("/v1/cache/status").raise_for_status())
            )
            times[f"status_{count}"].append(
                timed(lambda: big.get("/v1/cache/status").raise_for_status())
            )
    big_median = median(times[f"status_{count}"])
    return {
        "states": count,
        "engine_start_s": startup,
        "status_body": body,
        "median_s": {name: median(values) for name, values in times.items()},
        "p90_s": {name: percentile(values, 0.9) for name, values in times.items()},
        "ratio_vs_1_state": big_median / median(times["status_1"]),
        "ratio_vs_health": big_median / median(times["health"]),
    }


# -- evict -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_removal(count: int, files: int, file_bytes: int) -> tuple[float, float]:
    """`shutil.rmtree` of `count` directories laid out like the seeded states: (wall, CPU)."""
    work = make_scratch_dir("sqlrs-bench-raw-")
    payload = b"\0" * file_bytes
    dirs = []
    for n in range(count):
        pgdata = work / f"{n:064x}" / "pgdata"
        (pgdata / "base").mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text("15\n")
        for f in range(files):
            (pgdata / "base" / f"{16384 + f}").write_bytes(payload)
        dirs.append(pgdata.parent)
    os.sync()  # as after seeding the states
    try:
        cpu = time.process_time()
        wall = timed(lambda: [shutil.rmtree(d) for d in dirs])
        return wall, time.process_time() - cpu
    finally:
        remove_scratch_dir(work)


def bench_evict(victims: int, files: int = 70, file_bytes: int = 4096) -> dict[str, Any]:
    keep = 100
    size = files * file_bytes + 3  # what the copy backend measures: file sizes, PG_VERSION
    capacity = {"reserveBytes": 0, "minStateAge": "0s"}
    with seeded_engine(
        victims + keep, capacity=capacity, size_bytes=size, files=files, file_bytes=file_bytes
    ) as (engine, startup):
        # The low watermark keeps `keep` states (and a half): the pass removes `victims`.
        max_bytes = int((keep + 0.5) * size / 0.8)
        response = engine.patch(
            "/v1/config", json={"path": "cache.capacity.maxBytes", "value": max_bytes}
        )
        assert response.status_code == 200, response.text
        # The prepare_step check runs the pass before the step; the step then fails fast
        # (division by zero), so that no new state changes what the store holds afterwards.
        started, cpu = time.perf_counter(), cpu_seconds(engine.process.pid)
        failed = prepare(engine, psql_body("-c", "select 1/0"))
        job_s = time.perf_counter() - started
        job_cpu_s = cpu_seconds(engine.process.pid) - cpu
        assert failed.status["status"] == "failed", failed.status
        found = PASS_LINE.findall(engine.stderr_text())
        status = engine.get("/v1/cache/status").json()
    assert len(found) == 1 and found[0][0] == "prepare_step", found
    evicted, pass_s = int(found[0][1]), float(found[0][2])
    assert evicted == victims == status["last_eviction"]["evicted_count"], (found, status)
    raw_runs = [raw_removal(victims, files, file_bytes) for _ in range(3)]
    raw = [wall for wall, _ in raw_runs]
    raw_cpu = [cpu for _, cpu in raw_runs]
    return {
        "victims": victims,
        "files_per_state": files + 1,
        "state_bytes": size,
        "engine_start_s": startup,
        "pass_s": pass_s,
        "per_state_ms": pass_s / victims * 1000,
        "job_with_pass_s": job_s,
        "raw_rmtree_s": median(raw),
        "raw_samples_s": raw,
        "ratio_vs_rmtree": pass_s / median(raw),
        "engine_cpu_s": job_cpu_s,
        "raw_rmtree_cpu_s": median(raw_cpu),
        "raw_cpu_samples_s": raw_cpu,
        "cpu_ratio_vs_rmtree": job_cpu_s / median(raw_cpu),
        "last_eviction": status["last_eviction"],
    }


# -- hits ------------------------------------------------------------------------------------


def bench_hits(states: int, rounds: int) -> dict[str, Any]:
    hit_body = psql_body("-c", "create table hit(a int)")
    times: dict[str, list[float]] = {"hit_on": [], "hit_off": [], "miss_on": [], "miss_off": []}
    with seeded_engine(states) as (on, _), seeded_engine(states, off=True) as (off, _):
        engines = {"on": on, "off": off}
        for engine in engines.values():
            warm = prepare(engine, hit_body)  # base init and the cached state
            assert warm.status["status"] == "succeeded", warm.status
            engine.delete(f"/v1/instances/{warm.result['instance_id']}")
        for n in range(rounds):
            order = list(engines.items())
            for name, engine in order if n % 2 == 0 else reversed(order):  # ABBA
                holder: dict[str, Any] = {}
                times[f"hit_{name}"].append(
                    timed(lambda e=engine, h=holder: h.update(o=prepare(e, hit_body)))
                )
                outcome = holder["o"]
                assert outcome.status["tasks"][-2]["cached"] is True, outcome.status
                engine.delete(f"/v1/instances/{outcome.result['instance_id']}")
                miss = psql_body("-c", f"create table miss{n}(a int)")
                times[f"miss_{name}"].append(
                    timed(lambda e=engine, b=miss, h=holder: h.update(o=prepare(e, b)))
                )
                outcome = holder["o"]
                assert outcome.status["status"] == "succeeded", outcome.status
                engine.delete(
                    f"/v1/states/{outcome.result['state_id']}",
                    params={"recurse": "true", "force": "true"},
                )
        counts = {
            name: e.get("/v1/cache/status").json()["state_count"] for name, e in engines.items()
        }
    medians = {name: median(values) for name, values in times.items()}
    return {
        "other_states": states,
        "state_counts_after": counts,
        "median_s": medians,
        "hit_ratio_on_vs_off": medians["hit_on"] / medians["hit_off"],
        "miss_ratio_on_vs_off": medians["miss_on"] / medians["miss_off"],
        "samples_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="status,evict,hits")
    parser.add_argument("--states", type=int, default=10000)
    parser.add_argument("--victims", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    sections = set(args.only.split(","))
    figures: dict[str, Any] = {}
    if "status" in sections:
        figures["status"] = status = bench_status(args.states, args.samples)
        ms = {name: value * 1000 for name, value in status["median_s"].items()}
        p90 = {name: value * 1000 for name, value in status["p90_s"].items()}
        print(f"status ({args.states} states; engine start {status['engine_start_s']:.2f}s):")
        for name in ms:
            print(f"  {name:14} median {ms[name]:7.2f} ms  p90 {p90[name]:7.2f} ms")
        print(
            f"  ratio {args.states} states / 1 state: {status['ratio_vs_1_state']:.2f}x; "
            f"/ health: {status['ratio_vs_health']:.2f}x"
        )
    if "evict" in sections:
        figures["evict"] = evict = bench_evict(args.victims)
        print(
            f"evict: one pass over {evict['victims']} states ({evict['files_per_state']} files, "
            f"{evict['state_bytes']} bytes each): {evict['pass_s']:.2f}s "
            f"({evict['per_state_ms']:.1f} ms/state); rmtree of the same dirs "
            f"{evict['raw_rmtree_s']:.2f}s → {evict['ratio_vs_rmtree']:.2f}x"
        )
        print(
            f"  CPU: engine during the job {evict['engine_cpu_s']:.2f}s, rmtree "
            f"{evict['raw_rmtree_cpu_s']:.2f}s → {evict['cpu_ratio_vs_rmtree']:.2f}x"
        )
    if "hits" in sections:
        figures["hits"] = hits = bench_hits(min(args.states, 1000), args.rounds)
        ms = {name: value * 1000 for name, value in hits["median_s"].items()}
        print(f"prepare with enforcement on vs off ({hits['other_states']} other states):")
        print(
            f"  cache hit:     on {ms['hit_on']:.0f} ms, off {ms['hit_off']:.0f} ms → "
            f"{hits['hit_ratio_on_vs_off']:.3f}x"
        )
        print(
            f"  one-step miss: on {ms['miss_on']:.0f} ms, off {ms['miss_off']:.0f} ms → "
            f"{hits['miss_ratio_on_vs_off']:.3f}x"
        )
    print(f"raw numbers: {save('cache', figures)}")


if __name__ == "__main__":
    main()
