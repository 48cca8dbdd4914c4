"""SharedChecks: concurrent checks share a run that started after each of them asked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sqlrs_engine.snapshot.shared_checks import SharedChecks

WAIT = 10.0


class GatedCheck:
    """A check whose runs are numbered and which holds each run until released."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.concurrent = 0
        self.most_concurrent = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.runs += 1
            number = self.runs
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
        self.started.release()
        assert self.release.acquire(timeout=WAIT)
        with self._lock:
            self.concurrent -= 1
        return number


class Caller(threading.Thread):
    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as error:  # handed to the test
            self.error = error


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


def callers_of_next(checks: SharedChecks[Any], key: str) -> int:
    runs = checks._keys.get(key)
    return runs.next.callers if runs is not None and runs.next is not None else 0


def test_calls_one_after_another_each_look_again() -> None:
    checks: SharedChecks[int] = SharedChecks()
    counter = iter(range(100))
    assert [checks.run("k", lambda: next(counter)) for _ in range(3)] == [0, 1, 2]
    assert checks._keys == {}, "nothing is kept between calls"


def test_callers_during_a_run_share_the_next_run_not_the_current_one() -> None:
    checks: SharedChecks[int] = SharedChecks()
    check = GatedCheck()
    first = Caller(lambda: checks.run("state", check))
    first.start()
    assert check.started.acquire(timeout=WAIT)  # run 1 is looking
    later = [Caller(lambda: checks.run("state", check)) for _ in range(5)]
    for caller in later:
        caller.start()
    wait_until(lambda: callers_of_next(checks, "state") == 5)
    assert check.runs == 1, "the next run waits for the current one"
    check.release.release()  # run 1 ends: its answer is the first caller's only
    first.join(WAIT)
    assert first.result == 1
    assert check.started.acquire(timeout=WAIT)  # run 2, for the five who came later
    check.release.release()
    for caller in later:
        caller.join(WAIT)
    assert [caller.result for caller in later] == [2] * 5
    assert check.runs == 2 and check.most_concurrent == 1
    assert checks._keys == {}


def test_a_caller_that_comes_while_the_next_run_waits_joins_it() -> None:
    """Run 2 has not started, so it starts after this caller too: one more run is not
    needed, and no more than two are ever lined up."""
    checks: SharedChecks[int] = SharedChecks()
    check = GatedCheck()
    callers = [Caller(lambda: checks.run("state", check))]
    callers[0].start()
    assert check.started.acquire(timeout=WAIT)
    for expected in range(1, 4):
        callers.append(Caller(lambda: checks.run("state", check)))
        callers[-1].start()
        wait_until(lambda n=expected: callers_of_next(checks, "state") == n)
    for _ in range(2):
        check.release.release()
    for caller in callers:
        caller.join(WAIT)
    assert [c.result for c in callers] == [1, 2, 2, 2]
    assert check.runs == 2


def test_different_keys_do_not_wait_for_each_other() -> None:
    checks: SharedChecks[int] = SharedChecks()
    check = GatedCheck()
    callers = [Caller(lambda key=key: checks.run(key, check)) for key in ("a", "b")]
    for caller in callers:
        caller.start()
    for _ in callers:
        assert check.started.acquire(timeout=WAIT)
    assert check.most_concurrent == 2
    for _ in callers:
        check.release.release()
    for caller in callers:
        caller.join(WAIT)
    assert sorted(c.result for c in callers) == [1, 2]


def test_a_failing_run_fails_each_of_its_callers_and_the_next_call_looks_again() -> None:
    checks: SharedChecks[int] = SharedChecks()
    gate = GatedCheck()
    failures = 0

    def failing() -> int:
        nonlocal failures
        gate()
        failures += 1
        raise OSError("disk gone")

    first = Caller(lambda: checks.run("state", failing))
    first.start()
    assert gate.started.acquire(timeout=WAIT)
    later = [Caller(lambda: checks.run("state", failing)) for _ in range(3)]
    for caller in later:
        caller.start()
    wait_until(lambda: callers_of_next(checks, "state") == 3)
    gate.release.release()
    gate.release.release()
    for caller in [first, *later]:
        caller.join(WAIT)
        assert isinstance(caller.error, OSError)
    assert failures == 2
    assert checks.run("state", lambda: 7) == 7
    with pytest.raises(OSError):
        checks.run("state", failing_now)


def failing_now() -> int:
    raise OSError("still gone")
