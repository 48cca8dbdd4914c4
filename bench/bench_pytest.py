"""Benchmark (not a test): the example pytest suite with the sqlrs plugin vs the
pytest-postgresql way, in the same run.

- **sqlrs**: `examples/pytest` as is: the `sqlrs_database` fixture, a fresh instance per test
  from the engine's cached state (the engine is started by the first run, in a scratch state
  dir, and its state is built by that first run: reported separately as "cold").
- **baseline**: the same test files with `pytest_compare/baseline_conftest.py` as conftest:
  initdb + start + load schema.sql into a template per pytest process, then per test
  `CREATE DATABASE … TEMPLATE` and `DROP DATABASE` (what pytest-postgresql does).

Each round runs both, alternating, sequentially (`-p no:xdist`) and with `-n 4`; wall time of
the whole `pytest` process. The per-test fixture overhead is the `db` fixture's setup plus the
test's teardown phase, measured inside pytest by `pytest_compare/fixture_timing.py`; medians.

    .venv/bin/python bench/bench_pytest.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, machine, save
from tests.support.dirs import make_scratch_dir, remove_scratch_dir

from sqlrs_engine.client.locate import read_engine_json
from sqlrs_engine.runtime import procs

EXAMPLE = ROOT / "examples" / "pytest"
COMPARE = ROOT / "bench" / "pytest_compare"
MODES = {"sequential": ["-p", "no:xdist"], "xdist -n 4": ["-n", "4"]}


def run_suite(project: Path, env: dict[str, str], mode: list[str], timings: Path) -> float:
    timings.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "fixture_timing",
            "-q",
            *mode,
        ],
        cwd=project,
        env={**env, "FIXTURE_TIMINGS": str(timings)},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"suite failed in {project}:\n{done.stdout}\n{done.stderr}")
    return wall


def per_test(timings: Path) -> list[float]:
    rows = [json.loads(line) for line in timings.read_text().splitlines() if line]
    return [row["setup"] + row["teardown"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    scratch = make_scratch_dir("sqlrs-bench-")
    state_home = scratch / "state"
    projects = {"sqlrs": scratch / "sqlrs", "baseline": scratch / "baseline"}
    for project in projects.values():
        shutil.copytree(EXAMPLE, project)
    shutil.copy(COMPARE / "baseline_conftest.py", projects["baseline"] / "conftest.py")
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.update(
        XDG_STATE_HOME=str(state_home),
        PYTHONPATH=os.pathsep.join([str(COMPARE), env.get("PYTHONPATH", "")]),
        BASELINE_DIR=str(scratch),
    )
    timings = scratch / "timings.jsonl"
    walls: dict[str, dict[str, list[float]]] = {
        mode: {name: [] for name in projects} for mode in MODES
    }
    fixture: dict[str, dict[str, list[float]]] = {
        mode: {name: [] for name in projects} for mode in MODES
    }
    try:
        cold = run_suite(projects["sqlrs"], env, MODES["sequential"], timings)
        for _ in range(options.rounds):
            for mode, flags in MODES.items():
                for name, project in projects.items():
                    walls[mode][name].append(run_suite(project, env, flags, timings))
                    fixture[mode][name] += per_test(timings)
    finally:
        info = read_engine_json(state_home / "sqlrs" / "engine.json")
        if info is not None and procs.is_alive(info.pid):
            os.kill(info.pid, signal.SIGTERM)
            procs.wait_dead([info.pid], 30)
        remove_scratch_dir(scratch)

    summary: dict[str, Any] = {"rounds": options.rounds, "cold_sqlrs_sequential_s": cold}
    print(f"sqlrs cold run (engine start + state build), sequential: {cold:.2f} s")
    print(
        "| mode | sqlrs suite | baseline suite | baseline / sqlrs | sqlrs fixture/test "
        "| baseline fixture/test |"
    )
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        ours = statistics.median(walls[mode]["sqlrs"])
        theirs = statistics.median(walls[mode]["baseline"])
        ours_fixture = statistics.median(fixture[mode]["sqlrs"]) * 1000
        theirs_fixture = statistics.median(fixture[mode]["baseline"]) * 1000
        summary[mode] = {
            "walls_s": walls[mode],
            "median_wall_s": {"sqlrs": ours, "baseline": theirs},
            "median_fixture_ms": {"sqlrs": ours_fixture, "baseline": theirs_fixture},
            "fixture_samples": {name: len(values) for name, values in fixture[mode].items()},
        }
        print(
            f"| {mode} | {ours:.2f} s | {theirs:.2f} s | {theirs / ours:.2f} "
            f"| {ours_fixture:.0f} ms | {theirs_fixture:.0f} ms |"
        )
    print(json.dumps(machine()))
    print(f"raw numbers: {save('pytest', summary)}")


if __name__ == "__main__":
    main()
