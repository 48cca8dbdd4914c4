"""Instance TTL end to end: `ttl` on prepare → `expires_at` → the engine deletes the instance,
but never while a client is connected to it."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sqlrs_engine.clock import parse_rfc3339
from tests.support.engine_process import EngineProcess, start_engine

WAIT = 60.0
"""Upper bound for waiting on the engine's 1-second expiry checks on a busy machine."""


def prepare(engine: EngineProcess, **fields: Any) -> dict[str, Any]:
    body = {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-c", "select 1"]}
    body.update(fields)
    response = engine.post("/v1/prepare-jobs", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    events = list(engine.ndjson(f"/v1/prepare-jobs/{job_id}/events"))
    assert events[-1]["type"] == "result", events
    result: dict[str, Any] = events[-1]["result"]
    return result


def instance_entry(engine: EngineProcess, instance_id: str) -> dict[str, Any] | None:
    entries = engine.get("/v1/instances").json()
    return next((e for e in entries if e["instance_id"] == instance_id), None)


def wait_until_gone(engine: EngineProcess, instance_id: str) -> None:
    deadline = time.monotonic() + WAIT
    while instance_entry(engine, instance_id) is not None:
        assert time.monotonic() < deadline, f"instance {instance_id} was not deleted"
        time.sleep(0.2)


def test_an_expired_instance_is_deleted(shared_engine: EngineProcess) -> None:
    result = prepare(shared_engine, ttl="2s")
    entry = instance_entry(shared_engine, result["instance_id"])
    assert entry is not None
    assert entry["expires_at"] == result["expires_at"]
    lifetime = parse_rfc3339(entry["expires_at"]) - parse_rfc3339(entry["created_at"])
    assert lifetime == timedelta(seconds=2)
    without_ttl = prepare(shared_engine)
    assert "expires_at" not in without_ttl
    wait_until_gone(shared_engine, result["instance_id"])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(result["dsn"], connect_timeout=5).close()
    assert instance_entry(shared_engine, without_ttl["instance_id"]) is not None
    assert f"instance {result['instance_id']} expired and was deleted" in (
        shared_engine.stderr_text()
    )
    shared_engine.delete(f"/v1/instances/{without_ttl['instance_id']}?force=true")


def test_a_connected_instance_is_deleted_once_its_client_leaves(
    shared_engine: EngineProcess,
) -> None:
    result = prepare(shared_engine, ttl="1s")
    instance_id = result["instance_id"]
    waiting = f"instance {instance_id} expired but has 1 connection(s)"
    with psycopg.connect(result["dsn"]) as conn:
        deadline = time.monotonic() + WAIT
        while waiting not in shared_engine.stderr_text():
            assert time.monotonic() < deadline, "the expiry check did not see the instance"
            time.sleep(0.2)
        entry = instance_entry(shared_engine, instance_id)
        assert entry is not None and entry["status"] == "expired"
        assert conn.execute("select 1").fetchone() == (1,)  # still served
    wait_until_gone(shared_engine, instance_id)


@pytest.mark.parametrize(
    ("ttl", "message", "details_part"),
    [
        ("tomorrow", "invalid ttl", 'invalid duration "tomorrow"'),
        ("-1h", "invalid ttl", "ttl must be positive"),
        ("0s", "invalid ttl", "ttl must be positive"),
        (60, "invalid json payload", "ttl: expected a string, got number"),
    ],
)
def test_a_bad_ttl_is_a_400(
    shared_engine: EngineProcess, ttl: object, message: str, details_part: str
) -> None:
    body = {"prepare_kind": "psql", "image_id": "postgres:15", "psql_args": ["-c", "select 1"]}
    response = shared_engine.post("/v1/prepare-jobs", json={**body, "ttl": ttl})
    assert response.status_code == 400
    error = response.json()
    assert (error["code"], error["message"]) == ("invalid_argument", message)
    assert details_part in error["details"]


def test_an_idle_engine_waits_for_its_expiring_instances(scratch_dir: Path) -> None:
    """Servers outlive the engine: one that went idle first would leave them running."""
    engine = start_engine(scratch_dir, idle_timeout="1s")
    try:
        result = prepare(engine, ttl="3s")
        assert engine.process.wait(timeout=WAIT) == 0  # idle shutdown, after the expiry
        log = engine.stderr_text()
        deleted = log.index(f"instance {result['instance_id']} expired and was deleted")
        assert deleted < log.index("engine stopped")
    finally:
        engine.stop()
