"""The pooled burst, A/B: two engines (two checkouts, or two configs), in one run.

The burst of 16 pooled hits (`bench_pool.py`) swings by ±25 % from run to run on these
shared 2-core machines, more than most changes to it are worth. This runs the same burst on
two engines at once — A from a baseline checkout (its venv's python, e.g. `main` before a
change; this tree's by default), B from this tree, each with its config overrides (to compare
a setting: `--a-config '{"engine": {"pinThreads": false}}'`) — each with its own store and a
pool of 16 ready members of the same ~58 MB state, alternating A and B (ABBA order) round
after round, so both see the same machine. Reported: each engine's rates, their medians, and
the median of the per-round ratios B/A.

Run (as root, overlay needs it):
    .venv/bin/python bench/bench_pool_ab.py [--baseline-python /path/to/main/.venv/bin/python]
        [--a-config JSON] [--b-config JSON] [--rounds 9] [--burst-size 16]

The baseline's venv must have its checkout installed (as `scripts/bootstrap` does). Raw
numbers go to bench/results/pool-ab-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import build_args
from bench_pool import (
    SETTLE_S,
    burst,
    burst_pool,
    configure,
    state_without_instances,
    uptime,
    wait_pool,
    wait_pool_for,
)
from common import save
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import psql_body


def start(workdir: Path, python: str, config: dict[str, Any]) -> EngineProcess:
    """An engine run by `python` (its venv decides which code), on its own overlay store
    with `config` (read at startup) on top."""
    workdir.mkdir()
    store = workdir / "store"
    store.mkdir()
    (store / "config.json").write_text(json.dumps({"snapshot": {"backend": "overlay"}, **config}))
    return start_engine(workdir, state_store=store, python=python)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline-python", default=sys.executable, help="python of the A checkout (this one)"
    )
    parser.add_argument("--a-config", type=json.loads, default={}, help="A's config (JSON)")
    parser.add_argument("--b-config", type=json.loads, default={}, help="B's config (JSON)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--burst-size", type=int, default=16)
    args = parser.parse_args()
    size = args.burst_size
    data: dict[str, Any] = {
        "load_before": uptime(),
        "baseline_python": args.baseline_python,
        "a_config": args.a_config,
        "b_config": args.b_config,
    }
    print(f"load: {data['load_before']}", flush=True)
    workdir = make_scratch_dir("sqlrs-bench-pool-ab-")
    engines: dict[str, EngineProcess] = {}
    try:
        engines["A"] = start(workdir / "a", args.baseline_python, args.a_config)
        engines["B"] = start(workdir / "b", sys.executable, args.b_config)
        body = psql_body(*build_args(58))
        states: dict[str, str] = {}
        for name, engine in engines.items():
            states[name] = state_without_instances(engine, body)
            configure(engine, **burst_pool(size), shortPath=True)
            wait_pool_for(engine, body, states[name], [])
        rates: dict[str, list[float]] = {"A": [], "B": []}
        for round_number in range(args.rounds):
            for name in ("A", "B") if round_number % 2 == 0 else ("B", "A"):
                wait_pool(engines[name], states[name], size)
                time.sleep(SETTLE_S)
                elapsed, taken = burst(engines[name], body, size)
                assert taken == size, f"engine {name}: only {taken} of {size} hits took a member"
                rates[name].append(size / elapsed)
            a, b = rates["A"][-1], rates["B"][-1]
            print(f"round {round_number}: A {a:.1f}/s, B {b:.1f}/s, B/A {b / a:.2f}", flush=True)
    finally:
        for engine in engines.values():
            engine.stop()
        remove_scratch_dir(workdir)
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    data.update(
        size=size,
        a_instances_per_s=rates["A"],
        b_instances_per_s=rates["B"],
        medians={
            "a_instances_per_s": statistics.median(rates["A"]),
            "b_instances_per_s": statistics.median(rates["B"]),
            "b_over_a": statistics.median(ratios),
        },
        load_after=uptime(),
    )
    med = data["medians"]
    print(
        f"burst of {size}: A {med['a_instances_per_s']:.1f}/s, B {med['b_instances_per_s']:.1f}/s,"
        f" B/A {med['b_over_a']:.2f} (median of per-round ratios)"
    )
    print(f"load: {data['load_after']}")
    print(f"raw numbers: {save('pool-ab', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
