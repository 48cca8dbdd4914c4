"""Image id rule of planning: does an id carry a digest (SPEC §2.7)?

Layout names of an image (§9.1) are `snapshot/layout.py`'s; which installed PostgreSQL serves
an image on the host runtime (§0.2) is `runtime/host.py`'s.
"""

from __future__ import annotations


def has_digest(image_id: str) -> bool:
    """True when the id contains `@` with at least one character after the last `@`."""
    at = image_id.rfind("@")
    return at >= 0 and at < len(image_id) - 1
