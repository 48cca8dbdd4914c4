"""Benchmark (not a test): a cache-hit prepare on each snapshot backend, at two database sizes.

For every backend variant and database size it measures, over `--runs` cache hits:

- **hit → DSN**: from submitting a prepare whose every step is cached to the moment its result
  (a DSN the server accepts connections on) is available, as the `sqlrs` CLI sees it;
- **disk per instance**: what the new instance's clone occupies on disk right after that
  (overlay: blocks of its upper dir; btrfs and reflink copies: extents it does not share with
  the state, via FIEMAP; plain copy: blocks of the whole clone);
- **first scan**: one `select count(*)` over the big table on the new instance, the first
  access to it (on overlay this is where the table is copied up);

plus the **bare start** cost: the host runtime starting a server on a cleanly stopped data dir
(`pg_ctl start -w` + the `select 1` readiness probe) and stopping it, with no engine around.

Medians are reported. Variants: `copy` (ext4), `copy-reflink` (copy backend on btrfs, so
`cp --reflink=auto` shares extents), `overlay` (ext4), `btrfs` (loop-mounted btrfs). Needs root
(overlay, loop devices) and btrfs-progs.

    .venv/bin/python bench/bench_backends.py [--runs 5] [--sizes 50,1024] [--variants …]

Raw numbers go to bench/results/backends-<timestamp>.json with the machine and commit
(`common.save`). Takes about 8 minutes with the defaults (the 1 GB builds dominate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, save
from tests.snapshot import btrfs_loop
from tests.support.dirs import make_scratch_dir, remove_scratch_dir
from tests.support.engine_process import EngineProcess, start_engine
from tests.support.prepare import prepare, psql_body, query

from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.runtime.host import HostRuntime
from sqlrs_engine.snapshot.extents import added_bytes

ROW_BYTES = 300
"""Approximate on-disk bytes per row of the benchmark table (int + 256-char text + header)."""


@dataclass
class Result:
    state_id: str
    image_id: str
    variant: str
    backend: str
    target_mb: int
    db_bytes: int
    build_s: float
    hit_s: float
    hit_all_s: list[float]
    disk_bytes: int
    scan_s: float
    disk_after_scan_bytes: int


def build_args(target_mb: int) -> list[str]:
    """Two steps: load the table, then freeze it (sets hint bits once, in the state, so that
    reads on a clone do not dirty every page; see docs/snapshots.md)."""
    rows = target_mb * 1024 * 1024 // ROW_BYTES
    return [
        "-c",
        "create table big as select g as id, repeat(md5(g::text), 8) as payload "
        f"from generate_series(1, {rows}) g",
        "-c",
        "vacuum (freeze, analyze) big",
    ]


def allocated(path: Path) -> int:
    """Bytes of disk blocks used by the files under `path` (like `du -s --block-size=1`)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def kill_instance(data_dir: Path) -> None:
    """Stop an instance's server (the engine has no delete yet): keep the machine quiet."""
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


class Variant:
    def __init__(self, name: str, config: str, on_btrfs: bool) -> None:
        self.name = name
        self.config = config
        self.on_btrfs = on_btrfs
        self.workdir = make_scratch_dir("sqlrs-bench-")
        self.fs: btrfs_loop.LoopBtrfs | None = None
        if on_btrfs:
            self.fs = btrfs_loop.make_loop_btrfs("8G")
            self.store = self.fs.mount_point / "store"
        else:
            self.store = self.workdir / "store"
        self.store.mkdir()
        (self.store / "config.json").write_text(json.dumps({"snapshot": {"backend": config}}))
        self.engine: EngineProcess = start_engine(self.workdir, state_store=self.store)
        self.kind = "overlayfs" if config == "overlay" else config

    def data_dir(self, job_id: str) -> Path:
        runtime = self.store / "jobs" / job_id / "runtime"
        return runtime / "merged" if self.kind == "overlayfs" else runtime

    def state_dir(self, state_id: str) -> Path:
        (found,) = self.store.glob(f"engines/postgres/*/states/{state_id}")
        return found

    def instance_disk(self, job_id: str, state_id: str) -> int:
        runtime = self.store / "jobs" / job_id / "runtime"
        if self.kind == "overlayfs":
            return allocated(runtime / "upper")
        if self.on_btrfs:
            return added_bytes(runtime, self.state_dir(state_id))
        return allocated(runtime)

    def close(self) -> None:
        self.engine.stop()
        if self.fs is not None:
            btrfs_loop.remove_loop_btrfs(self.fs)
        remove_scratch_dir(self.workdir)


def measure(variant: Variant, target_mb: int, runs: int, log: Callable[[str], None]) -> Result:
    body = psql_body(*build_args(target_mb))
    started = time.monotonic()
    built = prepare(variant.engine, body)
    build_s = time.monotonic() - started
    assert built.status["status"] == "succeeded", built.status
    state_id = built.result["state_id"]
    db_bytes = int(query(built.dsn, "select pg_database_size(current_database())"))
    kill_instance(variant.data_dir(built.job_id))
    log(f"{variant.name} {target_mb} MB: built {db_bytes / 2**20:.0f} MB in {build_s:.1f}s")
    hits: list[float] = []
    disks: list[int] = []
    scans: list[float] = []
    after: list[int] = []
    for _ in range(runs):
        started = time.monotonic()
        hit = prepare(variant.engine, body)
        hits.append(time.monotonic() - started)
        assert hit.status["status"] == "succeeded", hit.status
        assert all(t["cached"] for t in hit.status["tasks"] if t["type"] == "state_execute")
        disks.append(variant.instance_disk(hit.job_id, state_id))
        started = time.monotonic()
        query(hit.dsn, "select count(*) from big")
        scans.append(time.monotonic() - started)
        after.append(variant.instance_disk(hit.job_id, state_id))
        kill_instance(variant.data_dir(hit.job_id))
    log(f"  hits {[round(h, 3) for h in hits]}  disk {[d // 1024 for d in disks]} KiB")
    return Result(
        state_id=state_id,
        image_id=built.result["image_id"],
        variant=variant.name,
        backend=variant.kind,
        target_mb=target_mb,
        db_bytes=db_bytes,
        build_s=build_s,
        hit_s=statistics.median(hits),
        hit_all_s=hits,
        disk_bytes=int(statistics.median(disks)),
        scan_s=statistics.median(scans),
        disk_after_scan_bytes=int(statistics.median(after)),
    )


def bare_start(source: Path, image_id: str, runs: int) -> list[float]:
    """Start/stop the host runtime's server on a plain copy of a state, `runs` times."""
    workdir = make_scratch_dir("sqlrs-bench-bare-")
    try:
        data_dir = workdir / "data"
        subprocess.run(["cp", "-a", str(source), str(data_dir)], check=True)
        for name in (".build.ok", ".build.lock"):
            (data_dir / name).unlink(missing_ok=True)
        runtime = HostRuntime()
        runtime.prepare_data_dir(data_dir)
        times = []
        for _ in range(runs):
            started = time.monotonic()
            handle = runtime.start(image_id, data_dir, lambda line: None, NEVER_CANCELLED)
            times.append(time.monotonic() - started)
            runtime.stop(handle, lambda line: None)
        return times
    finally:
        remove_scratch_dir(workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="50,1024", help="database sizes in MB")
    parser.add_argument("--variants", default="copy,copy-reflink,overlay,btrfs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (overlay mounts, loop devices)", file=sys.stderr)
        return 2
    reason = btrfs_loop.unavailable()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    sizes = [int(s) for s in args.sizes.split(",")]
    specs = {
        "copy": ("copy", False),
        "copy-reflink": ("copy", True),
        "overlay": ("overlay", False),
        "btrfs": ("btrfs", True),
    }
    results: list[Result] = []
    bare: dict[int, list[float]] = {}
    for name in args.variants.split(","):
        config, on_btrfs = specs[name]
        variant = Variant(name, config, on_btrfs)
        try:
            for size in sizes:
                result = measure(variant, size, args.runs, log)
                results.append(result)
                if name == "copy" and size not in bare:
                    state = variant.state_dir(result.state_id)
                    bare[size] = bare_start(state, result.image_id, args.runs)
                    log(f"bare start {size} MB: {[round(t, 3) for t in bare[size]]}")
        finally:
            variant.close()

    bare_all = [t for times in bare.values() for t in times]
    bare_median = statistics.median(bare_all) if bare_all else float("nan")
    print(f"bare server start (host runtime, pg_ctl start -w + select 1): {bare_median:.3f} s")
    for size, times in sorted(bare.items()):
        print(f"  on the {size} MB state: median {statistics.median(times):.3f} s")
    print()
    print(
        "| variant | backend | DB size | hit → DSN (median) | vs bare start | disk per instance "
        "| first full scan | disk after scan |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.variant} | {r.backend} | {r.db_bytes / 2**20:.0f} MB | {r.hit_s:.3f} s "
            f"| {r.hit_s / bare_median:.2f} | {r.disk_bytes / 2**20:.1f} MB | {r.scan_s:.3f} s "
            f"| {r.disk_after_scan_bytes / 2**20:.1f} MB |"
        )
    print()
    info = machine()
    load = os.getloadavg()
    print(f"commit {info['commit']}, kernel {info['kernel']}, {info['cpus']} CPUs, load {load}")
    path = save(
        "backends",
        {"load": load, "bare_start_s": bare, "results": [asdict(r) for r in results]},
    )
    print(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
