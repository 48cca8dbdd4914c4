"""A real NAT rule on the loopback, as a container engine publishes a port (Podman's netavark,
Docker without its userland proxy): connections to `127.0.0.1:<port>` go elsewhere while
nothing on the host holds the port. Needs root and `iptables`."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _rule(port: int, to_port: int, tag: str) -> list[str]:
    return [
        "OUTPUT",
        "-d", "127.0.0.1/32",
        "-p", "tcp",
        "--dport", str(port),
        "-m", "comment", "--comment", tag,
        "-j", "DNAT", "--to-destination", f"127.0.0.1:{to_port}",
    ]  # fmt: skip


@contextmanager
def redirected(port: int, to_port: int) -> Iterator[None]:
    """While inside: every new connection to 127.0.0.1:`port` goes to 127.0.0.1:`to_port`."""
    iptables = shutil.which("iptables")
    if iptables is None or os.geteuid() != 0:
        pytest.skip("a NAT rule needs root and iptables (apt package iptables)")
    rule = _rule(port, to_port, f"sqlrs-test-{uuid.uuid4().hex[:12]}")
    added = subprocess.run(
        [iptables, "-t", "nat", "-A", *rule], capture_output=True, text=True, check=False
    )
    if added.returncode != 0:
        pytest.skip(f"iptables cannot add a nat OUTPUT rule here: {added.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([iptables, "-t", "nat", "-D", *rule], capture_output=True, check=True)
