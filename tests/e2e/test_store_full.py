"""A state store on a filesystem that fills up (issue 11, SPEC §10.2): the job that ran out
of space fails with `cache_limit_too_small` and the phase, nothing half-built stays, other
instances are unharmed, and once space is back prepares work again — no restart, no repair
by hand."""

from __future__ import annotations

import json
from pathlib import Path

import ujson

from tests.support.engine_process import start_engine
from tests.support.faults import tmpfs
from tests.support.prepare import prepare, psql_body, query
from tests.support.store_check import settled_store_problems


class EngineApi:
    def __init__(self, engine: object) -> None:
        self.engine = engine

    def get_json(self, path: str) -> object:
        return self.engine.get(path).json()  # type: ignore[attr-defined]


def test_a_full_store_fails_the_job_cleanly_and_recovers(scratch_dir: Path) -> None:
    with tmpfs(scratch_dir / "fs", size="160m") as fs:
        store = fs / "store"
        store.mkdir(mode=0o711)
        (store / "config.json").write_text(
            json.dumps(
                {"snapshot": {"backend": "copy"}, "cache": {"capacity": {"reserveBytes": 0}}}
            )
        )
        engine = start_engine(scratch_dir, state_store=store)
        try:
            small = prepare(engine, psql_body("-c", "create table small(a int)"))
            assert small.status["status"] == "succeeded", small.status
            # ~50 MB of rows: the clone's WAL and table, then the snapshot's copy, overflow.
            big = psql_body(
                "-c",
                "create table big as select g, repeat('x', 400) as pad "
                "from generate_series(1, 120000) g",
            )
            failed = prepare(engine, big)
            assert failed.status["status"] == "failed", failed.status
            error = failed.status["error"]
            assert error["code"] == "cache_limit_too_small", error
            details = ujson.loads(error["details"])
            assert details["phase"] in ("prepare_step", "snapshot", "metadata_commit")
            assert "space" in details["error"].lower()
            api = EngineApi(engine)
            assert settled_store_problems(api, store) == []  # nothing half-built stays
            assert not (store / "jobs" / failed.job_id / "runtime").exists()
            assert query(small.dsn, "select count(*) from small") == "0", "others unharmed"
            # Space comes back (the small instance goes): the same prepare now fits.
            assert engine.delete(f"/v1/instances/{small.result['instance_id']}").ok
            assert engine.delete(f"/v1/states/{small.result['state_id']}").ok
            smaller = psql_body("-c", "create table big as select 1 as g")
            again = prepare(engine, smaller)
            assert again.status["status"] == "succeeded", again.status
            assert settled_store_problems(api, store) == []
        finally:
            assert engine.stop() == 0
