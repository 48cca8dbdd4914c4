"""Deleting instances whose TTL has passed (`expires_at`, set from a prepare's `ttl`).

The reference engine has the column but never sets it. Here a prepare may ask for a `ttl`,
and this reaper deletes the instance once it has expired, so the instances of a test process
that died (and never sent its DELETE) do not pile up. It deletes exactly as
`DELETE /v1/instances/{id}` without `force` would: an instance that still has client
connections is left alone and tried again at the next check, so a TTL never pulls a database
out from under a connected client.

One thread, one check every `interval` seconds; a failure to delete one instance is logged
and retried at the next check, never fatal to the engine.
"""

from __future__ import annotations

import logging
import threading

import pykka

from sqlrs_engine.actors.registry import RegistryProxy
from sqlrs_engine.deletion.service import DeletionService
from sqlrs_engine.errors import ApiError

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
"""Seconds between checks: one indexed query on an idle engine, an expiry is late by < 1 s."""

ASK_TIMEOUT = 60.0


class ExpiryReaper:
    """Deletes expired instances in the background until stopped."""

    def __init__(
        self,
        registry: RegistryProxy,
        deletion: DeletionService,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self._registry = registry
        self._deletion = deletion
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting: set[str] = set()
        """Expired instances kept because of connections (logged once, not every second)."""
        self._failing: set[str] = set()
        """Expired instances whose deletion failed (logged once; retried every check)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="expiry-reaper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reap_once()
            except (pykka.ActorDeadError, pykka.Timeout):
                return  # the Registry is gone: the engine is stopping
            except Exception:
                log.exception("expiry check failed; retrying in %.0fs", self._interval)
            self._stop.wait(self._interval)

    def reap_once(self) -> list[str]:
        """Delete every expired instance without connections; returns the ids deleted."""
        expired: list[str] = self._registry.expired_instance_ids().get(timeout=ASK_TIMEOUT)
        deleted = []
        for instance_id in expired:
            if self._stop.is_set():
                break
            if self._delete(instance_id):
                deleted.append(instance_id)
        self._waiting &= set(expired)
        self._failing &= set(expired)
        return deleted

    def _delete(self, instance_id: str) -> bool:
        try:
            _status, body = self._deletion.delete_instance(instance_id, force=False, dry_run=False)
        except ApiError as error:
            if error.status == 404:
                return False  # deleted meanwhile by a client
            if instance_id not in self._failing:
                log.error(
                    "expired instance %s: delete failed (retrying every %gs): %s %s",
                    instance_id,
                    self._interval,
                    error.message,
                    error.details or "",
                )
                self._failing.add(instance_id)
            return False
        if body.get("outcome") == "deleted":
            log.info("instance %s expired and was deleted", instance_id)
            self._waiting.discard(instance_id)
            self._failing.discard(instance_id)
            return True
        if instance_id not in self._waiting:
            connections = body.get("root", {}).get("connections", 0)
            log.info(
                "instance %s expired but has %d connection(s); deleting it once they close",
                instance_id,
                connections,
            )
            self._waiting.add(instance_id)
        return False
