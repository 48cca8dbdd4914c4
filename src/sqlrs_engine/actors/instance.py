"""The Instance actor: owner of one instance's PostgreSQL server (ARCHITECTURE rule 1).

It is the only code that starts, stops or counts the connections of that server once the
job that created it has handed it over. Messages are short (a status probe, a connection
count) or are the server operations themselves; they are serialized per instance, which
is exactly what makes "two concurrent runs against a stopped instance start it once" true:
the second `ensure_running` is handled after the first has started the server, and finds it
running.

Client programs (a run's psql) are *not* run here: the caller gets the handle and the runtime
and runs them on its own thread, so a long run never blocks this mailbox (rule 3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from sqlrs_engine.cancel import NEVER_CANCELLED
from sqlrs_engine.dbms.postgres import last_port
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.faults import fault_point
from sqlrs_engine.runtime.base import LogSink, Runtime, ServerHandle, pgdata_of

if TYPE_CHECKING:
    from sqlrs_engine.actors.registry import RegistryProxy

log = logging.getLogger(__name__)

RESTARTING = "run: server not running - restarting"
RESTORING = "run: restoring runtime"
STARTED = "run: server started"
"""Recovery log lines (SPEC §5 "missing container", adapted to the host runtime)."""

RECORD_TIMEOUT = 30.0
"""Seconds to wait for the Registry to store a new runtime_id (it never waits on us)."""


@dataclass(frozen=True)
class RunningServer:
    """The answer of `ensure_running`: what a caller needs to run a client program."""

    handle: ServerHandle
    runtime: Runtime
    restarted: bool
    """True when this call started the server (recovery), False when it was running."""


class InstanceActor(pykka.ThreadingActor):
    """One live instance: its server handle and the runtime that runs it."""

    def __init__(
        self,
        instance_id: str,
        image_id: str,
        handle: ServerHandle | None,
        data_dir: Path,
        runtime: Runtime,
        locate_data_dir: Callable[[], Path] | None = None,
        secret: str | None = None,
    ) -> None:
        """`secret`: the instance's password (its row's); None for an instance created by an
        engine without per-instance credentials, which gets one at its next server start."""
        super().__init__()
        self._secret = secret if secret is not None else (handle.password if handle else None)
        self.instance_id = instance_id
        self._image_id = image_id
        self._handle = handle
        self._retired = False
        self._data_dir = data_dir
        self._runtime = runtime
        self._locate_data_dir = locate_data_dir
        """Finds (and, for a layered clone whose mount is gone, remounts) the data dir."""

    def on_start(self) -> None:
        if self._handle is None:
            # Engine restart: the server may still be running (servers outlive the engine).
            self._handle = self._with_secret(self._runtime.adopt(self._image_id, self._data_dir))
            if self._handle is not None:
                log.info(
                    "instance %s: adopted its running server %s",
                    self.instance_id,
                    self._handle.runtime_id,
                )
            else:
                log.info(
                    "instance %s: its server is not running; the next run restarts it from %s",
                    self.instance_id,
                    self._data_dir,
                )

    def _with_secret(self, handle: ServerHandle | None) -> ServerHandle | None:
        """An adopted server's handle, completed with the password (adopt cannot know it)."""
        if handle is None or self._secret is None:
            return handle
        return replace(handle, password=self._secret)

    def handle(self) -> ServerHandle | None:
        return self._handle

    def is_running(self) -> bool:
        return self._handle is not None and self._runtime.is_running(self._handle)

    def ensure_running(
        self, log_line: LogSink, registry: RegistryProxy | None = None
    ) -> RunningServer:
        """The running server, restarted from its data dir if it is gone (SPEC §5 recovery).

        A restart logs `RESTARTING`, `RESTORING`, `STARTED` through `log_line` (called on this
        actor's thread; it must not block) and, when `registry` is given, records the new
        runtime_id there before returning. Raises `JobFailure` when the server cannot be
        started (for example because the instance's data directory is gone).
        """
        if self._retired:
            raise JobFailure(
                "not_found", "instance not found", f"instance {self.instance_id} is being deleted"
            )
        previous = self._handle
        if previous is not None and self._runtime.is_running(previous):
            return RunningServer(previous, self._runtime, False)
        adopted = self._with_secret(self._runtime.adopt(self._image_id, self._data_dir))
        if adopted is not None:
            # Someone (a previous engine) started it; remember it, and its id if it changed.
            self._handle = adopted
            if previous is None or previous.runtime_id != adopted.runtime_id:
                self._record_runtime(registry, adopted)
            return RunningServer(adopted, self._runtime, False)
        log_line(RESTARTING)
        if previous is not None:
            # The dead server's leftovers: orphaned backends still attached to its shared
            # memory (they would make the new postmaster refuse to start), its stale
            # postmaster.pid, its port reservation and socket directory.
            self._runtime.kill(previous)
        if self._locate_data_dir is not None:
            self._data_dir = self._locate_data_dir()
        if not self._data_dir.is_dir():
            raise JobFailure(
                "internal_error",
                "instance runtime dir is missing",
                f"{self._data_dir} does not exist; the instance cannot be restarted",
            )
        log_line(RESTORING)
        # Keep the instance's DSN: listen on the port it had, when that port is free.
        port = previous.port if previous is not None else last_port(pgdata_of(self._data_dir))
        handle = self._runtime.start(
            self._image_id,
            self._data_dir,
            self._server_log,
            NEVER_CANCELLED,
            port,
            password=self._secret,
        )
        self._handle = handle
        self._secret = handle.password
        fault_point("run:server-restarted")
        log_line(STARTED)
        log.info("instance %s: server restarted as %s", self.instance_id, handle.runtime_id)
        if port is not None and handle.port != port:
            log.warning(
                "instance %s: port %d was taken by another process; its server now listens "
                "on port %d, and its DSN changes accordingly",
                self.instance_id,
                port,
                handle.port,
            )
        self._record_runtime(registry, handle)
        return RunningServer(handle, self._runtime, True)

    def connections(self) -> int:
        """Client connections right now (0 when the server is not running)."""
        if not self.is_running():
            return 0
        assert self._handle is not None
        return self._runtime.count_connections(self._handle)

    def stop_server(self) -> None:
        """Stop the server now: never raises for a server that is already gone."""
        if self._handle is not None:
            self._runtime.kill(self._handle)
            self._handle = replace(self._handle, pid=None)

    def retire(self) -> None:
        """The instance is being deleted: stop its server and never start it again.

        Sent before its files are removed. Messages are handled one at a time, so a run's
        `ensure_running` either finished before (its server is stopped here) or comes after
        and is refused: no restart can remount or reuse a data dir that is going away.
        """
        self._retired = True
        self.stop_server()

    def reinstate(self) -> None:
        """The deletion failed and the instance stays: runs may restart its server again."""
        self._retired = False

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("instance actor %s failed: %s", self.instance_id, exception_value)

    def _server_log(self, line: str) -> None:
        """pg_ctl's output during a restart goes to the engine log, not to the run's stream."""
        log.info("instance %s: %s", self.instance_id, line)

    def _record_runtime(self, registry: RegistryProxy | None, handle: ServerHandle) -> None:
        """Store the new runtime_id (the Registry owns state.db); a failure is only logged:
        the server runs either way, and the next restart records it again."""
        if registry is None:
            return
        try:
            registry.set_instance_runtime(
                self.instance_id, handle.runtime_id, handle.port, handle.password
            ).get(timeout=RECORD_TIMEOUT)
        except Exception:
            log.exception(
                "instance %s: cannot record runtime id %s", self.instance_id, handle.runtime_id
            )


class InstanceProxy(ActorMemberMixin, pykka.ActorProxy[InstanceActor]):
    handle = proxy_method(InstanceActor.handle)
    is_running = proxy_method(InstanceActor.is_running)
    ensure_running = proxy_method(InstanceActor.ensure_running)
    connections = proxy_method(InstanceActor.connections)
    stop_server = proxy_method(InstanceActor.stop_server)
    retire = proxy_method(InstanceActor.retire)
    reinstate = proxy_method(InstanceActor.reinstate)


def instance_proxy(ref: pykka.ActorRef[Any]) -> InstanceProxy:
    """The typed proxy of an Instance actor's ref (as the Registry hands it out)."""
    proxy: InstanceProxy = ref.proxy()  # type: ignore[assignment]
    return proxy
