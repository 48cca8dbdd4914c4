"""A full disk under state.db, end to end (issue 11): clean 507 answers instead of 500s,
reads keep working, health says what is wrong, and once space returns everything works
again without a restart; no job is left running."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.engine_process import start_engine
from tests.support.faults import fill, tmpfs
from tests.support.prepare import psql_body


def test_a_full_disk_under_state_db_and_its_recovery(scratch_dir: Path) -> None:
    with tmpfs(scratch_dir / "fs", size="8m") as fs:
        store = fs / "store"
        engine = start_engine(scratch_dir, state_store=store)
        try:
            body = psql_body("-c", "select 1", plan_only=True)
            assert engine.post("/v1/prepare-jobs", json=body).status_code == 201
            fill(fs)
            answers = []
            for _ in range(100):  # the WAL's free pages absorb a few writes first
                response = engine.post("/v1/prepare-jobs", json=body)
                answers.append(response.status_code)
                if response.status_code == 507:
                    assert response.json()["code"] == "storage_full"
                    assert "disk space" in response.json()["message"]
                    break
            assert answers[-1] == 507, answers
            assert set(answers) <= {201, 507}, f"no 500 on a full disk: {answers}"
            assert engine.get("/v1/prepare-jobs").status_code == 200, "reads keep working"
            assert engine.get("/v1/states").status_code == 200
            health = engine.get("/v1/health", auth=False).json()
            assert health["ok"] is True and "disk space" in health["storage_error"]

            os.unlink(fs / "filler")

            deadline = time.monotonic() + 30
            while "storage_error" in engine.get("/v1/health", auth=False).json():
                assert time.monotonic() < deadline, "health never saw the space come back"
                time.sleep(0.2)
            assert engine.post("/v1/prepare-jobs", json=body).status_code == 201
            deadline = time.monotonic() + 120
            while True:
                jobs = engine.get("/v1/prepare-jobs").json()
                if all(j["status"] in ("succeeded", "failed") for j in jobs):
                    break
                assert time.monotonic() < deadline, f"jobs left running: {jobs}"
                time.sleep(0.2)
            log = engine.stderr_text()
        finally:
            assert engine.stop() == 0
        full_lines = [line for line in log.splitlines() if "state.db: the engine's" in line]
        assert len(full_lines) == 1, "identical failures are logged once"
        assert "state.db is writable again" in log
        assert "Traceback" not in log
