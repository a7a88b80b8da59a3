"""The node agent against a real kernel: addresses and sysctls are read back from the
namespace, not from the agent's own record."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kubelvs.cli.main import main
from kubelvs.kernel import sysctl
from kubelvs.kernel.netns import entered
from kubelvs.roles.node import NodeAgent, NodeError, vips_for_node
from kubelvs.sources.config import parse_config

VIP = "10.240.0.201"
VIP2 = "10.240.0.202"
VIP6 = "fd00:240::201"

pytestmark = pytest.mark.netns


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def _lo_addrs(ns: str) -> set[str]:
    (link,) = json.loads(_ip(ns, "-j", "addr", "show", "dev", "lo"))
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}


def _lo_v4(ns: str) -> set[str]:
    """lo's IPv4 addresses (``::1`` is there or not depending on the kernel's IPv6 setup)."""
    return {a for a in _lo_addrs(ns) if ":" not in a}


def _get(ns: str, name: str) -> int | None:
    with entered(ns):
        return sysctl.read(name)


def _put(ns: str, name: str, value: int) -> None:
    with entered(ns):
        sysctl.write(name, value)


@pytest.fixture
def node(make_netns: Callable[[str], str]) -> str:
    """A namespace with an L2 interface eth0 (one end of a veth pair) carrying 10.240.0.101/24."""
    ns = make_netns("node")
    _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(ns, "addr", "add", "10.240.0.101/24", "dev", "eth0")
    _ip(ns, "link", "set", "eth0", "up")
    return ns


def _agent(ns: str, tmp_path: Path, **kw: object) -> NodeAgent:
    return NodeAgent(interface="eth0", netns=ns, vip_device="lo", state_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_sync_configures_the_dr_settings_and_is_idempotent(node: str, tmp_path: Path) -> None:
    _put(node, "net.ipv4.conf.all.rp_filter", 1)  # CentOS 7 default, as in the rp_filter incident
    agent = _agent(node, tmp_path)
    changes = agent.sync([VIP])
    assert {str(c) for c in changes} == {
        f"add {VIP}/32 dev lo",
        "set net.ipv4.conf.eth0.arp_ignore (0 -> 1)",
        "set net.ipv4.conf.eth0.arp_announce (0 -> 2)",
        "set net.ipv4.conf.all.rp_filter (1 -> 2)",
    }
    assert f"{VIP}/32" in _lo_addrs(node)
    assert _get(node, "net.ipv4.conf.eth0.arp_ignore") == 1
    assert _get(node, "net.ipv4.conf.eth0.arp_announce") == 2
    # Effective rp_filter = max(all, eth0) is loose now.
    assert (
        max(_get(node, "net.ipv4.conf.all.rp_filter") or 0, _get(node, "net.ipv4.conf.eth0.rp_filter") or 0)
        == 2
    )
    assert agent.sync([VIP]) == []  # idempotent
    assert _agent(node, tmp_path).sync([VIP]) == []  # also for a new agent process (state file)

    reverted = agent.revert()
    assert {c.action for c in reverted} == {"delete", "restore"}
    assert f"{VIP}/32" not in _lo_addrs(node)
    assert _get(node, "net.ipv4.conf.eth0.arp_ignore") == 0
    assert _get(node, "net.ipv4.conf.eth0.arp_announce") == 0
    assert _get(node, "net.ipv4.conf.all.rp_filter") == 1  # put back as found
    assert not list(tmp_path.iterdir())  # nothing left to revert: no record


def test_strict_rp_filter_on_the_interface_is_made_loose(node: str, tmp_path: Path) -> None:
    _put(node, "net.ipv4.conf.eth0.rp_filter", 1)
    _put(node, "net.ipv4.conf.all.rp_filter", 0)
    changes = _agent(node, tmp_path).sync([VIP])
    assert "set net.ipv4.conf.eth0.rp_filter (1 -> 2)" in {str(c) for c in changes}
    assert _get(node, "net.ipv4.conf.all.rp_filter") == 0  # not touched: it was fine


def test_settings_already_right_are_not_recorded_or_reverted(node: str, tmp_path: Path) -> None:
    _put(node, "net.ipv4.conf.all.arp_ignore", 1)  # effective = max(all, eth0): already 1
    _put(node, "net.ipv4.conf.eth0.arp_announce", 2)
    agent = _agent(node, tmp_path)
    assert [str(c) for c in agent.sync([VIP])] == [f"add {VIP}/32 dev lo"]
    agent.revert()
    assert _get(node, "net.ipv4.conf.all.arp_ignore") == 1
    assert _get(node, "net.ipv4.conf.eth0.arp_announce") == 2


def test_only_what_the_agent_set_is_reverted(node: str, tmp_path: Path) -> None:
    _ip(node, "addr", "add", f"{VIP2}/32", "dev", "lo")  # put there by an operator
    agent = _agent(node, tmp_path)
    agent.sync([VIP, VIP2])
    _put(node, "net.ipv4.conf.eth0.arp_announce", 1)  # somebody else changed it afterwards
    changes = {str(c) for c in agent.revert()}
    assert f"keep {VIP2}/32 dev lo (was there before the agent: left alone)" in changes
    assert "keep net.ipv4.conf.eth0.arp_announce (changed by someone else to 1: left alone)" in changes
    assert _lo_addrs(node) >= {f"{VIP2}/32"}
    assert f"{VIP}/32" not in _lo_addrs(node)
    assert _get(node, "net.ipv4.conf.eth0.arp_announce") == 1
    assert _get(node, "net.ipv4.conf.eth0.arp_ignore") == 0


def test_removing_one_vip_keeps_the_others_and_the_sysctls(node: str, tmp_path: Path) -> None:
    agent = _agent(node, tmp_path)
    agent.sync([VIP, VIP2])
    assert [str(c) for c in agent.sync([VIP])] == [f"delete {VIP2}/32 dev lo"]
    assert f"{VIP}/32" in _lo_addrs(node) and f"{VIP2}/32" not in _lo_addrs(node)
    assert _get(node, "net.ipv4.conf.eth0.arp_ignore") == 1


def test_bad_input_changes_nothing(node: str, tmp_path: Path) -> None:
    with pytest.raises(NodeError, match=re.escape("vip: '10.240.0.999' is not an IPv4")):
        _agent(node, tmp_path).sync([VIP, "10.240.0.999"])
    assert f"{VIP}/32" not in _lo_addrs(node)
    assert _get(node, "net.ipv4.conf.eth0.arp_ignore") == 0
    with pytest.raises(NodeError, match="interface: 'eth9' does not exist"):
        NodeAgent(interface="eth9", netns=node, state_dir=tmp_path)


def test_tun_mode_without_ipip_is_refused_before_any_change(node: str, tmp_path: Path) -> None:
    if Path("/proc/sys/net/ipv4/conf/tunl0").exists() or Path("/sys/module/ipip").exists():
        pytest.skip("this kernel has ipip (the VM tier tests tun mode)")
    with pytest.raises(NodeError, match="no ipip support"):
        _agent(node, tmp_path, mode="tun").sync([VIP])
    assert f"{VIP}/32" not in _lo_addrs(node)
    assert _get(node, "net.ipv4.conf.eth0.arp_ignore") == 0


def test_tun_mode_without_ip6_tunnel_is_refused_for_an_ipv6_vip_before_any_change(
    node: str, tmp_path: Path
) -> None:
    if Path("/sys/module/ip6_tunnel").exists():
        pytest.skip("this kernel has ip6_tunnel (the VM tier tests IPv6 tun mode)")
    with pytest.raises(NodeError, match=r"IPv6-in-IPv6 tunnels for IPv6 VIPs, .* no ip6_tunnel support"):
        _agent(node, tmp_path, mode="tun").sync([VIP6])
    assert f"{VIP6}/128" not in _lo_addrs(node)


def test_a_record_of_a_recreated_namespace_is_ignored(
    make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    ns = make_netns("node")
    _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    agent = NodeAgent(interface="eth0", netns=ns, vip_device="lo", state_dir=tmp_path)
    agent.sync([VIP])
    subprocess.run(["ip", "netns", "del", ns], check=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)  # same name, new namespace
    _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(ns, "addr", "add", f"{VIP}/32", "dev", "lo")
    fresh = NodeAgent(interface="eth0", netns=ns, vip_device="lo", state_dir=tmp_path)
    assert fresh.recorded()["vips"] == {}
    fresh.revert()
    assert f"{VIP}/32" in _lo_addrs(ns)  # not ours in this namespace: kept


def test_vips_for_node_takes_dr_and_tun_services_of_this_node() -> None:
    config = parse_config(
        {
            "services": [
                {
                    "name": "whoami",
                    "vip": VIP,
                    "port": 80,
                    "forward": "dr",
                    "realservers": [{"address": "10.240.0.101"}, {"address": "10.240.0.102"}],
                },
                {
                    "name": "other-node",
                    "vip": "10.240.0.203",
                    "port": 80,
                    "realservers": [{"address": "10.240.0.102"}],
                },
                {
                    "name": "nat",
                    "vip": "10.240.0.204",
                    "port": 80,
                    "forward": "nat",
                    "realservers": [{"address": "10.240.0.101", "port": 8080}],
                },
                {
                    "name": "tun",
                    "vip": VIP2,
                    "port": 53,
                    "protocol": "udp",
                    "realservers": [{"address": "10.240.0.101", "forward": "tun"}],
                },
            ]
        }
    )
    assert vips_for_node(config, ["10.240.0.101"]) == ([VIP, VIP2], "tun")
    assert vips_for_node(config, ["10.240.0.102"]) == ([VIP, "10.240.0.203"], "dr")
    assert vips_for_node(config, ["10.240.0.9"]) == ([], "dr")


def test_cli_with_a_config_file_once_and_revert(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(
        f"owned_cidrs: [{VIP}/32]\n"
        f"services:\n  - name: whoami\n    vip: {VIP}\n    port: 80\n    scheduler: rr\n"
        "    forward: dr\n    realservers:\n      - address: 10.240.0.101\n      - address: 10.240.0.102\n"
    )
    state = tmp_path / "state"
    base = [
        "node",
        "--netns",
        node,
        "--interface",
        "eth0",
        "--vip-device",
        "lo",
        "--state-dir",
        str(state),
        "-o",
        "json",
    ]
    assert main([*base, "-f", str(cfg), "--once"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vips"] == [VIP]
    assert {"action": "add", "target": f"{VIP}/32 dev lo", "detail": ""} in report["changes"]
    assert main([*base, "-f", str(cfg), "--once"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == []
    assert main([*base, "--revert"]) == 0
    assert f"{VIP}/32" not in _lo_addrs(node)
    assert main([*base, "--vip", "not-an-ip", "--once"]) == 2
    assert "vip: 'not-an-ip' is not an IPv4" in capsys.readouterr().err


@pytest.mark.kernel_ipvs
def test_tun_mode_brings_up_ip6tnl0_for_an_ipv6_vip_and_reverts(node: str, tmp_path: Path) -> None:
    """IPv6 in IPv6 (what IPVS sends a TUN real server of an IPv6 VIP) comes out of the
    ip6_tunnel module's fallback device; no sysctl is needed (docs/ipv6.md). The traffic
    through it: tests/scenarios/test_ipv6.py."""
    agent = NodeAgent(interface="eth0", netns=node, mode="tun", vip_device="lo", state_dir=tmp_path)
    changes = {str(c) for c in agent.sync([VIP6])}
    assert changes == {"up link ip6tnl0 (IPv6-in-IPv6 fallback device)", f"add {VIP6}/128 dev lo"}
    assert "UP" in json.loads(_ip(node, "-j", "link", "show", "dev", "ip6tnl0"))[0]["flags"]
    assert not agent.drifted([VIP6])
    _ip(node, "link", "set", "ip6tnl0", "down")
    assert agent.drifted([VIP6])
    assert {str(c) for c in agent.sync([VIP6])} == {"up link ip6tnl0 (IPv6-in-IPv6 fallback device)"}
    agent.revert()
    assert "UP" not in json.loads(_ip(node, "-j", "link", "show", "dev", "ip6tnl0"))[0]["flags"]
    assert f"{VIP6}/128" not in _lo_addrs(node)


@pytest.mark.kernel_ipvs
def test_tun_mode_brings_up_tunl0_with_loose_rp_filter_and_reverts(node: str, tmp_path: Path) -> None:
    subprocess.run(["modprobe", "-q", "ipip"], check=False)
    agent = NodeAgent(interface="eth0", netns=node, mode="tun", vip_device="auto", state_dir=tmp_path)
    for conf in ("eth0", "lo", "default"):
        _put(node, f"net.ipv4.conf.{conf}.rp_filter", 0)
    _put(node, "net.ipv4.conf.all.rp_filter", 1)
    changes = {str(c) for c in agent.sync([VIP])}
    assert "up link tunl0 (IPIP fallback device)" in changes
    assert "create link kubelvs0 (type dummy)" in changes  # the VM kernel has dummy
    link = json.loads(_ip(node, "-j", "link", "show", "dev", "tunl0"))[0]
    assert "UP" in link["flags"]
    # tunl0 has no address: only an effective 0 admits decapsulated packets (loose is not enough) ...
    assert (
        max(_get(node, "net.ipv4.conf.all.rp_filter") or 0, _get(node, "net/ipv4/conf/tunl0/rp_filter") or 0)
        == 0
    )
    # ... while every other interface keeps its effective value: the L2 one loose, the rest strict.
    assert _get(node, "net.ipv4.conf.eth0.rp_filter") == 2
    assert (
        _get(node, "net.ipv4.conf.lo.rp_filter") == 1 and _get(node, "net.ipv4.conf.default.rp_filter") == 1
    )
    agent.revert()
    assert "UP" not in json.loads(_ip(node, "-j", "link", "show", "dev", "tunl0"))[0]["flags"]
    assert (
        subprocess.run(
            ["ip", "-n", node, "link", "show", "kubelvs0"], capture_output=True, check=False
        ).returncode
        != 0
    )
    assert _get(node, "net.ipv4.conf.all.rp_filter") == 1
    assert _get(node, "net.ipv4.conf.lo.rp_filter") == 0 and _get(node, "net.ipv4.conf.eth0.rp_filter") == 0


def test_cli_dry_run_with_a_config_file_touches_nothing(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(
        f"owned_cidrs: [{VIP}/32]\n"
        f"services:\n  - name: whoami\n    vip: {VIP}\n    port: 80\n    scheduler: rr\n"
        "    forward: dr\n    realservers:\n      - address: 10.240.0.101\n"
    )
    assert (
        main(
            [
                "node",
                "--netns",
                node,
                "-f",
                str(cfg),
                "--dry-run",
                "-o",
                "json",
                "--state-dir",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"vips": [VIP], "mode": "dr"}
    assert f"{VIP}/32" not in _lo_addrs(node) and _get(node, "net.ipv4.conf.eth0.arp_ignore") == 0
    assert not (tmp_path / "s").exists()
    assert main(["node", "--netns", node, "--dry-run"]) == 2
    assert "give the VIPs with --vip, a config with -f, or --kubernetes" in capsys.readouterr().err


# ---------------------------------------------------------------- a VIP the node has elsewhere


def _addrs(ns: str, dev: str) -> set[str]:
    (link,) = json.loads(_ip(ns, "-j", "addr", "show", "dev", dev))
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}


def test_a_vip_already_on_another_device_is_not_ours_and_not_added_to_lo(node: str, tmp_path: Path) -> None:
    _ip(node, "addr", "add", f"{VIP}/32", "dev", "eth0")  # e.g. keepalived's, or an operator's
    agent = _agent(node, tmp_path)
    changes = {str(c) for c in agent.sync([VIP, VIP2])}
    assert f"keep {VIP}/32 dev eth0 (already on the node: not ours, left alone)" in changes
    assert f"add {VIP2}/32 dev lo" in changes and f"add {VIP}/32 dev lo" not in changes
    assert agent.recorded()["vips"][VIP] == {"device": "eth0", "added": False, "prefixlen": 32}
    assert agent.sync([VIP, VIP2]) == []  # the next round does not add it either
    assert _lo_v4(node) == {"127.0.0.1/8", f"{VIP2}/32"}
    reverted = {str(c) for c in agent.revert()}
    assert f"keep {VIP}/32 dev eth0 (was there before the agent: left alone)" in reverted
    assert f"{VIP}/32" in _addrs(node, "eth0") and _lo_v4(node) == {"127.0.0.1/8"}


def test_a_vip_inside_a_prefix_on_another_device_counts_as_present(node: str, tmp_path: Path) -> None:
    _ip(node, "addr", "add", f"{VIP}/28", "dev", "eth0", "scope", "link")  # any prefix length, any scope
    agent = _agent(node, tmp_path)
    changes = {str(c) for c in agent.sync([VIP])}
    assert f"keep {VIP}/28 dev eth0 (already on the node: not ours, left alone)" in changes
    assert agent.sync([VIP]) == []
    assert f"{VIP}/32" not in _lo_addrs(node)


def test_a_vip_of_ours_removed_behind_the_agents_back_is_put_back(node: str, tmp_path: Path) -> None:
    agent = _agent(node, tmp_path)
    agent.sync([VIP])
    _ip(node, "addr", "del", f"{VIP}/32", "dev", "lo")
    assert [str(c) for c in agent.sync([VIP])] == [f"add {VIP}/32 dev lo"]
    assert f"{VIP}/32" in _lo_addrs(node)
    # Moved to eth0 by someone else: from then on it is theirs, and left there.
    _ip(node, "addr", "del", f"{VIP}/32", "dev", "lo")
    _ip(node, "addr", "add", f"{VIP}/32", "dev", "eth0")
    changes = [str(c) for c in agent.sync([VIP])]
    assert changes == [f"keep {VIP}/32 dev eth0 (already on the node: not ours, left alone)"]
    agent.revert()
    assert f"{VIP}/32" in _addrs(node, "eth0") and f"{VIP}/32" not in _lo_addrs(node)
