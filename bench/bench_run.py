"""Benchmark (not a test): what a run costs through the engine compared with psql alone.

Against one instance created by a prepare job, it alternates, `--runs` times:

- **engine**: `POST /v1/runs` with `{"kind": "psql", "args": ["-c", "select 1"]}` over a
  keep-alive HTTP connection, reading the NDJSON stream to its `exit` event (what the `sqlrs`
  CLI waits for); also the time to the `start` event (validation, instance lookup, the
  Instance actor's "is the server running" check);
- **direct**: `psql -c 'select 1' <dsn>` run by this script against the same instance;
- **http**: `GET /v1/health` on the same connection, the floor of any request (client library,
  Cheroot, Bottle, auth-free route).

Both run the same psql binary with the same arguments; the difference is the engine's share.
Medians (and 90th percentiles) are reported, with the ratio engine / direct of the medians,
the machine and the commit.

    .venv/bin/python bench/bench_run.py [--runs 200] [--warmup 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.dirs import make_scratch_dir, remove_scratch_dir  # noqa: E402
from tests.support.engine_process import EngineProcess, start_engine  # noqa: E402
from tests.support.prepare import prepare, psql_body  # noqa: E402

PSQL = "/usr/lib/postgresql/15/bin/psql"
SQL = "select 1"


@dataclass
class Summary:
    runs: int
    engine_median_ms: float
    engine_p90_ms: float
    engine_start_event_median_ms: float
    direct_median_ms: float
    direct_p90_ms: float
    http_median_ms: float
    ratio: float
    overhead_median_ms: float
    commit: str
    machine: str


def engine_run(engine: EngineProcess, instance_id: str) -> tuple[float, float]:
    """(seconds to the `start` event, seconds to the end of the stream) of one run."""
    body = {"instance_ref": instance_id, "kind": "psql", "args": ["-c", SQL]}
    started = time.perf_counter()
    to_start = 0.0
    with engine.post("/v1/runs", json=body, stream=True) as response:
        response.raise_for_status()
        last = None
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event["type"] == "start":
                to_start = time.perf_counter() - started
            last = event
    total = time.perf_counter() - started
    assert last is not None and last["type"] == "exit" and last["exit_code"] == 0, last
    return to_start, total


def direct_run(dsn: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([PSQL, "-c", SQL, dsn], capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    return elapsed


def health(engine: EngineProcess) -> float:
    started = time.perf_counter()
    engine.get("/v1/health").raise_for_status()
    return time.perf_counter() - started


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} CPUs, {system}"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    workdir = make_scratch_dir("sqlrs-bench-run-")
    engine = start_engine(workdir)
    try:
        outcome = prepare(engine, psql_body("-c", "create table bench(a int)"))
        assert outcome.status["status"] == "succeeded", outcome.status
        instance_id, dsn = outcome.result["instance_id"], outcome.dsn
        for _ in range(options.warmup):
            engine_run(engine, instance_id)
            direct_run(dsn)
        to_start: list[float] = []
        engine_times: list[float] = []
        direct_times: list[float] = []
        http_times: list[float] = []
        for _ in range(options.runs):  # alternate, so drift affects all sides alike
            first, total = engine_run(engine, instance_id)
            to_start.append(first)
            engine_times.append(total)
            direct_times.append(direct_run(dsn))
            http_times.append(health(engine))
    finally:
        engine.stop()
        remove_scratch_dir(workdir)

    ms = 1000.0
    summary = Summary(
        runs=options.runs,
        engine_median_ms=statistics.median(engine_times) * ms,
        engine_p90_ms=p90(engine_times) * ms,
        engine_start_event_median_ms=statistics.median(to_start) * ms,
        direct_median_ms=statistics.median(direct_times) * ms,
        direct_p90_ms=p90(direct_times) * ms,
        http_median_ms=statistics.median(http_times) * ms,
        ratio=statistics.median(engine_times) / statistics.median(direct_times),
        overhead_median_ms=(statistics.median(engine_times) - statistics.median(direct_times)) * ms,
        commit=commit(),
        machine=machine(),
    )
    print(f"run:psql -c '{SQL}', {summary.runs} runs each, medians (p90)")
    print(f"  engine  {summary.engine_median_ms:7.2f} ms ({summary.engine_p90_ms:.2f})")
    print(f"  start   {summary.engine_start_event_median_ms:7.2f} ms (to the start event)")
    print(f"  direct  {summary.direct_median_ms:7.2f} ms ({summary.direct_p90_ms:.2f})")
    print(f"  http    {summary.http_median_ms:7.2f} ms (GET /v1/health)")
    print(f"  ratio   {summary.ratio:7.2f} (engine / direct)")
    print(f"  commit {summary.commit}; {summary.machine}")
    if options.json:
        options.json.write_text(json.dumps(asdict(summary), indent=2) + "\n")


if __name__ == "__main__":
    main()
