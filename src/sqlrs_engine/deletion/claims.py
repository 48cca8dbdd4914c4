"""Per-object claims: deletions of independent objects never wait for each other.

One global lock used to serialize every deletion, so an instance whose server hung (stopped
with SIGSTOP: its connection probe waits 10 s) held up the force-delete of an unrelated
instance (issue 14). A deletion now claims exactly the objects of its tree (`instance:<id>`,
`state:<id>`, `job:<id>`); trees that share an object are serialized, the others run at the
same time. Claims of one deletion are taken together, so two deletions cannot deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Claims:
    """Exclusive claims on string keys, taken as a set."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: set[str] = set()

    @contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[None]:
        wanted = set(keys)
        with self._changed:
            self._changed.wait_for(lambda: not wanted & self._held)
            self._held |= wanted
        try:
            yield
        finally:
            with self._changed:
                self._held -= wanted
                self._changed.notify_all()

    def held(self) -> frozenset[str]:
        with self._changed:
            return frozenset(self._held)
