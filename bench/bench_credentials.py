"""Cost of per-instance credentials on a cache hit (issue 10): before vs after, same run.

Two engines run side by side on this machine, each with its own fresh store and the same
state cached: "before" is the engine source of a git revision without per-instance
credentials (default `main`'s merge base with HEAD; exported with `git archive` into a
scratch dir and put first on PYTHONPATH), "after" is the working tree. Cache-hit prepares
(POST → status succeeded with a DSN) alternate between them, so machine noise hits both
alike; every instance is deleted again (not timed). Prints medians and the ratios, of the
wall clock and of the engine's own share (the job's `queued` → `result` event timestamps,
which the client's polling and the machine's other load disturb less).

Run: .venv/bin/python bench/bench_credentials.py [--hits 30] [--before REV] [--backend copy]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, median, save, timed  # type: ignore[import-not-found]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--before", default=None, help="git revision (default: merge-base main)")
    parser.add_argument("--backend", default="copy")
    args = parser.parse_args()
    before_rev = (
        args.before
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    source = export_source(before_rev)
    dirs = [make_scratch_dir("sqlrs-bench-"), make_scratch_dir("sqlrs-bench-")]
    engines: list[EngineProcess] = []
    try:
        engines = [start(dirs[0], args.backend, source), start(dirs[1], args.backend, None)]
        for engine in engines:
            assert prepare(engine, BODY).status["status"] == "succeeded"
            for _ in range(args.warmup):
                hit(engine)
        samples: dict[str, list[float]] = {k: [] for k in KEYS}
        for _ in range(args.hits):
            for name, engine in zip(("before", "after"), engines, strict=True):
                wall, inside = hit(engine)
                samples[name].append(wall)
                samples[f"{name}_engine"].append(inside)
    finally:
        for engine in engines:
            engine.stop()
        for directory in dirs:
            remove_scratch_dir(directory)
        subprocess.run(["rm", "-rf", str(source.parent)], check=False)
    m = {k: median(v) for k, v in samples.items()}
    figures = {
        "backend": args.backend,
        "before_revision": before_rev,
        "medians_s": m,
        "after_vs_before_ratio": m["after"] / m["before"],
        "after_vs_before_engine_ratio": m["after_engine"] / m["before_engine"],
        "samples": samples,
    }
    path = save("credentials", figures)
    print(f"cache hit → DSN, {args.backend} backend, {args.hits} alternating pairs (medians)")
    print(f"  {'':34} {'wall clock':>12} {'in the engine':>14}")
    for name, label in (("before", f"before ({before_rev[:10]})"), ("after", "after (SCRAM)")):
        print(f"  {label:34} {m[name] * 1000:10.1f}ms {m[name + '_engine'] * 1000:12.1f}ms")
    print(
        f"  ratio after / before: wall clock {figures['after_vs_before_ratio']:.3f}, "
        f"in the engine {figures['after_vs_before_engine_ratio']:.3f}"
    )
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
