"""Give memory of large, short-lived buffers back to the operating system.

A 31 MiB request body is read, decoded and refused within milliseconds, but glibc's malloc
raises its mmap threshold dynamically after such an allocation is freed: later big buffers
then come from the heap, whose freed space is rarely returned, and the engine stayed 200 to 540
MB larger after a few of them (issue 11). A fixed threshold keeps every allocation of 256 KiB
or more in its own mapping, unmapped on free; small objects are unaffected (Python's own
allocator serves them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024


def return_large_allocations() -> bool:
    """Configure glibc as described above; False (and nothing changed) elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt): its defaults apply
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and ok
    if not ok:
        log.warning("mallopt refused the engine's memory settings; large buffers may linger")
    return ok
