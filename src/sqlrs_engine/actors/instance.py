"""The Instance actor: owner of one instance's PostgreSQL server (ARCHITECTURE rule 1).

It is the only code that starts, stops or counts the connections of that server once the
job that created it has handed it over. Messages are short (a status probe, a connection
count) or are the server operations themselves; they are serialized per instance, which
is exactly what makes "two concurrent runs against a stopped instance start it once" true.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.runtime.base import LogSink, Runtime, ServerHandle

log = logging.getLogger(__name__)


class InstanceActor(pykka.ThreadingActor):
    """One live instance: its server handle and the runtime that runs it."""

    def __init__(
        self,
        instance_id: str,
        image_id: str,
        handle: ServerHandle | None,
        data_dir: Path,
        runtime: Runtime,
    ) -> None:
        super().__init__()
        self.instance_id = instance_id
        self._image_id = image_id
        self._handle = handle
        self._data_dir = data_dir
        self._runtime = runtime

    def on_start(self) -> None:
        if self._handle is None:
            # Engine restart: the server may still be running (servers outlive the engine).
            self._handle = self._runtime.adopt(self._image_id, self._data_dir)

    def handle(self) -> ServerHandle | None:
        return self._handle

    def is_running(self) -> bool:
        return self._handle is not None and self._runtime.is_running(self._handle)

    def ensure_running(self, log_line: LogSink) -> tuple[ServerHandle, bool]:
        """The running server, restarted from its data dir if it is gone; (handle, restarted)."""
        if self._handle is not None and self._runtime.is_running(self._handle):
            return self._handle, False
        adopted = self._runtime.adopt(self._image_id, self._data_dir)
        if adopted is not None:
            self._handle = adopted
            return adopted, False
        self._handle = self._runtime.start(
            self._image_id, self._data_dir, log_line, NEVER_CANCELLED
        )
        return self._handle, True

    def connections(self) -> int:
        """Client connections right now (0 when the server is not running)."""
        if not self.is_running():
            return 0
        assert self._handle is not None
        return self._runtime.count_connections(self._handle)

    def stop_server(self) -> None:
        """Stop the server now (delete): never raises for a server that is already gone."""
        if self._handle is not None:
            self._runtime.kill(self._handle)
            self._handle = replace(self._handle, pid=None)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("instance actor %s failed: %s", self.instance_id, exception_value)


class InstanceProxy(ActorMemberMixin, pykka.ActorProxy[InstanceActor]):
    handle = proxy_method(InstanceActor.handle)
    is_running = proxy_method(InstanceActor.is_running)
    ensure_running = proxy_method(InstanceActor.ensure_running)
    connections = proxy_method(InstanceActor.connections)
    stop_server = proxy_method(InstanceActor.stop_server)
