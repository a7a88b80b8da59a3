"""A namespace where DR services can be programmed without real hosts behind them: a
veth pair, the director's address on it, and permanent neighbour entries (MACs) for
every address of ``strategies.DR_POOL`` and ``strategies.DR6_POOL``."""

from __future__ import annotations

import subprocess

from .strategies import DR6_POOL, DR_POOL


def prepare(ns: str) -> None:
    """A link with permanent neighbours for the DR pool, in ``ns``."""
    subprocess.run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    for dev in ("v0", "v1"):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.0.1.1/24", "dev", "v0"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "fd00:1::1/64", "dev", "v0", "nodad"], check=True)
    for i, addr in enumerate(DR_POOL + DR6_POOL):
        subprocess.run(
            [
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                addr,
                "lladdr",
                f"02:00:00:00:01:{i + 2:02x}",
                "dev",
                "v0",
                "nud",
                "permanent",
            ],
            check=True,
        )
