"""state.db faults (issue 11): a full disk is a clean 507 answer, the next operation after
space returns works without a restart, and health says so meanwhile."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from sqlrs_engine.actors.registry import RegistrySettings, start_registry
from sqlrs_engine.config.store import ConfigStore
from sqlrs_engine.persistence.guard import StorageError, StorageHealth, classify
from sqlrs_engine.persistence.metadata import StateRecord
from tests.support.faults import fill, tmpfs


def state(n: int) -> StateRecord:
    return StateRecord(f"{n:064x}", None, "img@x", "psql", "-c x" * 50, "2026-01-01T00:00:00Z", 1)


@pytest.mark.parametrize(
    ("text", "status", "code"),
    [
        ("database or disk is full", 507, "storage_full"),
        ("database is locked", 503, "storage_unavailable"),
        ("disk I/O error", 503, "storage_unavailable"),
    ],
)
def test_classify(text: str, status: int, code: str) -> None:
    error = classify(OperationalError("INSERT …", {}, Exception(text)))
    assert (error.status, error.code) == (status, code)
    assert text in (error.details or "")


def test_a_full_disk_is_a_clean_answer_and_space_coming_back_needs_no_restart(
    scratch_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    health = StorageHealth()
    with tmpfs(scratch_dir / "fs", size="2m") as fs:
        ref, registry = start_registry(
            RegistrySettings(
                db_path=fs / "state.db",
                config=ConfigStore(fs / "config.json"),
                storage_health=health,
            )
        )
        try:
            assert registry.insert_state(state(0)).get() is True
            fill(fs)
            failures = []
            with caplog.at_level(logging.ERROR, logger="sqlrs_engine.persistence.guard"):
                for n in range(1, 200):  # until the WAL's free pages are used up
                    try:
                        registry.insert_state(state(n)).get()
                    except StorageError as error:
                        failures.append(error)
                    if len(failures) >= 3:
                        break
            assert len(failures) == 3, "a full disk must fail writes"
            assert {(e.status, e.code) for e in failures} == {(507, "storage_full")}
            logged = [r for r in caplog.records if "state.db:" in r.getMessage()]
            assert len(logged) == 1, "identical failures are logged once"
            assert health.error is not None and "disk space" in health.error
            # Reads keep working, and nothing half-written is visible.
            assert registry.state_exists(state(0).state_id).get() is True
            assert registry.ping().get() is True
            registry.probe_storage().get()
            assert health.error is not None, "still full"

            os.unlink(fs / "filler")  # space comes back

            registry.probe_storage().get()
            assert health.error is None
            assert registry.insert_state(state(500)).get() is True
            assert registry.list_jobs(None).get() == []
        finally:
            ref.stop()
