"""nft's ``jhash`` re-computed in Python (backends/nftables/flowhash.py) gives the slot
the kernel gives, for 200 sources, with and without the source port: the kernel writes
each packet's hash into its mark and a dynamic set records (mark, source)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubelvs.backends.nftables.flowhash import slot
from kubelvs.backends.nftables.schema import HASH_SEED

RULESET = """table ip t {
  set seen { typeof meta mark . ip saddr . udp sport; flags dynamic; size 65536; }
  set seenp { typeof meta mark . ip saddr . udp sport; flags dynamic; size 65536; }
  chain out { type filter hook output priority 0; policy accept;
    ip daddr 10.77.0.1 udp dport 9 meta mark set jhash ip saddr mod 509 seed %(seed)#x \
      add @seen { meta mark . ip saddr . udp sport }
    ip daddr 10.77.0.1 udp dport 9 meta mark set jhash ip saddr . udp sport mod 509 seed %(seed)#x \
      add @seenp { meta mark . ip saddr . udp sport }
  }
}
"""
SEND = """import socket
for i in range(2, 202):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"10.77.{i // 250}.{i % 250 + 1}", 40000 + i))
    s.sendto(b"x", ("10.77.0.1", 9))
    s.close()
"""


def _seen(netns: str, name: str) -> list[tuple[int, str, int]]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "set", "ip", "t", name],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    elements = json.loads(out)["nftables"][1]["set"]["elem"]
    return [tuple(e["elem"]["val"]["concat"] if "elem" in e else e["concat"]) for e in elements]


@pytest.mark.netns
def test_the_kernel_hashes_flows_to_the_slots_explain_computes(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.77.0.1/16", "dev", "lo"], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=RULESET % {"seed": HASH_SEED},
                   text=True, check=True)  # fmt: skip
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SEND], check=True)
    plain, with_port = _seen(netns, "seen"), _seen(netns, "seenp")
    assert len(plain) == len(with_port) == 200
    assert all(slot(src, None, 509, HASH_SEED) == mark for mark, src, _ in plain)
    assert all(slot(src, sport, 509, HASH_SEED) == mark for mark, src, sport in with_port)
