"""prepare:lb benchmark (issue 13): one state per Liquibase changeset.

Measures, medians over repeated runs in one invocation, for a 10-changeset SQL changelog:
  (a) a cold lb prepare through HTTP (fresh store: base initdb, updateSQL, ten
      `update-count --count 1` with a snapshot each), with the job's commands in one warm JVM
      and with one JVM per command, against `liquibase update` run by hand on a freshly
      initdb'ed and started server (initdb + start + one JVM + stop);
  (b) the time per changeset, split into JVM start (`liquibase --version`), Liquibase work
      (the rest of the task's Liquibase run) and the engine's stop/snapshot/restart/state row;
  (c) a fully cached re-run (POST → DSN) against a psql cache hit on the same engine.

With `--compare REV` (issue 10: Liquibase unprivileged from a staging copy), (a) and (c) are
also measured for the engine source of git revision REV (exported with `git archive`, put
first on the engines' PYTHONPATH), interleaved with the working tree's in the same run, and
the after / before ratios of the medians are printed.

Run: .venv/bin/python bench/bench_lb.py [--cold N] [--raw N] [--hits N] [--compare REV]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import engine_in_scratch, median, save, timed  # type: ignore[import-not-found]
from tests.support.prepare import prepare, psql_body, query

from sqlrs_engine.jobs.kinds.lb import FAST_START_JAVA_OPTS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path("/usr/lib/postgresql/15/bin")
LIQUIBASE = ROOT / ".venv" / "bin" / "liquibase"
ENV = {"PATH": f"{LIQUIBASE.parent}:{os.environ['PATH']}"}
CHANGESETS = 10


def write_changelog(directory: Path) -> Path:
    lines = ["--liquibase formatted sql", ""]
    for index in range(CHANGESETS):
        lines += [
            f"--changeset bench:{index}",
            f"create table t{index}(id int primary key, payload text);",
            f"insert into t{index} select g, md5(g::text) from generate_series(1, 1000) g;",
            "",
        ]
    path = directory / "changelog.sql"
    path.write_text("\n".join(lines))
    path.chmod(0o644)
    return path


def export_source(revision: str) -> Path:
    """`src/` of `revision` in a scratch dir (the engine package only)."""
    target = Path(tempfile.mkdtemp(prefix="sqlrs-before-", dir="/var/tmp"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def env_for(pythonpath: Path | None) -> dict[str, str]:
    return {**ENV, "PYTHONPATH": str(pythonpath)} if pythonpath is not None else ENV


def jvm_start(java_opts: str) -> float:
    """`liquibase --version`: a JVM start and Liquibase's own start-up, nothing else."""
    env = {**os.environ, "JAVA_OPTS": java_opts}
    return timed(
        lambda: subprocess.run(
            [str(LIQUIBASE), "--version"], check=True, capture_output=True, env=env
        )
    )


def raw_baseline(changelog: Path) -> float:
    """initdb + start + `liquibase update` + stop, by hand (the server as `postgres`)."""
    work = Path(tempfile.mkdtemp(prefix="sqlrs-raw-", dir="/var/tmp"))
    work.chmod(0o711)
    pgdata = work / "pgdata"
    user = pwd.getpwnam("postgres")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    os.chown(work, user.pw_uid, user.pw_gid)
    port = "54998"

    def run() -> None:
        subprocess.run(
            [*as_user, str(BIN / "initdb"), "-D", str(pgdata), "--username=sqlrs",
             "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*as_user, str(BIN / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(work / "log"),
             "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={work}",
             "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [str(LIQUIBASE), f"--url=jdbc:postgresql://127.0.0.1:{port}/postgres",
             "--username=sqlrs", "--changelog-file", changelog.name, "update"],
            check=True, capture_output=True, cwd=changelog.parent,
        )  # fmt: skip
        subprocess.run(
            [*as_user, str(BIN / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            check=True, capture_output=True,
        )  # fmt: skip

    try:
        return timed(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ts(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def per_changeset(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(Liquibase run, stop+snapshot+restart+row) seconds of each execute task."""
    out = []
    current: dict[str, float] = {}
    for event in events:
        message = event.get("message", "")
        # first occurrences only: the heartbeat repeats the last log line with a new ts
        if event["type"] == "task" and event["task_id"].startswith("execute"):
            if event["status"] == "running" and "running" not in current:
                current = {"running": _ts(event)}
            elif event["status"] == "succeeded" and "start" in current:
                done = _ts(event)
                out.append((current["stop"] - current["start"], done - current["stop"]))
                current = {}
        elif message == "liquibase: start" and "running" in current:
            current.setdefault("start", _ts(event))
        elif message == "pg_ctl: stop for snapshot" and "start" in current:
            current.setdefault("stop", _ts(event))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--raw", type=int, default=3)
    parser.add_argument("--hits", type=int, default=10)
    parser.add_argument("--jvm", type=int, default=5)
    parser.add_argument("--backend", default="copy", help="snapshot.backend for the engine")
    parser.add_argument("--compare", default=None, help="git revision to compare against")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sqlrs-bench-lb-", dir="/var/tmp"))
    work.chmod(0o755)
    changelog = write_changelog(work)
    body = {
        "prepare_kind": "lb",
        "image_id": "postgres:15",
        "liquibase_args": ["update", "--changelog-file", str(changelog)],
    }

    jvm = [jvm_start(FAST_START_JAVA_OPTS) for _ in range(args.jvm)]
    jvm_default = [jvm_start("") for _ in range(args.jvm)]
    raw = [raw_baseline(changelog) for _ in range(args.raw)]
    source = export_source(args.compare) if args.compare else None
    variants = [("after", None)] + ([("before", source)] if source else [])
    cold: dict[str, list[float]] = {}
    lb_runs: dict[str, list[float]] = {}
    snapshots: list[float] = []
    try:
        for _ in range(args.cold):
            for variant, pythonpath in variants:
                for mode in ("warm", "process"):
                    key = mode if variant == "after" else f"{variant}_{mode}"
                    with engine_in_scratch(args.backend, env=env_for(pythonpath)) as engine:
                        engine.patch(
                            "/v1/config",
                            json={"path": "liquibase.warmJvm", "value": mode == "warm"},
                        )
                        holder: dict[str, Any] = {}
                        cold.setdefault(key, []).append(
                            timed(lambda e=engine, h=holder: h.update(o=prepare(e, body)))
                        )
                        outcome = holder["o"]
                        assert outcome.status["status"] == "succeeded", outcome.status
                        assert query(outcome.dsn, "select count(*) from databasechangelog") == "10"
                        for run, snap in per_changeset(outcome.events):
                            lb_runs.setdefault(key, []).append(run)
                            if variant == "after":
                                snapshots.append(snap)

        hit_samples: dict[str, list[float]] = {}
        with contextlib.ExitStack() as stack:
            engines = [
                (variant, stack.enter_context(engine_in_scratch(args.backend, env=env_for(pp))))
                for variant, pp in variants
            ]
            psql = psql_body("-c", "create table hit(a int)")
            for _, engine in engines:
                prepare(engine, body)
                prepare(engine, psql)
            for index in range(args.hits):
                for variant, engine in engines if index % 2 == 0 else engines[::-1]:
                    holder = {}
                    key = "hits" if variant == "after" else f"{variant}_hits"
                    hit_samples.setdefault(key, []).append(
                        timed(lambda e=engine, h=holder: h.update(o=prepare(e, body)))
                    )
                    logs = holder["o"].log_lines()
                    assert not any(line.startswith("liquibase: exec") for line in logs), logs
                    if variant == "after":
                        hit_samples.setdefault("psql_hits", []).append(
                            timed(lambda e=engine: prepare(e, psql))
                        )
    finally:
        if source is not None:
            shutil.rmtree(source.parent, ignore_errors=True)
    hits = hit_samples["hits"]
    psql_hits = hit_samples["psql_hits"]
    comparison: dict[str, Any] = {}
    if source is not None:
        comparison = {
            "before_revision": args.compare,
            "cold_warm_after_vs_before": median(cold["warm"]) / median(cold["before_warm"]),
            "cold_process_after_vs_before": median(cold["process"])
            / median(cold["before_process"]),
            "run_warm_after_vs_before": median(lb_runs["warm"]) / median(lb_runs["before_warm"]),
            "run_process_after_vs_before": median(lb_runs["process"])
            / median(lb_runs["before_process"]),
            "cached_rerun_after_vs_before": median(hits) / median(hit_samples["before_hits"]),
            "medians_before_s": {
                "cold_warm": median(cold["before_warm"]),
                "cold_process": median(cold["before_process"]),
                "run_warm": median(lb_runs["before_warm"]),
                "run_process": median(lb_runs["before_process"]),
                "cached_rerun": median(hit_samples["before_hits"]),
            },
        }

    shutil.rmtree(work, ignore_errors=True)
    work_s = median(lb_runs["process"]) - median(jvm)
    figures = {
        "backend": args.backend,
        "changesets": CHANGESETS,
        "raw_liquibase_update_s": median(raw),
        "cold_prepare_warm_jvm_s": median(cold["warm"]),
        "cold_prepare_process_per_command_s": median(cold["process"]),
        "cold_warm_vs_raw_ratio": median(cold["warm"]) / median(raw),
        "cold_process_vs_raw_ratio": median(cold["process"]) / median(raw),
        "jvm_start_s": median(jvm),
        "jvm_start_default_opts_s": median(jvm_default),
        "per_changeset_liquibase_run_process_s": median(lb_runs["process"]),
        "per_changeset_liquibase_work_process_s": work_s,
        "per_changeset_liquibase_run_warm_s": median(lb_runs["warm"]),
        "per_changeset_snapshot_s": median(snapshots),
        "cached_rerun_s": median(hits),
        "psql_cache_hit_s": median(psql_hits),
        "comparison": comparison,
        "loadavg": os.getloadavg(),
        "samples": {
            **{k: v for k, v in hit_samples.items() if k.startswith("before")},
            **{f"cold_{k}": v for k, v in cold.items() if k.startswith("before")},
            **{f"runs_{k}": v for k, v in lb_runs.items() if k.startswith("before")},
            "raw": raw,
            "cold_warm": cold["warm"],
            "cold_process": cold["process"],
            "jvm": jvm,
            "jvm_default": jvm_default,
            "liquibase_runs_warm": lb_runs["warm"],
            "liquibase_runs_process": lb_runs["process"],
            "snapshots": snapshots,
            "hits": hits,
            "psql_hits": psql_hits,
        },
    }
    path = save("lb", figures)
    print(f"{CHANGESETS}-changeset SQL changelog, snapshot backend {args.backend}")
    print(f"liquibase update by hand (initdb+start+update+stop): median {median(raw):.2f}s")
    for mode, label in (("warm", "one warm JVM per job"), ("process", "one JVM per command")):
        ratio = median(cold[mode]) / median(raw)
        print(f"cold lb prepare, {label}: median {median(cold[mode]):.2f}s → {ratio:.1f}x")
    print(
        f"JVM start (liquibase --version): {median(jvm):.2f}s with the engine's JAVA_OPTS,"
        f" {median(jvm_default):.2f}s without"
    )
    print(
        f"per changeset, one JVM per command: JVM start {median(jvm):.2f}s + Liquibase work"
        f" {work_s:.2f}s; warm JVM: Liquibase run {median(lb_runs['warm']):.2f}s;"
        f" stop/snapshot/restart/row {median(snapshots):.2f}s"
    )
    print(
        f"fully cached re-run (POST → DSN): median {median(hits):.3f}s;"
        f" psql cache hit {median(psql_hits):.3f}s"
    )
    for name, value in comparison.items():
        if name.endswith("after_vs_before"):
            print(f"after / before ({args.compare}): {name} {value:.3f}")
    print(f"raw numbers: {path}")


if __name__ == "__main__":
    main()
