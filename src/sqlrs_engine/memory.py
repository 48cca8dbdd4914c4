"""Give memory of large, short-lived buffers, and of start-up, back to the operating system.

A 31 MiB request body is read, decoded and refused within milliseconds, but glibc's malloc
raises its mmap threshold dynamically after such an allocation is freed: later big buffers
then come from the heap, whose freed space is rarely returned, and the engine stayed 200 to 540
MB larger after a few of them (issue 11). A fixed threshold keeps every allocation of 256 KiB
or more in its own mapping, unmapped on free; small objects are unaffected (Python's own
allocator serves them).

Start-up (imports above all: unmarshalled code, temporary buffers) leaves free chunks
inside the heap that the trim threshold never returns, because they are not at its top;
one `malloc_trim` once the engine is up gives their pages back (about 2 MiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024


def _libc_function(name: str) -> Any:
    """A function of glibc's malloc, or None (not glibc: musl has no mallopt/malloc_trim)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def return_large_allocations() -> bool:
    """Configure glibc as described above; False (and nothing changed) elsewhere."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False  # its defaults apply
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and ok
    if not ok:
        log.warning("mallopt refused the engine's memory settings; large buffers may linger")
    return ok


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (`malloc_trim(0)`); False if not glibc.

    Called once the engine is up: what start-up freed inside the heap is otherwise kept.
    """
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
