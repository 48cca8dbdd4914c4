"""Which states running prepare jobs rely on, and the fence a state deletion puts up.

A running job stands on states that have no row pointing at them yet: its clone is a copy,
a snapshot or an overlay mount of the state it started from (on overlay the state's layer is
a lower of the mounted clone), and the instance or the child state it is about to record
names that state. Deleting such a state would pull files from under a live server (overlay)
or leave the job's result pointing at a state that is gone (every backend). So a job *holds*
each state of its chain from the moment it relies on it — it judged the cached state usable,
or it is about to build it — until the job ends, and a deletion that meets a held state is
blocked (`active_tasks`, naming the jobs) before anything is marked or removed.

The check and the removal are atomic with respect to jobs: a deletion that finds no holder
*fences* its states until it is done, and a job that wants to hold a fenced state waits for
the deletion to end, then finds the state gone and rebuilds it. Jobs take their holds before
any build lock, and a deletion never waits for a hold, so the two cannot deadlock (a deletion
waits for build locks; a job never waits for a fence while holding one).

Within this engine process: engines sharing a store are still kept from removing a layer a
clone stands on by the overlay backend's own refusal (`snapshot/overlay.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlrs_engine.cancel import CancelToken

Users = dict[str, list[str]]
"""State id → ids of the running jobs that hold it (sorted)."""


class StateUses:
    """Holds of running jobs on states, and the fences of deletions under way."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holders: dict[str, set[str]] = {}
        """state id → job ids holding it."""
        self._fenced: dict[str, int] = {}
        """state id → number of deletions fencing it (claims make it at most 1 in practice)."""

    def hold(self, job_id: str, state_id: str, cancel: CancelToken) -> bool:
        """Record that `job_id` relies on `state_id`; returns True when it first had to wait
        for a deletion of that state to end (the caller then re-reads whether it exists).

        A hold the job already has returns at once. Cancelling the job ends the wait with
        the token's `cancelled` failure.
        """
        waited = False
        with self._changed:
            if job_id in self._holders.get(state_id, ()):
                return False
            if state_id not in self._fenced:
                self._holders.setdefault(state_id, set()).add(job_id)
                return False
        unregister = cancel.register(self._wake)
        try:
            with self._changed:
                while state_id in self._fenced and not cancel.cancelled:
                    waited = True
                    self._changed.wait()
                cancel.raise_if_cancelled("job cancelled")
                self._holders.setdefault(state_id, set()).add(job_id)
        finally:
            unregister()
        return waited

    def release(self, job_id: str) -> None:
        """Drop every hold of `job_id` (the job has ended: its clone is gone or handed over)."""
        with self._changed:
            for state_id in [s for s, jobs in self._holders.items() if job_id in jobs]:
                jobs = self._holders[state_id]
                jobs.discard(job_id)
                if not jobs:
                    del self._holders[state_id]
            self._changed.notify_all()

    def users(self, state_ids: Iterable[str]) -> Users:
        """The jobs holding each of `state_ids` (only the held ones are keys)."""
        with self._changed:
            return self._users(state_ids)

    def _users(self, state_ids: Iterable[str]) -> Users:
        return {s: sorted(self._holders[s]) for s in state_ids if self._holders.get(s)}

    @contextmanager
    def fenced(self, state_ids: Iterable[str], *, fence: bool = True) -> Iterator[Users]:
        """Yield the holders of `state_ids`, decided atomically with the fence: when none
        of them is held (and `fence`), no job can take a hold on any of them inside the
        block. When some are held nothing is fenced: the deletion is blocked anyway."""
        wanted = sorted(set(state_ids))
        with self._changed:
            users = self._users(wanted)
            fencing = fence and not users
            if fencing:
                for state_id in wanted:
                    self._fenced[state_id] = self._fenced.get(state_id, 0) + 1
        try:
            yield users
        finally:
            if fencing:
                with self._changed:
                    for state_id in wanted:
                        self._fenced[state_id] -= 1
                        if not self._fenced[state_id]:
                            del self._fenced[state_id]
                    self._changed.notify_all()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
