"""WarmPool's concurrency rules, with a fake runtime to hold a hand-out open on demand.

The real engine cannot be stopped between "a job took a member" and "its instance row is
written", so the race of a hand-out and a deletion of the same state is provoked here: the
drain must wait for the hand-out, and no hand-out may start once the drain has begun.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.actors.snapshot import SnapshotClient
from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.pool.warm_pool import MEMBER_FILE, WarmPool
from sqlrs_engine.snapshot.layout import StoreLayout
from tests.support.fake_runtime import RESOLVED, FakeRuntime

STATE = "s" * 64
WAIT = 30.0


class Answer:
    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self, timeout: float | None = None) -> Any:
        return self.value


class FakeRegistry:
    def __init__(self, pool: dict[str, Any]) -> None:
        self.pool = pool
        self.active_jobs = 0

    def config_get(self, path: str, effective: bool) -> Answer:
        assert path == "pool"
        return Answer(self.pool)

    def active_job_count(self) -> Answer:
        return Answer(self.active_jobs)

    def state_row(self, state_id: str) -> Answer:
        return Answer({"state_id": state_id, "image_id": RESOLVED})


class FakeSnapshots:
    """Clones are plain directories under `<root>/jobs/<member>/runtime`."""

    def __init__(self, root: Path) -> None:
        self.layout = StoreLayout(root)

    def state_dir(self, image_id: str, state_id: str) -> Path:
        return self.layout.state_dir(image_id, state_id)

    def clone_to_runtime(
        self, source: Path, job_id: str, require_pg_version: bool, cancel: CancelToken
    ) -> Path:
        runtime = self.layout.job_runtime_dir(job_id)
        runtime.mkdir(parents=True)
        return runtime

    def remove_job_dir(self, job_id: str) -> None:
        shutil.rmtree(self.layout.job_dir(job_id), ignore_errors=True)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> FakeRegistry:
    """Pool settings: enabled, 2 per state, 4 in all, unless the test overrides some."""
    overrides = getattr(request, "param", {})
    return FakeRegistry({"enabled": True, "membersPerState": 2, "maxMembers": 4, **overrides})


@pytest.fixture
def pool(tmp_path: Path, runtime: FakeRuntime, registry: FakeRegistry) -> Iterator[WarmPool]:
    warm = WarmPool(
        cast(RegistryProxy, registry), runtime, cast(SnapshotClient, FakeSnapshots(tmp_path))
    )
    warm.start()
    try:
        yield warm
    finally:
        warm.stop()


def ready(pool: WarmPool, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while True:
        status = pool.status()
        if len(status["members"]) == count and not status["filling_count"]:
            return list(status["members"])
        assert time.monotonic() < deadline, status
        time.sleep(0.01)


def test_a_drain_waits_for_a_hand_out_under_way_and_refuses_new_ones(
    pool: WarmPool, runtime: FakeRuntime, tmp_path: Path
) -> None:
    pool.note_hit(STATE, RESOLVED)
    ready(pool, 2)
    taken = threading.Event()
    finish = threading.Event()
    inside_drain = threading.Event()
    seen: dict[str, Any] = {}

    def hand_out() -> None:
        with pool.take(STATE, RESOLVED, "job-1") as member:
            seen["member"] = member
            taken.set()
            finish.wait(WAIT)

    def delete() -> None:
        with pool.drained([STATE], "state deleted"):
            seen["members_in_drain"] = pool.status()["members"]
            with pool.take(STATE, RESOLVED, "job-2") as member:
                seen["taken_in_drain"] = member
            inside_drain.set()

    handing = threading.Thread(target=hand_out)
    handing.start()
    assert taken.wait(WAIT)
    deleting = threading.Thread(target=delete)
    deleting.start()
    # The drain cannot begin while the hand-out is open (its instance row is not written).
    assert not inside_drain.wait(0.3)
    finish.set()
    handing.join(WAIT)
    deleting.join(WAIT)
    assert inside_drain.is_set()
    assert seen["member"] is not None
    assert seen["members_in_drain"] == []
    assert seen["taken_in_drain"] is None
    # The handed-out member kept its server and clone (it is an instance now)...
    member = seen["member"]
    assert runtime.is_running(member.handle)
    assert member.runtime_dir.is_dir()
    assert not (member.runtime_dir.parent / MEMBER_FILE).exists()
    # ...and the other one is gone, server and directory.
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [member.member_id]
    assert pool.status()["counters"]["hand_outs"] == 1


def test_a_failed_hand_out_removes_the_member(pool: WarmPool, runtime: FakeRuntime) -> None:
    pool.note_hit(STATE, RESOLVED)
    ready(pool, 2)
    with pytest.raises(RuntimeError), pool.take(STATE, RESOLVED, "job-1") as member:
        assert member is not None
        raise RuntimeError("instance row refused")
    assert not runtime.is_running(member.handle)
    assert not member.runtime_dir.exists()


@pytest.mark.parametrize("registry", [{"membersPerState": 1}], indirect=True)
def test_a_member_whose_server_died_is_never_handed_out(
    pool: WarmPool, runtime: FakeRuntime, registry: FakeRegistry, tmp_path: Path
) -> None:
    pool.note_hit(STATE, RESOLVED)
    [entry] = ready(pool, 1)
    registry.active_jobs = 1  # hold refills back
    runtime.running.clear()  # killed from outside
    with pool.take(STATE, RESOLVED, "job-1") as member:
        assert member is None
    assert pool.status()["counters"]["hand_outs"] == 0
    assert not (tmp_path / "jobs" / entry["member_id"]).exists()


def test_refills_wait_for_user_jobs(pool: WarmPool, registry: FakeRegistry) -> None:
    registry.active_jobs = 1
    pool.note_hit(STATE, RESOLVED)
    deadline = time.monotonic() + WAIT
    while not pool.status()["refill_waiting_for_jobs"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert pool.status()["members"] == []
    registry.active_jobs = 0
    ready(pool, 2)


def test_stop_removes_every_member(
    tmp_path: Path, runtime: FakeRuntime, registry: FakeRegistry
) -> None:
    warm = WarmPool(
        cast(RegistryProxy, registry), runtime, cast(SnapshotClient, FakeSnapshots(tmp_path))
    )
    warm.start()
    warm.note_hit(STATE, RESOLVED)
    ready(warm, 2)
    warm.stop()
    assert runtime.running == set()
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.parametrize("registry", [{"membersPerState": 3, "maxMembers": 3}], indirect=True)
def test_claims_racing_for_fewer_members_get_each_member_once(
    pool: WarmPool, registry: FakeRegistry
) -> None:
    """The short path's claim: 12 concurrent claims, 3 members; the rest get None."""
    pool.note_hit(STATE, RESOLVED)
    ready(pool, 3)
    registry.active_jobs = 1  # hold refills back: exactly three members exist
    hits_before = pool.status()["states"][0]["hits"]
    gate = threading.Barrier(12)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(job: int) -> None:
        gate.wait(WAIT)
        with pool.claim(STATE, RESOLVED, f"job-{job}") as member:
            if member is not None:
                with lock:
                    claimed.append(member.member_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(claimed) == len(set(claimed)) == 3
    status = pool.status()
    assert status["members"] == []
    # A claim that found nothing counts no miss and notes no hit: the job path that the
    # submission then takes counts both, once.
    assert status["counters"]["hand_outs"] == 3
    assert status["counters"]["misses"] == 0
    assert status["states"][0]["hits"] == hits_before + 3


def test_no_claim_once_a_drain_began(pool: WarmPool) -> None:
    pool.note_hit(STATE, RESOLVED)
    ready(pool, 2)
    assert pool.has_ready()
    with pool.drained([STATE], "state deleted"):
        assert not pool.has_ready()
        with pool.claim(STATE, RESOLVED, "job-1") as member:
            assert member is None


@pytest.mark.parametrize(
    ("registry", "expected"),
    [({}, True), ({"shortPath": False}, False)],
    indirect=["registry"],
)
def test_short_path_follows_its_setting(pool: WarmPool, expected: bool) -> None:
    assert pool.short_path is expected
