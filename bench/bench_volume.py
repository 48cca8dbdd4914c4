"""Load benchmark (issue #12): many streams, heavy output, big listings, idle footprint.

Sections (all by default; pick with --only):
  inserts   a 100 000-statement insert script: engine prepare vs `psql -f` on a started server
  output    a prepare printing 250 000 lines: time, peak engine RSS, state.db growth
  streams   /v1/health latency with 0 and with 1 000 open event streams (same engine)
  listings  GET /v1/states with 10 000 states, JSON and NDJSON: TTFB and total; RSS after 200;
            GET /v1/prepare-jobs and /v1/tasks with 10 000 jobs (20 000 tasks): the same, and
            the engine's peak RSS while listing them
  idle      engine RSS and threads idle, and with 50 instances

Run: .venv/bin/python bench/bench_volume.py [--only inserts,output,...] [--repeat N]
Prints a table and writes bench/results/volume-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import engine_in_scratch, median, rss_bytes, save, timed
from tests.support.engine_process import EngineProcess
from tests.support.prepare import PSQL, prepare, psql_body, submit, wait_for_running_step
from tests.support.seed import Seeder

BIN = Path(PSQL).parent


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def db_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.glob("state.db*") if p.is_file())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- inserts -------------------------------------------------------------------------------


def insert_script(directory: Path, statements: int) -> Path:
    path = directory / f"inserts-{uuid.uuid4().hex}.sql"
    with path.open("w") as out:
        out.write(f"-- {path.name}\ncreate table t (n int);\n")
        for n in range(statements):
            out.write(f"insert into t values ({n});\n")
    path.chmod(0o644)
    return path


class StartedServer:
    """initdb + start once, as the server user, with the engine's initdb flags."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="sqlrs-raw-", dir="/var/tmp"))
        self.work.chmod(0o711)
        self.pgdata = self.work / "pgdata"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        user = pwd.getpwnam("postgres")
        os.chown(self.work, user.pw_uid, user.pw_gid)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        initdb = [str(BIN / "initdb"), "-D", str(self.pgdata), "--username=sqlrs"]
        initdb += ["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8"]
        subprocess.run([*self.as_user, *initdb], check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories="
        subprocess.run(
            [
                *self.as_user,
                *(str(BIN / "pg_ctl"), "-D", str(self.pgdata), "-w", "-l", str(self.work / "log")),
                *("-o", options + str(self.work), "start"),
            ],
            check=True,
            capture_output=True,
        )

    def psql_f(self, script: Path) -> float:
        database = f"db{uuid.uuid4().hex[:8]}"
        dsn = f"postgres://sqlrs@127.0.0.1:{self.port}"
        subprocess.run(
            [PSQL, "-X", "-c", f"create database {database}", f"{dsn}/postgres"],
            check=True,
            capture_output=True,
        )
        return timed(
            lambda: subprocess.run(
                [PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(script), f"{dsn}/{database}"],
                check=True,
                capture_output=True,
            )
        )

    def close(self) -> None:
        subprocess.run(
            [*self.as_user, str(BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.work, ignore_errors=True)


def bench_inserts(repeat: int, statements: int) -> dict[str, Any]:
    scripts = Path(tempfile.mkdtemp(prefix="sqlrs-scripts-", dir="/var/tmp"))
    scripts.chmod(0o755)
    server = StartedServer()
    engine_times: list[float] = []
    raw_times: list[float] = []
    try:
        with engine_in_scratch() as engine:
            prepare(engine, psql_body("-c", "select 1"))  # the base exists: warm, like CI
            for _ in range(repeat):
                raw_times.append(server.psql_f(insert_script(scripts, statements)))
                script = insert_script(scripts, statements)
                body = psql_body("-f", str(script))
                holder: dict[str, Any] = {}
                engine_times.append(timed(lambda b=body, h=holder: h.update(o=prepare(engine, b))))
                assert holder["o"].status["status"] == "succeeded", holder["o"].status
    finally:
        server.close()
        shutil.rmtree(scripts, ignore_errors=True)
    return {
        "statements": statements,
        "engine_prepare_s": engine_times,
        "psql_f_s": raw_times,
        "ratio_of_medians": median(engine_times) / median(raw_times),
    }


# -- output --------------------------------------------------------------------------------


def bench_output(repeat: int, lines: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with engine_in_scratch() as engine:
        prepare(engine, psql_body("-c", "select 1"))
        for n in range(repeat):
            before = db_bytes(engine.state_store)
            sql = f"select 'row {n} ' || g from generate_series(1, {lines}) g"
            holder: dict[str, Any] = {}
            seconds = timed(lambda s=sql, h=holder: h.update(o=prepare(engine, psql_body("-c", s))))
            assert holder["o"].status["status"] == "succeeded"
            runs.append(
                {
                    "seconds": seconds,
                    "db_growth_bytes": db_bytes(engine.state_store) - before,
                    "peak_rss_bytes": peak_rss(engine.process.pid),
                }
            )
    return {
        "lines": lines,
        "runs": runs,
        "median_s": median([r["seconds"] for r in runs]),
        "median_db_growth_bytes": median([r["db_growth_bytes"] for r in runs]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
    }


# -- streams -------------------------------------------------------------------------------


def open_stream(engine: EngineProcess, job_id: str) -> socket.socket:
    host, port = engine.info["endpoint"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(
        f"GET /v1/prepare-jobs/{job_id}/events HTTP/1.1\r\nHost: e\r\n"
        f"Authorization: Bearer {engine.token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock


def health_latencies(engine: EngineProcess, count: int) -> list[float]:
    out = []
    for _ in range(count):
        out.append(timed(lambda: engine.get("/v1/health", auth=False).raise_for_status()))
    return out


def bench_streams(streams: int, requests_count: int) -> dict[str, Any]:
    with engine_in_scratch() as engine:
        job_id = submit(engine, psql_body("-c", "select pg_sleep(3600)"))
        wait_for_running_step(engine, job_id)
        idle = health_latencies(engine, requests_count)
        socks = [open_stream(engine, job_id) for _ in range(streams)]
        try:
            loaded = health_latencies(engine, requests_count)
            states = [timed(lambda: engine.get("/v1/states").raise_for_status()) for _ in range(50)]
            with_streams = {
                "threads": threads(engine.process.pid),
                "rss": rss_bytes(engine.process.pid),
            }
        finally:
            engine.post(f"/v1/prepare-jobs/{job_id}/cancel")
            for sock in socks:
                sock.close()
    return {
        "streams": streams,
        "health_p50_ms_no_streams": percentile(idle, 0.5) * 1000,
        "health_p99_ms_no_streams": percentile(idle, 0.99) * 1000,
        "health_p50_ms": percentile(loaded, 0.5) * 1000,
        "health_p99_ms": percentile(loaded, 0.99) * 1000,
        "states_get_p50_ms": percentile(states, 0.5) * 1000,
        "engine_threads_with_streams": with_streams["threads"],
        "engine_rss_with_streams": with_streams["rss"],
    }


# -- listings ------------------------------------------------------------------------------


def seed_states(store: Path, count: int) -> None:
    seeder = Seeder(store)
    seeder.listed_states([f"{n:064x}" for n in range(count)])
    seeder.close()


def seed_jobs(store: Path, count: int) -> None:
    """`count` finished jobs with two tasks each (plan, state_execute)."""
    seeder = Seeder(store)
    seeder.finished_jobs([(f"{n:032x}", f"2026-01-01T00:00:{n % 60:02d}Z") for n in range(count)])
    seeder.close()


def ttfb_and_total(
    engine: EngineProcess, accept: str, path: str = "/v1/states"
) -> tuple[float, float, int]:
    started = time.perf_counter()
    with engine.get(path, headers={"Accept": accept}, stream=True) as response:
        chunks = response.iter_content(chunk_size=None)
        first = next(chunks)
        ttfb = time.perf_counter() - started
        size = len(first) + sum(len(chunk) for chunk in chunks)
    return ttfb, time.perf_counter() - started, size


def bench_listings(count: int, listings: int) -> dict[str, Any]:
    from tests.support.dirs import make_scratch_dir, remove_scratch_dir
    from tests.support.engine_process import start_engine

    workdir = make_scratch_dir("sqlrs-bench-")
    seed_states(workdir / "state-store", count)
    seed_jobs(workdir / "state-store", count)
    engine = start_engine(workdir)
    try:
        figures: dict[str, Any] = {"states": count}
        for _ in range(5):  # warm-up
            ttfb_and_total(engine, "application/json")
        rss_before = rss_bytes(engine.process.pid)
        for name, accept in (("json", "application/json"), ("ndjson", "application/x-ndjson")):
            samples = [ttfb_and_total(engine, accept) for _ in range(20)]
            figures[f"{name}_ttfb_ms"] = median([s[0] for s in samples]) * 1000
            figures[f"{name}_total_ms"] = median([s[1] for s in samples]) * 1000
            figures[f"{name}_bytes"] = samples[0][2]
        for n in range(listings):
            ttfb_and_total(engine, "application/json" if n % 2 else "application/x-ndjson")
        figures["rss_before_bytes"] = rss_before
        figures["rss_after_bytes"] = rss_bytes(engine.process.pid)
        figures["listings"] = listings + 45
        # Jobs (10 000) and their tasks (20 000), the same way; peak RSS from here on.
        Path(f"/proc/{engine.process.pid}/clear_refs").write_text("5")
        rss_before = rss_bytes(engine.process.pid)
        for name, path in (("jobs", "/v1/prepare-jobs"), ("tasks", "/v1/tasks")):
            for shape, accept in (("json", "application/json"), ("ndjson", "application/x-ndjson")):
                samples = [ttfb_and_total(engine, accept, path) for _ in range(10)]
                figures[f"{name}_{shape}_ttfb_ms"] = median([s[0] for s in samples]) * 1000
                figures[f"{name}_{shape}_total_ms"] = median([s[1] for s in samples]) * 1000
                figures[f"{name}_{shape}_bytes"] = samples[0][2]
        figures["jobs_rss_before_bytes"] = rss_before
        figures["jobs_rss_after_bytes"] = rss_bytes(engine.process.pid)
        figures["jobs_rss_peak_bytes"] = peak_rss(engine.process.pid)
        return figures
    finally:
        engine.stop()
        remove_scratch_dir(workdir)


# -- idle ----------------------------------------------------------------------------------


def bench_idle(instances: int) -> dict[str, Any]:
    with engine_in_scratch() as engine:
        time.sleep(2)
        figures: dict[str, Any] = {
            "idle_rss_bytes": rss_bytes(engine.process.pid),
            "idle_threads": threads(engine.process.pid),
        }
        body = psql_body("-c", "create table t (n int)")
        for _ in range(instances):
            assert prepare(engine, body).status["status"] == "succeeded"
        time.sleep(2)
        figures["instances"] = instances
        figures["rss_with_instances_bytes"] = rss_bytes(engine.process.pid)
        figures["threads_with_instances"] = threads(engine.process.pid)
        for instance in engine.get("/v1/instances").json():
            engine.delete(f"/v1/instances/{instance['instance_id']}", params={"force": "true"})
        return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="inserts,output,streams,listings,idle")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=250_000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--states", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=50)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    only = set(args.only.split(","))
    figures: dict[str, Any] = {}
    if "inserts" in only:
        figures["inserts"] = bench_inserts(args.repeat, args.statements)
    if "output" in only:
        figures["output"] = bench_output(args.repeat, args.lines)
    if "streams" in only:
        figures["streams"] = bench_streams(args.streams, 500)
    if "listings" in only:
        figures["listings"] = bench_listings(args.states, 200)
    if "idle" in only:
        figures["idle"] = bench_idle(args.instances)
    path = save("volume", figures)
    for section, values in figures.items():
        print(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, float):
                print(f"  {key:32} {value:.3f}")
            elif not isinstance(value, list):
                print(f"  {key:32} {value}")
            else:
                print(f"  {key:32} {[round(v, 3) if isinstance(v, float) else v for v in value]}")
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
