"""Holds of running jobs on states and the fences of deletions (deletion/uses.py)."""

from __future__ import annotations

import threading

import pytest

from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.deletion.uses import StateUses
from sqlrs_engine.errors import JobFailure
from tests.support.waiting import WaitingToken

TIMEOUT = 30.0
"""`hold` registers its wake-up with the token only when it must wait for a fence."""


@pytest.mark.parametrize(
    ("holds", "asked", "users"),
    [
        ([], ["s"], {}),
        ([("j1", "s")], ["s"], {"s": ["j1"]}),
        ([("j2", "s"), ("j1", "s"), ("j1", "s")], ["s", "t"], {"s": ["j1", "j2"]}),
        ([("j1", "s"), ("j1", "t")], ["t"], {"t": ["j1"]}),
        ([("j1", "s")], ["t"], {}),
    ],
)
def test_users_are_the_jobs_that_hold_each_state(
    holds: list[tuple[str, str]], asked: list[str], users: dict[str, list[str]]
) -> None:
    uses = StateUses()
    for job_id, state_id in holds:
        assert uses.hold(job_id, state_id, NEVER_CANCELLED) is False
    assert uses.users(asked) == users
    with uses.fenced(asked) as found:
        assert found == users


def test_release_drops_every_hold_of_the_job_only() -> None:
    uses = StateUses()
    uses.hold("j1", "s", NEVER_CANCELLED)
    uses.hold("j1", "t", NEVER_CANCELLED)
    uses.hold("j2", "t", NEVER_CANCELLED)
    uses.release("j1")
    assert uses.users(["s", "t"]) == {"t": ["j2"]}
    uses.release("j2")
    assert uses.users(["s", "t"]) == {}


def test_a_held_state_is_not_fenced() -> None:
    """A blocked deletion fences nothing: other jobs keep taking holds meanwhile."""
    uses = StateUses()
    uses.hold("j1", "s", NEVER_CANCELLED)
    with uses.fenced(["s", "t"]) as users:
        assert users == {"s": ["j1"]}
        assert uses.hold("j2", "t", NEVER_CANCELLED) is False
        assert uses.hold("j2", "s", NEVER_CANCELLED) is False
    assert uses.users(["s", "t"]) == {"s": ["j1", "j2"], "t": ["j2"]}


def test_a_dry_run_fences_nothing() -> None:
    uses = StateUses()
    with uses.fenced(["s"], fence=False) as users:
        assert users == {}
        assert uses.hold("j1", "s", NEVER_CANCELLED) is False


def test_a_hold_on_a_fenced_state_waits_for_the_deletion_to_end() -> None:
    uses = StateUses()
    token = WaitingToken()
    outcome: list[bool] = []
    with uses.fenced(["s"]) as users:
        assert users == {}
        worker = threading.Thread(target=lambda: outcome.append(uses.hold("j1", "s", token)))
        worker.start()
        assert token.waiting.wait(TIMEOUT), "the hold did not wait for the fence"
        assert outcome == [] and uses.users(["s"]) == {}
        assert uses.hold("j2", "t", NEVER_CANCELLED) is False, "other states are not fenced"
    worker.join(TIMEOUT)
    assert outcome == [True], "it reports that it waited (the state may be gone)"
    assert uses.users(["s"]) == {"s": ["j1"]}


def test_a_hold_the_job_already_has_never_waits() -> None:
    """A job relies on the states it holds: a fence cannot be up on them anyway."""
    uses = StateUses()
    uses.hold("j1", "s", NEVER_CANCELLED)
    assert uses.hold("j1", "s", WaitingToken()) is False


def test_cancelling_the_job_ends_its_wait() -> None:
    uses = StateUses()
    token = WaitingToken()
    failures: list[JobFailure] = []

    def hold() -> None:
        try:
            uses.hold("j1", "s", token)
        except JobFailure as failure:
            failures.append(failure)

    with uses.fenced(["s"]):
        worker = threading.Thread(target=hold)
        worker.start()
        assert token.waiting.wait(TIMEOUT)
        token.cancel()
        worker.join(TIMEOUT)
        assert not worker.is_alive(), "a cancelled job must not wait for the deletion"
    assert [(f.code, f.message) for f in failures] == [("cancelled", "job cancelled")]
    assert uses.users(["s"]) == {}
