"""The engine's own threads on one CPU; the programs it starts on every CPU it was given.

Why: the engine is CPython, so one thread at a time runs Python code (the GIL), yet it has
dozens of threads (HTTP workers, the Registry and other actors, the stream loop). Spread over
CPUs, every hand-off of the GIL to a thread that last ran on another CPU is a cross-CPU
wake-up — an inter-processor interrupt, dear in a virtual machine — and a burst of requests
makes thousands of them: each system call a thread makes while another waits for the GIL is
one. On one CPU the same hand-off is a plain context switch. Measured on a 2-CPU VM (same
code, A/B in one run), a burst of 16 pooled cache hits served a fifth more instances per second
with the engine's threads on one CPU (docs/performance.md, "Engine threads on one CPU"; a
burst through jobs, across full runs before and after, about half more). The engine's Python
needs no second CPU; what does — PostgreSQL, psql, pgbench, Liquibase, `cp` — runs in child
processes, and those get every CPU back.

A child inherits the CPU set of the thread that forks it, so while the threads are pinned,
`process.spawn` forks on a *spawner* thread that keeps the engine's original CPU set
(`fork_with_every_cpu`): the child starts with the whole set, before it can run or fork
anything, and without the `preexec_fn` that is unsafe in a threaded program.

`pin_threads` is called once at start-up (config `engine.pinThreads`, default true) and
`Pinning.release` at stop (an engine run inside another program, such as a test, gives the
CPUs back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

SPAWNER_THREADS = 4
"""Forks that may run at once while pinned (a fork of the engine takes a few milliseconds;
jobs that start their programs at the same moment should not queue behind one another)."""


def cpu_list(cpus: Iterable[int]) -> str:
    """`{0, 1, 2, 5}` → `"0-2,5"` (the kernel's and taskset's notation), for the log."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = prev = None
    for cpu in [*ordered, None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def current_cpu() -> int | None:
    """The CPU the calling thread runs on now (field 39 of /proc/thread-self/stat)."""
    try:
        with open("/proc/thread-self/stat", encoding="ascii") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return int(fields[36])  # field 3 (the state) is fields[0]
    except (IndexError, ValueError):
        return None


def choose_cpu(allowed: frozenset[int], running_on: int | None) -> int:
    """The CPU to pin to: the one the engine runs on now (engines started at once spread as
    the kernel spread them), or the lowest it may use."""
    return running_on if running_on in allowed else min(allowed)


def set_every_thread(cpus: frozenset[int]) -> None:
    """Give every thread of this process the CPU set `cpus`.

    A thread started meanwhile inherits its creator's set: if its creator was already set, it
    has `cpus`; otherwise it shows up in the next listing. So list again until nothing new.
    """
    done: set[int] = set()
    while True:
        fresh = {int(tid) for tid in os.listdir("/proc/self/task")} - done
        if not fresh:
            return
        for tid in fresh:
            with contextlib.suppress(ProcessLookupError):  # the thread has ended
                os.sched_setaffinity(tid, cpus)
        done |= fresh


@dataclass
class Pinning:
    """The outcome of `pin_threads`: where the engine's threads run, and how to undo it."""

    cpu: int | None
    """The engine's CPU; None when its threads are not pinned."""
    every_cpu: frozenset[int]
    """The CPUs the process had: what its children get."""
    reason: str
    """One line for the engine log."""
    _spawners: ThreadPoolExecutor | None = field(default=None, repr=False)

    def fork(self, start: Callable[[], T]) -> T:
        """`start()` (which forks a child) on a thread with every CPU, when pinned."""
        spawners = self._spawners
        if spawners is not None:
            try:
                future = spawners.submit(start)
            except RuntimeError:  # released meanwhile: the threads have their CPUs back
                pass
            else:
                return future.result()
        return start()

    def release(self) -> None:
        """Give every thread its CPUs back; children fork on their own thread again."""
        global _current
        if self.cpu is None:
            return
        with _lock:
            if _current is self:
                _current = None
            set_every_thread(self.every_cpu)
            spawners, self._spawners = self._spawners, None
        if spawners is not None:
            spawners.shutdown(wait=True)
        self.cpu = None


_lock = threading.Lock()
_current: Pinning | None = None


def pin_threads(enabled: bool) -> Pinning:
    """Pin every thread of the engine to one CPU (see the module docstring), unless `enabled`
    is false or there is nothing to gain (one CPU); threads started later inherit it."""
    global _current
    with _lock:
        if _current is not None:
            return Pinning(None, _current.every_cpu, "threads already pinned by another engine")
        every_cpu = frozenset(os.sched_getaffinity(0))
        if not enabled:
            return Pinning(None, every_cpu, "engine.pinThreads is false: threads on every CPU")
        if len(every_cpu) < 2:
            return Pinning(None, every_cpu, "one CPU: engine threads not pinned")
        cpu = choose_cpu(every_cpu, current_cpu())

        def keep_every_cpu() -> None:
            try:
                os.sched_setaffinity(0, every_cpu)
            except OSError as error:  # the CPU set shrank since: children get what is left
                log.warning("a spawner thread keeps one CPU: %s", error)

        spawners = ThreadPoolExecutor(
            max_workers=SPAWNER_THREADS,
            thread_name_prefix="spawner",
            initializer=keep_every_cpu,
        )
        pinning = Pinning(
            cpu,
            every_cpu,
            f"engine threads on CPU {cpu}; child processes on CPUs {cpu_list(every_cpu)}",
            spawners,
        )
        set_every_thread(frozenset({cpu}))
        _current = pinning
    return pinning


def fork_with_every_cpu(start: Callable[[], T]) -> T:
    """Run `start` (a `subprocess.Popen(...)`) so that the child it forks gets every CPU the
    engine was given: on a spawner thread while the engine's threads are pinned, else here."""
    pinning = _current
    return pinning.fork(start) if pinning is not None else start()
