"""A second engine process for the cross-process store tests (run as a script, not collected).

store_worker.py ensure_base ROOT IMAGE CALLS STARTED SLEEP
store_worker.py hold_build ROOT IMAGE STATE READY RELEASE

The backend is `copy` unless SQLRS_TEST_BACKEND names another kind (overlayfs, btrfs).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlrs_engine.snapshot.base import SnapshotBackend
from sqlrs_engine.snapshot.btrfs import BtrfsBackend
from sqlrs_engine.snapshot.copy import CopyBackend
from sqlrs_engine.snapshot.layout import StoreLayout
from sqlrs_engine.snapshot.overlay import OverlayBackend
from sqlrs_engine.snapshot.store import StateStore


def backend(root: Path) -> SnapshotBackend:
    kind = os.environ.get("SQLRS_TEST_BACKEND", "copy")
    if kind == "overlayfs":
        return OverlayBackend(root)
    if kind == "btrfs":
        return BtrfsBackend(root)
    return CopyBackend()


def fake_initdb(calls: Path, started: Path | None, sleep: float) -> Callable[[Path], None]:
    """An init that records who ran it and takes a while, like initdb."""

    def init(base: Path) -> None:
        fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        if started is not None:
            started.touch()
        time.sleep(sleep)
        (base / "pgdata").mkdir()
        (base / "pgdata" / "PG_VERSION").write_text("15\n")

    return init


def main(argv: list[str]) -> int:
    mode, root, image = argv[1], Path(argv[2]), argv[3]
    store = StateStore(StoreLayout(root), backend(root))
    if mode == "ensure_base":
        calls, started, sleep = Path(argv[4]), Path(argv[5]), float(argv[6])
        base = store.ensure_base(image, fake_initdb(calls, started, sleep))
        print(base, flush=True)
        return 0
    if mode == "hold_build":
        state_id, ready, release = argv[4], Path(argv[5]), Path(argv[6])
        with store.build_state(image, state_id):
            ready.touch()
            deadline = time.monotonic() + 30
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return 0
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
