"""Cost of per-instance credentials on a cache hit (issue 10): before vs after, same run.

Two engines run side by side on this machine, each with its own fresh store and the same
state cached: "before" is the engine source of a git revision without per-instance
credentials (`--before`, default feb674b: the parent of 69dce6e, the commit that added them),
"after" the working tree or `--after REV` (`--after 69dce6e` isolates that one commit); each
revision is exported with `git archive` into a scratch dir and put first on PYTHONPATH.
Every instance is deleted again (not timed).

The machine is shared, and its load moves the absolute times by a factor of 3 within minutes,
so the comparison is *paired*: each pair is one hit on each engine back to back, in an order
that alternates (ABBA…), so drift and order effects hit both arms alike. Reported: per arm
the median and the interquartile range; the median of the per-pair ratios after / before
and the ratio of the medians, each with a 95 % bootstrap confidence interval (pairs
resampled, 10 000 rounds, fixed seed). An interval that holds 1 (and is narrow) is a
conclusive "no measurable cost"; one entirely above 1 is a measured cost. Both for the wall
clock (POST → status succeeded with a DSN) and for the engine's own share (the job's
`queued` → `result` event timestamps, which the client's polling disturbs less). The load
average is recorded before and after.

Run: .venv/bin/python bench/bench_credentials.py [--pairs 120] [--before REV] [--after REV]
     [--backend copy]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, machine, median, save, timed  # type: ignore[import-not-found]
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import prepare, psql_body

from sqlrs_engine.clock import parse_rfc3339

KEYS = ("before", "after", "before_engine", "after_engine")
BODY = psql_body("-c", "create table t as select g from generate_series(1, 1000) g")


def export_source(revision: str) -> Path:
    """`src/` of `revision` in a scratch dir (the engine package only)."""
    target = Path(tempfile.mkdtemp(prefix="sqlrs-before-", dir="/var/tmp"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def start(workdir: Path, backend: str, pythonpath: Path | None) -> EngineProcess:
    store = workdir / "state-store"
    store.mkdir(mode=0o700)
    (store / "config.json").write_text(f'{{"snapshot": {{"backend": "{backend}"}}}}')
    env = {"PYTHONPATH": str(pythonpath)} if pythonpath is not None else None
    return start_engine(workdir, env=env)


def hit(engine: EngineProcess) -> tuple[float, float]:
    """(wall-clock seconds of POST → succeeded status with DSN, the engine's own share:
    from the job's `queued` event to its `result` event, by the engine's timestamps)."""
    holder: dict[str, object] = {}
    seconds = timed(lambda: holder.update(o=prepare(engine, BODY)))
    outcome = holder["o"]
    events = outcome.events  # type: ignore[attr-defined]
    inside = (parse_rfc3339(events[-1]["ts"]) - parse_rfc3339(events[0]["ts"])).total_seconds()
    assert outcome.status["status"] == "succeeded", outcome.status  # type: ignore[attr-defined]
    assert all(t["cached"] for t in outcome.status["tasks"] if t["type"] == "state_execute")  # type: ignore[attr-defined]
    instance = outcome.result["instance_id"]  # type: ignore[attr-defined]
    assert engine.delete(f"/v1/instances/{instance}", params={"force": "true"}).ok
    return seconds, inside


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def bootstrap(
    before: list[float], after: list[float], rounds: int = 10_000, seed: int = 10
) -> dict[str, tuple[float, float]]:
    """95 % intervals of the median paired ratio and of the ratio of medians (pairs resampled)."""
    rng = random.Random(seed)
    n = len(before)
    paired: list[float] = []
    of_medians: list[float] = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        b = [before[i] for i in picks]
        a = [after[i] for i in picks]
        paired.append(statistics.median(x / y for x, y in zip(a, b, strict=True)))
        of_medians.append(statistics.median(a) / statistics.median(b))

    def interval(values: list[float]) -> tuple[float, float]:
        values.sort()
        return values[int(0.025 * rounds)], values[int(0.975 * rounds) - 1]

    return {"median_paired_ratio": interval(paired), "ratio_of_medians": interval(of_medians)}


def summary(before: list[float], after: list[float]) -> dict[str, Any]:
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    return {
        "before_median_ms": median(before) * 1000,
        "before_iqr_ms": [q * 1000 for q in quartiles(before)],
        "after_median_ms": median(after) * 1000,
        "after_iqr_ms": [q * 1000 for q in quartiles(after)],
        "median_paired_ratio": median(ratios),
        "paired_ratio_iqr": list(quartiles(ratios)),
        "ratio_of_medians": median(after) / median(before),
        "ci95": bootstrap(before, after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--before", default="feb674b", help="git revision without credentials")
    parser.add_argument(
        "--after",
        default=None,
        help="git revision with them (default: the working tree); 69dce6e alone is the change",
    )
    parser.add_argument("--backend", default="copy")
    args = parser.parse_args()
    before_rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", args.before],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = export_source(before_rev)
    after_source = export_source(args.after) if args.after else None
    after_label = args.after or machine()["commit"]
    dirs = [make_scratch_dir("sqlrs-bench-"), make_scratch_dir("sqlrs-bench-")]
    engines: list[EngineProcess] = []
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = {k: [] for k in KEYS}
    try:
        engines = [
            start(dirs[0], args.backend, source),
            start(dirs[1], args.backend, after_source),
        ]
        arms = list(zip(("before", "after"), engines, strict=True))
        for engine in engines:
            assert prepare(engine, BODY).status["status"] == "succeeded"
            for _ in range(args.warmup):
                hit(engine)
        for index in range(args.pairs):
            for name, engine in arms if index % 2 == 0 else arms[::-1]:  # ABBA…
                wall, inside = hit(engine)
                samples[name].append(wall)
                samples[f"{name}_engine"].append(inside)
    finally:
        for engine in engines:
            engine.stop()
        for directory in dirs:
            remove_scratch_dir(directory)
        for exported in (source, after_source):
            if exported is not None:
                subprocess.run(["rm", "-rf", str(exported.parent)], check=False)
    load_after = os.getloadavg()
    wall = summary(samples["before"], samples["after"])
    engine_side = summary(samples["before_engine"], samples["after_engine"])
    figures = {
        "backend": args.backend,
        "before_revision": before_rev,
        "after_revision": after_label,
        "pairs": args.pairs,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "wall_clock": wall,
        "in_the_engine": engine_side,
        "samples": samples,
    }
    path = save("credentials", figures)
    print(
        f"cache hit → DSN, {args.backend} backend, {args.pairs} pairs (ABBA), "
        f"before = {before_rev[:10]}, after = {after_label}"
    )
    print(f"load average before {load_before}, after {load_after}")
    for label, figure in (("wall clock", wall), ("in the engine", engine_side)):
        ci = figure["ci95"]
        low, high = figure["before_iqr_ms"]
        a_low, a_high = figure["after_iqr_ms"]
        print(
            f"  {label:14} before {figure['before_median_ms']:.1f} ms (IQR {low:.1f}..{high:.1f}), "
            f"after {figure['after_median_ms']:.1f} ms (IQR {a_low:.1f}..{a_high:.1f})"
        )
        print(
            f"  {'':14} median paired ratio {figure['median_paired_ratio']:.3f} "
            f"[95% CI {ci['median_paired_ratio'][0]:.3f}..{ci['median_paired_ratio'][1]:.3f}], "
            f"ratio of medians {figure['ratio_of_medians']:.3f} "
            f"[{ci['ratio_of_medians'][0]:.3f}..{ci['ratio_of_medians'][1]:.3f}]"
        )
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
