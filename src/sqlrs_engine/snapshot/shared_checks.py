"""Concurrent checks of one thing share a run that starts after each of them asked.

A burst of cache hits on one state validates that state once per hit: dozens of `stat`s
each, every one of which hands the GIL to another thread on this 2-core machine, so the
checks of a burst cost more than the rest of its hits together. Yet their answers can only
differ if the state changed between them. `SharedChecks.run` lets callers that ask while a
check of the same key is running wait for the *next* run — one that starts after all of
them asked — and share its answer:

- **No stale answer.** Every caller gets the result of a run that began after it called, so
  a change made before a caller asked (a state damaged, then a prepare sent) is seen exactly
  as if the caller had looked itself. A run already under way when a caller arrives may have
  looked before that change, so it is never joined.
- **At most two runs per key**: the running one and the next one, which has not started,
  however many callers wait. A burst of N checks costs two or three runs, not N.
- **Failures are shared**: an exception of the run is raised to each of its callers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Run(Generic[T]):
    """One run of a check and the callers waiting for it."""

    def __init__(self) -> None:
        self.started = False
        self.callers = 1
        """Callers that take this run's answer (read by tests: who is waiting)."""
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def answer(self) -> T:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set before `done`


class _Key(Generic[T]):
    """The runs of one key: the current one and the next (not started) one."""

    def __init__(self) -> None:
        self.current: _Run[T] | None = None
        self.next: _Run[T] | None = None


class SharedChecks(Generic[T]):
    """Runs checks keyed by what they check; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key[T]] = {}

    def run(self, key: Hashable, check: Callable[[], T]) -> T:
        """`check()`'s result from a run that started after this call (see the module)."""
        with self._lock:
            runs = self._keys.setdefault(key, _Key())
            current = runs.current
            if current is not None and not current.started:
                return_of: _Run[T] | None = current  # it starts later than this call
            elif current is not None and runs.next is not None:
                return_of = runs.next
            else:
                return_of = None
                mine: _Run[T] = _Run()
                if current is None:
                    runs.current = mine
                else:
                    runs.next = mine
            if return_of is not None:
                return_of.callers += 1
        if return_of is not None:
            return return_of.answer()
        if current is not None:
            current.done.wait()  # it made this run the current one as it ended
        with self._lock:
            mine.started = True
        try:
            mine.result = check()
        except BaseException as error:
            mine.error = error
        finally:
            with self._lock:
                runs.current, runs.next = runs.next, None
                if runs.current is None:
                    del self._keys[key]
            mine.done.set()
        return mine.answer()
