"""affinity: the engine's threads on one CPU, the programs it starts on all of them.

The pinning tests pin this test process for a moment and always give its CPUs back (the
`restores_cpus` fixture), so nothing after them runs on one CPU.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator

import pytest

from sqlrs_engine import affinity
from sqlrs_engine.affinity import Pinning, choose_cpu, cpu_list, current_cpu, pin_threads
from sqlrs_engine.process import ProcessError, run
from tests.support.cpus import EVERY_CPU, allowed_list, needs_two_cpus, thread_cpus


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        (set(), ""),
        ({0}, "0"),
        ({0, 1}, "0-1"),
        ({1, 3}, "1,3"),
        ({5, 0, 2, 1}, "0-2,5"),
        ({0, 2, 3, 4, 7, 8}, "0,2-4,7-8"),
    ],
)
def test_cpu_list_is_the_kernels_notation(cpus: set[int], text: str) -> None:
    assert cpu_list(cpus) == text


@pytest.mark.parametrize(
    ("allowed", "running_on", "chosen"),
    [
        ({0, 1}, 1, 1),
        ({0, 1}, 0, 0),
        ({2, 3}, None, 2),  # /proc did not say
        ({2, 3}, 0, 2),  # moved out of the set meanwhile
    ],
)
def test_choose_cpu_keeps_the_one_the_engine_runs_on(
    allowed: set[int], running_on: int | None, chosen: int
) -> None:
    assert choose_cpu(frozenset(allowed), running_on) == chosen


def test_current_cpu_is_one_this_thread_may_run_on() -> None:
    assert current_cpu() in EVERY_CPU


@pytest.fixture
def restores_cpus() -> Iterator[list[Pinning]]:
    """Pinnings made by the test; released (every thread back on every CPU) afterwards."""
    made: list[Pinning] = []
    try:
        yield made
    finally:
        for pinning in made:
            pinning.release()
        affinity.set_every_thread(EVERY_CPU)


class _Parked:
    """A thread that waits until told to end (a thread of the engine doing nothing)."""

    def __init__(self) -> None:
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._go.wait, daemon=True)
        self._thread.start()
        assert self._thread.native_id is not None
        self.tid: int = self._thread.native_id

    def end(self) -> None:
        self._go.set()
        self._thread.join()


@needs_two_cpus
def test_pinning_puts_every_thread_on_one_cpu_and_release_gives_them_back(
    restores_cpus: list[Pinning],
) -> None:
    before = _Parked()
    pinning = pin_threads(True)
    restores_cpus.append(pinning)
    after = _Parked()  # started by a pinned thread: inherits the pin
    try:
        assert pinning.cpu in EVERY_CPU and pinning.every_cpu == EVERY_CPU
        assert f"CPU {pinning.cpu}" in pinning.reason
        spawners = {t.native_id for t in threading.enumerate() if t.name.startswith("spawner")}
        pinned = {tid: cpus for tid, cpus in thread_cpus().items() if tid not in spawners}
        assert set(pinned.values()) == {frozenset({pinning.cpu})}
        assert {before.tid, after.tid, threading.get_native_id()} <= set(pinned)
        pinning.release()
        assert set(thread_cpus().values()) == {EVERY_CPU}
        pinning.release()  # twice is harmless
        assert set(thread_cpus().values()) == {EVERY_CPU}
    finally:
        before.end()
        after.end()


@needs_two_cpus
@pytest.mark.parametrize("die_with_parent", [False, True])
def test_a_program_started_while_pinned_gets_every_cpu(
    restores_cpus: list[Pinning], die_with_parent: bool
) -> None:
    restores_cpus.append(pin_threads(True))
    status = run(["cat", "/proc/self/status"], check=True, die_with_parent=die_with_parent)
    assert allowed_list(status.output) == cpu_list(EVERY_CPU)
    # The control: the same program forked by a pinned thread itself keeps one CPU.
    plain = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True)
    assert allowed_list(plain.stdout) == str(restores_cpus[0].cpu)


@needs_two_cpus
def test_many_programs_started_at_once_while_pinned_all_get_every_cpu(
    restores_cpus: list[Pinning],
) -> None:
    restores_cpus.append(pin_threads(True))
    found: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        output = run(["cat", "/proc/self/status"], check=True).output
        with lock:
            found.append(allowed_list(output))

    threads = [threading.Thread(target=one) for _ in range(3 * affinity.SPAWNER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [cpu_list(EVERY_CPU)] * len(threads)


@needs_two_cpus
def test_a_program_that_cannot_start_still_says_so_while_pinned(
    restores_cpus: list[Pinning],
) -> None:
    restores_cpus.append(pin_threads(True))
    with pytest.raises(ProcessError, match="cannot start no-such-program-sqlrs"):
        run(["no-such-program-sqlrs"])


@needs_two_cpus
def test_only_one_pinning_at_a_time(restores_cpus: list[Pinning]) -> None:
    first = pin_threads(True)
    restores_cpus.append(first)
    second = pin_threads(True)
    assert second.cpu is None and "already pinned" in second.reason
    second.release()  # does not undo the first
    assert set(thread_cpus().values()) >= {frozenset({first.cpu})}


def test_disabled_pinning_changes_nothing(restores_cpus: list[Pinning]) -> None:
    pinning = pin_threads(False)
    restores_cpus.append(pinning)
    assert pinning.cpu is None and "pinThreads is false" in pinning.reason
    assert set(thread_cpus().values()) == {EVERY_CPU}


def test_a_process_with_one_cpu_is_not_pinned(restores_cpus: list[Pinning]) -> None:
    """pin_threads reads the CPUs of the thread that calls it: here a thread given one."""
    outcome: list[Pinning] = []

    def on_one_cpu() -> None:
        os.sched_setaffinity(0, {min(EVERY_CPU)})
        outcome.append(pin_threads(True))

    thread = threading.Thread(target=on_one_cpu)
    thread.start()
    thread.join()
    restores_cpus.extend(outcome)
    assert outcome[0].cpu is None and outcome[0].reason == "one CPU: engine threads not pinned"
    assert frozenset(os.sched_getaffinity(0)) == EVERY_CPU
