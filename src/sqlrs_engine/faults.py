"""Named crash points for the crash-safety suite: inert unless a test names one.

`fault_point("delete:after-first-node")` does nothing in production. When the engine was
started with `SQLRS_FAULT_POINT=<name>` and execution reaches that point, the engine logs
it and stops itself with SIGSTOP: frozen exactly between two steps, so that a test can then
kill it — alone (`kill -9` of the engine) or together with every process it started (a power
loss) — deterministically, without sleeping and hoping. A point is taken once per process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

ENV = "SQLRS_FAULT_POINT"

_armed = os.environ.get(ENV, "").strip()
_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Freeze the whole engine here if a test armed this point (see module docstring)."""
    global _armed
    if not _armed or name != _armed:
        return
    with _lock:
        if _armed != name:
            return
        _armed = ""
    log.warning("fault point %s reached: stopping the engine (SIGSTOP) for a crash test", name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    # To this thread, not the process: `kill(getpid())` wakes whichever thread the kernel picks
    # (usually the main one) to begin the stop, and on a busy machine this thread ran on for
    # milliseconds past its crash point meanwhile — a whole deletion once. A signal for this
    # thread stops it on its way out of the call, and it stops the others with it. Never
    # returns: a SIGCONT (job control sends one to an orphaned process group with a stopped
    # member) must not let it go on; the test kills the process.
    while True:
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
