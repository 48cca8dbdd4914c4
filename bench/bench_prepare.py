"""Prepare benchmark (issue: prepare:psql end to end).

Measures, medians over repeated runs in one invocation:
  (a) cold prepare of a script that builds a ~50 MB database, through HTTP, against the raw
      baseline of doing the same by hand: initdb + pg_ctl start + psql -f + pg_ctl stop;
  (b) a cache-hit prepare (POST → status succeeded with a DSN) against the same baseline;
  (c) the engine's resident memory after the runs.

Run: .venv/bin/python bench/bench_prepare.py [--cold N] [--hits N] [--raw N]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import engine_in_scratch, median, rss_bytes, save, timed  # type: ignore[import-not-found]
from tests.support.prepare import PSQL, prepare, psql_body, query

BIN = Path("/usr/lib/postgresql/15/bin")
SCRIPT = """
create table big as
  select g as id, md5(g::text) as payload, now() as created from generate_series(1, 600000) g;
create index big_id on big(id);
analyze big;
"""


def write_script(directory: Path) -> Path:
    path = directory / "build-50mb.sql"
    path.write_text(SCRIPT)
    path.chmod(0o644)
    return path


def raw_baseline(script: Path) -> float:
    """initdb + start + psql -f + stop by hand, as the server user (same initdb flags)."""
    work = Path(tempfile.mkdtemp(prefix="sqlrs-raw-", dir="/var/tmp"))
    work.chmod(0o711)
    pgdata = work / "pgdata"
    user = pwd.getpwnam("postgres")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    os.chown(work, user.pw_uid, user.pw_gid)
    port = "54999"

    def run() -> None:
        subprocess.run(
            [
                *as_user,
                str(BIN / "initdb"),
                "-D",
                str(pgdata),
                "--username=sqlrs",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_user,
                str(BIN / "pg_ctl"),
                "-D",
                str(pgdata),
                "-w",
                "-l",
                str(work / "log"),
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={work}",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                PSQL,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(script),
                f"postgres://sqlrs@127.0.0.1:{port}/postgres",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*as_user, str(BIN / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            check=True,
            capture_output=True,
        )

    try:
        return timed(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--hits", type=int, default=10)
    parser.add_argument("--raw", type=int, default=5)
    parser.add_argument("--backend", default="copy", help="snapshot.backend for the engine")
    args = parser.parse_args()
    scripts = Path(tempfile.mkdtemp(prefix="sqlrs-bench-scripts-", dir="/var/tmp"))
    scripts.chmod(0o755)
    script = write_script(scripts)
    body = psql_body("-f", str(script))

    raw = [raw_baseline(script) for _ in range(args.raw)]

    cold: list[float] = []
    db_size = ""
    for _ in range(args.cold):
        with engine_in_scratch(args.backend) as engine:  # a fresh store: nothing cached
            holder: dict[str, object] = {}
            cold.append(timed(lambda e=engine, h=holder: h.update(o=prepare(e, body))))
            outcome = holder["o"]
            assert outcome.status["status"] == "succeeded", outcome.status  # type: ignore[attr-defined]
            db_size = query(outcome.dsn, "select pg_size_pretty(pg_database_size('postgres'))")  # type: ignore[attr-defined]

    hits: list[float] = []
    with engine_in_scratch(args.backend) as engine:
        prepare(engine, body)
        for _ in range(args.hits):
            holder = {}
            hits.append(timed(lambda e=engine, h=holder: h.update(o=prepare(e, body))))
            assert holder["o"].status["tasks"][2]["cached"] is True  # type: ignore[attr-defined]
        rss = rss_bytes(engine.process.pid)

    shutil.rmtree(scripts, ignore_errors=True)
    figures = {
        "backend": args.backend,
        "database_size": db_size,
        "raw_baseline_s": median(raw),
        "cold_prepare_s": median(cold),
        "cold_vs_raw_ratio": median(cold) / median(raw),
        "cache_hit_s": median(hits),
        "cache_hit_speedup_vs_raw": median(raw) / median(hits),
        "engine_rss_mib": rss / 2**20,
        "samples": {"raw": raw, "cold": cold, "hits": hits},
    }
    path = save("prepare", figures)
    print(f"snapshot backend: {args.backend}; database size (pg_database_size): {db_size}")
    print(f"raw baseline (initdb+start+psql -f+stop): median {median(raw):.3f}s over {len(raw)}")
    print(
        f"cold prepare through HTTP:                median {median(cold):.3f}s over {len(cold)}"
        f"  → {figures['cold_vs_raw_ratio']:.2f}x the raw baseline"
    )
    print(
        f"cache-hit prepare (POST → DSN):           median {median(hits):.3f}s over {len(hits)}"
        f"  → {figures['cache_hit_speedup_vs_raw']:.1f}x faster than the raw baseline"
    )
    print(f"engine RSS after the runs: {figures['engine_rss_mib']:.1f} MiB")
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
