"""Event mailboxes: how persisted job events reach live NDJSON streams.

The Registry owns one `EventHub`. A subscriber gets the events already stored (the backlog)
and a `queue.Queue` that receives every later event of the job, then an `END` marker once
the job is terminal and its final event was delivered. Publishing never blocks: a slow or
vanished reader only grows its own queue, and is dropped when it unsubscribes.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()
"""Put in a mailbox after the job's last event; the stream ends when it reads this."""


class Mailbox(queue.Queue[Event | _End]):
    """An unbounded queue that also wakes its reader (the stream loop) when items arrive."""

    def __init__(self) -> None:
        super().__init__()
        self._waker: Callable[[], None] | None = None

    def set_waker(self, waker: Callable[[], None]) -> None:
        """Call `waker()` after every put from now on (and now, if items are waiting)."""
        with self.mutex:
            self._waker = waker
            pending = bool(self.queue)
        if pending:
            waker()

    def put_many(self, items: Iterable[Event | _End]) -> None:
        """Put a batch with one wake-up."""
        batch = list(items)
        with self.mutex:
            self.queue.extend(batch)
            self.unfinished_tasks += len(batch)
            self.not_empty.notify_all()
            waker = self._waker
        if waker is not None:
            waker()

    def take(self, limit: int) -> list[Event | _End]:
        """Up to `limit` items, without waiting."""
        with self.mutex:
            count = min(limit, len(self.queue))
            return [self.queue.popleft() for _ in range(count)]

    def _put(self, item: Event | _End) -> None:
        super()._put(item)
        if self._waker is not None:
            self._waker()  # only signals the loop; never calls back into this queue


@dataclass
class Subscription:
    """What a new events stream needs: backlog, a mailbox for later events, counts."""

    token: int
    total: int
    """Events stored when the subscription was made."""
    terminal: bool
    backlog: list[Event]
    mailbox: Mailbox = field(default_factory=Mailbox)


class EventHub:
    """Live subscribers per job. Owned by the Registry actor; not thread-safe by itself."""

    def __init__(self) -> None:
        self._subscribers: dict[str, dict[int, Mailbox]] = {}
        self._open: dict[str, set[int]] = {}
        """Tokens of every stream not yet unsubscribed, also after the job ended (its
        reader may still be draining the last events): retention must not remove them."""
        self._tokens = itertools.count(1)

    def subscribe(
        self, job_id: str, backlog: list[Event], total: int, terminal: bool
    ) -> Subscription:
        sub = Subscription(
            token=next(self._tokens), total=total, terminal=terminal, backlog=backlog
        )
        self._open.setdefault(job_id, set()).add(sub.token)
        if terminal:
            sub.mailbox.put(END)
        else:
            self._subscribers.setdefault(job_id, {})[sub.token] = sub.mailbox
        return sub

    def unsubscribe(self, job_id: str, token: int) -> None:
        tokens = self._open.get(job_id)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._open[job_id]
        mailboxes = self._subscribers.get(job_id)
        if mailboxes is not None:
            mailboxes.pop(token, None)
            if not mailboxes:
                del self._subscribers[job_id]

    def publish(self, job_id: str, event: Event) -> None:
        for mailbox in self._subscribers.get(job_id, {}).values():
            mailbox.put(event)

    def publish_many(self, job_id: str, events: list[Event]) -> None:
        for mailbox in self._subscribers.get(job_id, {}).values():
            mailbox.put_many(events)

    def close(self, job_id: str) -> None:
        """The job is terminal and its last event was published: end every stream."""
        for mailbox in self._subscribers.pop(job_id, {}).values():
            mailbox.put(END)

    def close_all(self) -> None:
        for job_id in list(self._subscribers):
            self.close(job_id)

    def subscriber_count(self, job_id: str) -> int:
        return len(self._subscribers.get(job_id, {}))

    def has_open_stream(self, job_id: str) -> bool:
        """Whether any events stream of the job is still being read (even of a finished job)."""
        return bool(self._open.get(job_id))
