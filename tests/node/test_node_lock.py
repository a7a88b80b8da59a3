"""One node agent per namespace: a running agent holds a lock (flock) on its state dir;
a second agent, or a revert, is refused with the PID of the one running, and changes
nothing. The holder is a real second process; the kernel state is read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubelvs.cli.main import main
from kubelvs.errors import NodeError
from kubelvs.kernel import sysctl
from kubelvs.kernel.netns import entered
from kubelvs.roles.node import NodeAgent

VIP = "10.240.0.201"
VIP2 = "10.240.0.202"

pytestmark = pytest.mark.netns

# A long-running agent as the app layer runs one: its whole loop inside hold().
HOLDER = """
import sys
from pathlib import Path
from kubelvs.roles.node import NodeAgent

agent = NodeAgent(interface="eth0", netns=sys.argv[1], vip_device="lo", state_dir=Path(sys.argv[2]))
with agent.hold():
    agent.sync([sys.argv[3]])
    print("holding", flush=True)
    sys.stdin.readline()  # until the test closes our stdin
"""


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def _lo_addrs(ns: str) -> set[str]:
    (link,) = json.loads(_ip(ns, "-j", "addr", "show", "dev", "lo"))
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}


def _lo_v4(ns: str) -> set[str]:
    """lo's IPv4 addresses (``::1`` is there or not depending on the kernel's IPv6 setup)."""
    return {a for a in _lo_addrs(ns) if ":" not in a}


def _arp_ignore(ns: str) -> int | None:
    with entered(ns):
        return sysctl.read("net.ipv4.conf.eth0.arp_ignore")


@pytest.fixture
def node(make_netns: Callable[[str], str]) -> str:
    ns = make_netns("node")
    _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(ns, "addr", "add", "10.240.0.101/24", "dev", "eth0")
    _ip(ns, "link", "set", "eth0", "up")
    return ns


@pytest.fixture
def holder(node: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A second process running an agent for ``node`` (state dir ``tmp_path``), holding VIP."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, node, str(tmp_path), VIP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "holding\n", proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # by its PID: only the process this fixture started
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def _agent(ns: str, tmp_path: Path) -> NodeAgent:
    return NodeAgent(interface="eth0", netns=ns, vip_device="lo", state_dir=tmp_path)


def _holding(agent: NodeAgent) -> bool:
    """Read through a call: mypy would carry the narrowing of ``agent.holding`` from one
    assert to the next across the ``hold()`` exits that change it."""
    return agent.holding


def _busy(pid: int, ns: str) -> str:
    return rf"^a node agent \(pid {pid}\) is running for this namespace \({ns}\); stop it first"


def test_revert_and_a_second_agent_are_refused_while_an_agent_runs(
    node: str, tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert f"{VIP}/32" in _lo_addrs(node) and _arp_ignore(node) == 1  # the running agent's work
    other = _agent(node, tmp_path)
    assert other.holder() == holder.pid
    with pytest.raises(NodeError, match=_busy(holder.pid, node)):
        other.revert()
    with pytest.raises(NodeError, match=_busy(holder.pid, node)):
        other.sync([VIP2])
    with pytest.raises(NodeError, match=_busy(holder.pid, node)), other.hold():
        pass
    # Nothing was changed by any of them.
    assert _lo_v4(node) == {"127.0.0.1/8", f"{VIP}/32"} and _arp_ignore(node) == 1
    assert other.recorded()["vips"] == {VIP: {"device": "lo", "added": True}}

    # The CLI says the same and exits 2.
    assert (
        main(["node", "--netns", node, "--interface", "eth0", "--state-dir", str(tmp_path), "--revert"]) == 2
    )
    assert f"a node agent (pid {holder.pid}) is running for this namespace ({node}); stop it first" in (
        capsys.readouterr().err
    )
    assert f"{VIP}/32" in _lo_addrs(node)

    # Once it stopped (it leaves the node configured), the revert goes through.
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
    assert not (tmp_path / f"{node}.lock").exists()  # released and removed on exit
    assert other.holder() is None
    assert f"{VIP}/32" in _lo_addrs(node)
    assert {c.action for c in other.revert()} == {"delete", "restore"}
    assert _lo_v4(node) == {"127.0.0.1/8"} and _arp_ignore(node) == 0
    assert not list(tmp_path.iterdir())


def test_a_killed_agents_lock_is_gone_with_it(
    node: str, tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up: the kernel drops the flock
    holder.wait(timeout=10)
    assert (tmp_path / f"{node}.lock").read_text().strip() == str(holder.pid)  # a stale file, not a lock
    other = _agent(node, tmp_path)
    assert other.holder() is None
    other.revert()
    assert _lo_v4(node) == {"127.0.0.1/8"} and _arp_ignore(node) == 0
    assert not list(tmp_path.iterdir())


def test_hold_is_the_agents_own_while_it_runs(node: str, tmp_path: Path) -> None:
    agent = _agent(node, tmp_path)
    with agent.hold():
        assert _holding(agent) and agent.holder() == os.getpid()
        assert (tmp_path / f"{node}.lock").read_text() == f"{os.getpid()}\n"
        assert f"add {VIP}/32 dev lo" in [str(c) for c in agent.sync([VIP])]
        with agent.hold():  # nested: still the same holder
            assert agent.sync([VIP]) == []
        assert _holding(agent)
        # Another agent object, even in this process, is a second agent.
        with pytest.raises(NodeError, match=_busy(os.getpid(), node)):
            _agent(node, tmp_path).revert()
    assert not _holding(agent) and not (tmp_path / f"{node}.lock").exists()
    agent.revert()
    assert _lo_v4(node) == {"127.0.0.1/8"}


def test_agents_of_different_namespaces_do_not_block_each_other(
    make_netns: Callable[[str], str], node: str, tmp_path: Path
) -> None:
    other_ns = make_netns("node2")
    _ip(other_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    with _agent(node, tmp_path).hold():
        assert _agent(other_ns, tmp_path).sync([VIP]) != []
        assert f"{VIP}/32" in _lo_addrs(other_ns)
    _agent(other_ns, tmp_path).revert()
