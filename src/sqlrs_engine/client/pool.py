"""Instances made ahead of time and deleted off the caller's path (the pytest plugin's engine).

A cache-hit prepare costs a clone and a server start (~0.2 s), a delete a server stop and
a removal (~0.1 s). A test suite asks for one instance per test, one after the other, so doing
both while the test runs, instead of before and after it, takes them off the suite's wall
time. `InstancePool` keeps `prefetch` ready instances per kind of database (prepared in
background threads as soon as one is taken) and deletes released instances in the
background. `close()` deletes what was prefetched but never used and waits for every
deletion, so nothing is left behind by a run that ends normally; a run that is killed leaves
its instances to their TTL.

Every background thread has its own `Client` (a `requests.Session` is not meant to be shared
between threads).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

from sqlrs_engine.client.api import Client
from sqlrs_engine.client.errors import NotFound
from sqlrs_engine.client.models import Instance

log = logging.getLogger(__name__)

WORKERS = 2
"""One thread can prepare the next instance while the other deletes the last one."""


class InstancePool:
    """Prefetched instances by key, background deletion; `close()` cleans up."""

    def __init__(self, make_client: Callable[[], Client], prefetch: int = 1) -> None:
        self._make_client = make_client
        self._prefetch = max(0, prefetch)
        self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="sqlrs")
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        self._ready: dict[Hashable, deque[Future[Instance]]] = {}
        self._deletions: list[Future[None]] = []
        self.errors: list[str] = []
        """Deletions that failed (their instances are left to their TTL)."""

    def acquire(
        self,
        key: Hashable,
        prepare_now: Callable[[], Instance],
        prepare_ahead: Callable[[Client], Instance],
    ) -> Instance:
        """A prefetched instance of `key`, else `prepare_now()`; then prefetch the next ones.

        A failed background prepare is not reported here: `prepare_now` runs instead and
        raises the real error in the caller's thread.
        """
        queue = self._ready.setdefault(key, deque())
        instance: Instance | None = None
        while queue and instance is None:
            future = queue.popleft()
            try:
                instance = future.result()
            except Exception as error:
                log.debug("prefetch of %r failed: %s", key, error)
        if instance is None:
            instance = prepare_now()
        while len(queue) < self._prefetch:
            queue.append(self._executor.submit(self._in_thread, prepare_ahead))
        return instance

    def release(self, instance_id: str) -> None:
        """Delete the instance in the background (forced: clients may still be connected)."""
        with self._lock:
            self._deletions = [f for f in self._deletions if not f.done()]
            self._deletions.append(self._executor.submit(self._delete, instance_id))

    def close(self) -> list[str]:
        """Delete unused prefetched instances, wait for every deletion; the failures."""
        for queue in self._ready.values():
            while queue:
                try:
                    instance = queue.popleft().result()
                except Exception as error:
                    log.debug("prefetch failed: %s", error)
                    continue
                self.release(instance.instance_id)
        with self._lock:
            pending = list(self._deletions)
        for future in pending:
            future.result()
        self._executor.shutdown(wait=True)
        for client in self._clients:
            client.close()
        return list(self.errors)

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make_client()
            with self._lock:
                self._clients.append(client)
        return client

    def _in_thread(self, prepare: Callable[[Client], Instance]) -> Instance:
        return prepare(self._client())

    def _delete(self, instance_id: str) -> None:
        try:
            self._client().delete_instance(instance_id, force=True)
        except NotFound:
            pass  # already gone: expired, or deleted by the test itself
        except Exception as error:
            with self._lock:
                self.errors.append(f"instance {instance_id}: {error}")
