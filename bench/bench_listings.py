"""Big listings, before and after a change, side by side (issue #12).

Two engines run at once, each on its own store seeded with the same 10 000 states and
10 000 finished jobs (20 000 tasks): "before" is the engine source of a revision (default
`main`; exported with `git archive` and put first on PYTHONPATH), "after" the working tree.
Every round lists each endpoint in both shapes on both engines, alternating which engine goes
first, so both see the same machine load; medians of time to first byte and total, their
ratio after / before, and each engine's peak RSS over the rounds (`VmHWM`, reset first).

Run: .venv/bin/python bench/bench_listings.py [--before REV] [--rows 10000] [--rounds 15]
Prints a table and writes bench/results/listings-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_credentials import export_source
from bench_volume import peak_rss, seed_jobs, seed_states, ttfb_and_total
from common import ROOT, median, rss_bytes, save
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine

LISTS = (
    ("states", "/v1/states"),
    ("jobs", "/v1/prepare-jobs"),
    ("tasks", "/v1/tasks"),
)
SHAPES = (("json", "application/json"), ("ndjson", "application/x-ndjson"))


def seed(store: Path, rows: int, pythonpath: Path | None) -> None:
    """Seed with the engine source that will open the store (its schema version)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    subprocess.run(
        [sys.executable, __file__, "--seed", str(store), "--rows", str(rows)], env=env, check=True
    )


def start(rows: int, pythonpath: Path | None) -> tuple[Path, EngineProcess]:
    workdir = make_scratch_dir("sqlrs-bench-")
    seed(workdir / "state-store", rows, pythonpath)
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath is not None else None
    return workdir, start_engine(workdir, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        seed_states(Path(args.seed), args.rows)
        seed_jobs(Path(args.seed), args.rows)
        return

    before_src = export_source(args.before)
    engines: dict[str, tuple[Path, EngineProcess]] = {}
    try:
        engines["before"] = start(args.rows, before_src)
        engines["after"] = start(args.rows, None)
        for _, engine in engines.values():  # warm-up: code paths, caches, worker threads
            for _, path in LISTS:
                for _, accept in SHAPES:
                    ttfb_and_total(engine, accept, path)
        samples: dict[str, list[tuple[float, float, int]]] = {}
        rss_before = {}
        for side, (_, engine) in engines.items():
            Path(f"/proc/{engine.process.pid}/clear_refs").write_text("5")
            rss_before[side] = rss_bytes(engine.process.pid)
        for round_ in range(args.rounds):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for name, path in LISTS:
                for shape, accept in SHAPES:
                    for side in order:
                        key = f"{side}_{name}_{shape}"
                        engine = engines[side][1]
                        samples.setdefault(key, []).append(ttfb_and_total(engine, accept, path))
        figures: dict[str, Any] = {"rows": args.rows, "rounds": args.rounds}
        figures["before"] = args.before
        for name, _ in LISTS:
            for shape, _ in SHAPES:
                for side in ("before", "after"):
                    runs = samples[f"{side}_{name}_{shape}"]
                    figures[f"{side}_{name}_{shape}_ttfb_ms"] = median([r[0] for r in runs]) * 1e3
                    figures[f"{side}_{name}_{shape}_total_ms"] = median([r[1] for r in runs]) * 1e3
                    figures[f"{side}_{name}_{shape}_bytes"] = runs[0][2]
                figures[f"ratio_{name}_{shape}_total"] = (
                    figures[f"after_{name}_{shape}_total_ms"]
                    / figures[f"before_{name}_{shape}_total_ms"]
                )
        for side, (_, engine) in engines.items():
            figures[f"{side}_rss_before_bytes"] = rss_before[side]
            figures[f"{side}_rss_peak_bytes"] = peak_rss(engine.process.pid)
            figures[f"{side}_rss_after_bytes"] = rss_bytes(engine.process.pid)
        figures["load_average"] = os.getloadavg()
    finally:
        for workdir, engine in engines.values():
            engine.stop()
            remove_scratch_dir(workdir)
        shutil.rmtree(before_src.parent, ignore_errors=True)
    path = save("listings", figures)
    for key, value in figures.items():
        print(f"  {key:36} {value:.3f}" if isinstance(value, float) else f"  {key:36} {value}")
    print(f"raw numbers: {path} (root {ROOT})")


if __name__ == "__main__":
    main()
