"""Memory given back to the system: glibc settings and the trim after start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlrs_engine.memory import release_free_memory

MIB = 1024 * 1024


def resident_bytes() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmRSS:"))) * 1024


def test_release_free_memory_gives_back_freed_pages_inside_the_heap() -> None:
    """Freed chunks below a live one stay resident (only the heap's top is trimmed on free)
    until `release_free_memory` returns their pages, as after the engine's start-up."""
    chunks = [bytearray(64 * 1024) for _ in range(800)]  # 50 MiB, each below mmap's threshold
    pin = bytearray(64 * 1024)  # allocated last: keeps the heap's top in use
    del chunks
    before = resident_bytes()
    if not release_free_memory():
        pytest.skip("not glibc: no malloc_trim")
    assert before - resident_bytes() > 32 * MIB
    assert len(pin) == 64 * 1024
