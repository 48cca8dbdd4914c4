"""A `Runtime` without PostgreSQL, to provoke faults a real server won't produce on demand.

Data directories are real (PG_VERSION files and all, so the real snapshot backend works on
them); "servers" are just handles. `run_client` does whatever the test asks: succeed, fail,
raise, or hang until cancelled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure, cancelled
from sqlrs_engine.runtime.base import (
    CANNOT_RESOLVE_IMAGE,
    LogSink,
    OutputSink,
    ServerHandle,
    pgdata_of,
)

RESOLVED = "postgres@host-15.18"

ClientBehaviour = Callable[[Sequence[str], OutputSink, CancelToken], int]


def succeed(_args: Sequence[str], on_output: OutputSink, _cancel: CancelToken) -> int:
    on_output("stdout", b"CREATE TABLE\n")
    return 0


def raise_error(_args: Sequence[str], _on_output: OutputSink, _cancel: CancelToken) -> int:
    raise RuntimeError("runtime exploded")


def hang(_args: Sequence[str], _on_output: OutputSink, cancel: CancelToken) -> int:
    cancel.wait(300)
    raise cancelled()


class FakeRuntime:
    kind = "fake"

    def __init__(self, client: ClientBehaviour = succeed) -> None:
        self.client = client
        self.unservable_images: set[str] = set()
        """Digest ids `check_image` refuses (every other one is served)."""
        self.running: set[Path] = set()
        self.killed: list[Path] = []
        self._lock = threading.Lock()
        self._ports = iter(range(20000, 30000))

    def resolve_image(self, image_id: str, log: LogSink, cancel: CancelToken) -> str:
        log(f"resolved image {RESOLVED}")
        return RESOLVED

    def check_image(self, image_id: str) -> None:
        if image_id in self.unservable_images:
            raise JobFailure("internal_error", CANNOT_RESOLVE_IMAGE, f"fake serves {RESOLVED}")

    def init_base(
        self, resolved_image_id: str, data_dir: Path, log: LogSink, cancel: CancelToken
    ) -> None:
        pgdata = pgdata_of(data_dir)
        pgdata.mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text("15\n")

    def prepare_data_dir(self, data_dir: Path) -> None:
        return None

    def start(
        self,
        resolved_image_id: str,
        data_dir: Path,
        log: LogSink,
        cancel: CancelToken,
        preferred_port: int | None = None,
        password: str | None = None,
    ) -> ServerHandle:
        cancel.raise_if_cancelled()
        with self._lock:
            self.running.add(data_dir)
            port = preferred_port or next(self._ports)
        return ServerHandle(
            f"fake:{port}", data_dir, "127.0.0.1", port, password=password or "fake-secret"
        )

    def stop(self, handle: ServerHandle, log: LogSink) -> None:
        with self._lock:
            self.running.discard(handle.data_dir)

    def kill(self, handle: ServerHandle) -> None:
        with self._lock:
            self.running.discard(handle.data_dir)
            self.killed.append(handle.data_dir)

    def is_running(self, handle: ServerHandle) -> bool:
        return handle.data_dir in self.running

    def adopt(self, resolved_image_id: str, data_dir: Path) -> ServerHandle | None:
        return None

    def run_client(
        self,
        handle: ServerHandle,
        program: str,
        args: Sequence[str],
        *,
        stdin: bytes | None,
        cwd: Path | None,
        on_output: OutputSink,
        cancel: CancelToken,
        env: Mapping[str, str] | None = None,
        inputs: Path | None = None,
    ) -> int:
        return self.client(args, on_output, cancel)

    def count_connections(self, handle: ServerHandle) -> int:
        return 0

    def input_gid(self, handle: ServerHandle) -> int | None:
        return None
