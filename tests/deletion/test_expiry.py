"""The expiry reaper's decisions, with stand-ins for the Registry and the deletion service
(the e2e tests in tests/e2e/test_instance_ttl.py run it against real instances; a delete that
fails with a 500 cannot be provoked on demand there)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from sqlrs_engine.deletion.expiry import ExpiryReaper
from sqlrs_engine.errors import ApiError, not_found


@dataclass
class Answer:
    value: Any

    def get(self, timeout: float | None = None) -> Any:
        return self.value


@dataclass
class FakeRegistry:
    expired: list[str]

    def expired_instance_ids(self) -> Answer:
        return Answer(list(self.expired))


@dataclass
class FakeDeletion:
    outcomes: dict[str, Any]
    calls: list[str] = field(default_factory=list)

    def delete_instance(self, instance_id: str, force: bool, dry_run: bool) -> Any:
        assert (force, dry_run) == (False, False), "expiry never forces a delete"
        self.calls.append(instance_id)
        outcome = self.outcomes[instance_id]
        if isinstance(outcome, Exception):
            raise outcome
        return 200 if outcome == "deleted" else 409, {
            "outcome": outcome,
            "root": {"kind": "instance", "id": instance_id, "connections": 2},
        }


def test_each_expired_instance_is_deleted_or_retried(caplog: pytest.LogCaptureFixture) -> None:
    registry = FakeRegistry(["gone", "busy", "broken", "raced"])
    deletion = FakeDeletion(
        {
            "gone": "deleted",
            "busy": "blocked",
            "broken": ApiError(500, "internal_error", "delete instance failed", "busy mount"),
            "raced": not_found("instance not found"),
        }
    )
    reaper = ExpiryReaper(registry, deletion)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="sqlrs_engine.deletion.expiry"):
        assert reaper.reap_once() == ["gone"]
        registry.expired = ["busy", "broken"]
        assert reaper.reap_once() == []
        assert reaper.reap_once() == []
    retried = ["busy", "broken"]
    assert deletion.calls == ["gone", "busy", "broken", "raced", *retried, *retried]
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("instance gone expired and was deleted") == 1
    # Waiting for connections and a failing delete are each logged once, not every second.
    assert (
        messages.count("instance busy expired but has 2 connection(s); deleting it once they close")
        == 1
    )
    assert [m for m in messages if m.startswith("expired instance broken: delete failed")] == [
        "expired instance broken: delete failed (retrying every 1s): "
        "delete instance failed busy mount"
    ]
    assert not [m for m in messages if "raced" in m]


def test_start_and_stop() -> None:
    reaper = ExpiryReaper(FakeRegistry([]), FakeDeletion({}), interval=0.01)  # type: ignore[arg-type]
    reaper.start()
    reaper.stop()
