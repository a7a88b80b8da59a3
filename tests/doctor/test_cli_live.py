"""The doctor command, collect, and live analysis of a network namespace (machine kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kubelvs.cli.main import main
from kubelvs.doctor import Bundle, Severity, analyse, collect, live_bundle

from .conftest import BUNDLES, ids


def test_cli_text_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--bundle", str(BUNDLES / "vm-healthy")]) == 0
    # "no findings", after what was looked at: not to be taken for a host with nothing to check.
    assert capsys.readouterr().out == (
        f"examined: bundle {BUNDLES / 'vm-healthy'}\n"
        "  role: director (as role.txt says)\n"
        "  data plane: IPVS (from ipvsadm-Ln.txt)\n"
        "  checked: 1 virtual service(s), 2 real server(s), 20 connection entries, 5 interface(s), "
        "1228 sysctls, 1 Kubernetes service(s)\n"
        "  missing: the sysctl configuration\n"
        "  capture next, most useful first:\n"
        "    cat /etc/sysctl.conf /etc/sysctl.d/*.conf   # needed for tw-recycle-enabled\n"
        "\n"
        "no findings\n"
    )
    assert main(["doctor", "--bundle", str(BUNDLES / "vm-stale")]) == 1
    out = capsys.readouterr().out
    assert "\n\n1 error\n\n[error] stale-realserver: " in out
    assert "  fix:\n    ipvsadm -d -t 10.96.0.20:6379 -r 10.0.2.2:80\n" in out


def test_cli_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--bundle", str(BUNDLES / "vm-ip-forward-off"), "-o", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in data["findings"]] == ["ip-forward-off", "syn-recv-stuck"]
    for f in data["findings"]:
        assert {"id", "severity", "summary", "evidence", "fix"} <= set(f)


def test_cli_site_and_info_only_exit_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["doctor", "--bundle", str(BUNDLES / "vm-tun-rp-filter")]) == 1
    assert "== director ==" in capsys.readouterr().out
    (tmp_path / "uname.txt").write_text("6.1.0\n")
    (tmp_path / "sysctl-conf.txt").write_text("net.ipv4.tcp_tw_recycle = 1\n")
    assert main(["doctor", "--bundle", str(tmp_path)]) == 0  # only an info finding
    assert "[info] tw-recycle-enabled" in capsys.readouterr().out


def test_cli_bad_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["doctor", "--bundle", str(tmp_path / "nope")]) == 2
    assert main(["doctor", "--bundle", str(tmp_path)]) == 2
    assert "no bundle files" in capsys.readouterr().err


def _node_on_a_segment(make_netns: Callable[[str], str], suffix: str, address: str, segment: str) -> str:
    """A DR node's namespace: eth1 with ``address``, on a segment (another namespace) that
    has ``segment``. Addresses without duplicate address detection: usable at once."""
    ns, peer = make_netns(f"dr{suffix}"), make_netns(f"seg{suffix}")
    subprocess.run(
        ["ip", "-n", peer, "link", "add", "to-node", "type", "veth", "peer", "name", "eth1", "netns", ns],
        check=True,
    )
    nodad = ["nodad"] if ":" in address else []
    for n, dev, addr in ((peer, "to-node", segment), (ns, "eth1", address)):
        subprocess.run(["ip", "-n", n, "addr", "add", addr, "dev", dev, *nodad], check=True)
        subprocess.run(["ip", "-n", n, "link", "set", dev, "up"], check=True)
    return ns


def _sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], check=True)


@pytest.mark.netns
def test_collect_and_live_in_a_namespace(make_netns: Callable[[str], str], tmp_path: Path) -> None:
    ns = _node_on_a_segment(make_netns, "", "10.240.0.101/24", "10.240.0.200/24")
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.240.0.201/32", "dev", "lo"], check=True)
    # arp_ignore left at 0: the real server answers ARP for its VIP
    written = collect(str(tmp_path / "b"), netns=ns, role="node", kubectl=False)
    assert {"sysctl.txt", "ip-addr.txt", "proc-net-netstat.txt", "uname.txt", "role.txt"} <= set(written)
    from_files = analyse(Bundle.load(str(tmp_path / "b")))
    live = analyse(live_bundle(ns, kubectl=False))
    assert ids(from_files) == ids(live) == ["dr-arp-ignore", "dr-arp-announce"]
    _sysctl(ns, "net.ipv4.conf.eth1.arp_ignore=1", "net.ipv4.conf.eth1.arp_announce=2")
    assert analyse(live_bundle(ns, kubectl=False)) == []


@pytest.mark.netns
def test_a_proxy_neighbour_entry_for_an_ipv6_vip_is_found_live_and_its_fix_works(
    make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    ns = _node_on_a_segment(make_netns, "6", "fd00:240::101/64", "fd00:240::200/64")
    subprocess.run(["ip", "-n", ns, "addr", "add", "fd00:240::201/128", "dev", "lo"], check=True)
    subprocess.run(
        ["ip", "-n", ns, "-6", "neigh", "add", "proxy", "fd00:240::201", "dev", "eth1"], check=True
    )
    _sysctl(ns, "net.ipv6.conf.all.proxy_ndp=1", "net.ipv6.conf.eth1.forwarding=1")
    vips = ("fd00:240::201",)  # as a director's table names it (a site): no Kubernetes data here
    collect(str(tmp_path / "b"), netns=ns, role="node", kubectl=False)
    assert (tmp_path / "b" / "ip-neigh-proxy.txt").read_text() == "fd00:240::201 dev eth1 proxy \n"
    (found,) = analyse(live_bundle(ns, kubectl=False), dr_vips=vips)
    assert (found.id, found.severity) == ("dr-ipv6-vip-proxy-ndp", Severity.ERROR)
    assert ids(analyse(Bundle.load(str(tmp_path / "b")), dr_vips=vips)) == ["dr-ipv6-vip-proxy-ndp"]
    subprocess.run(["ip", "netns", "exec", ns, *found.fix[0].split()], check=True)
    assert analyse(live_bundle(ns, kubectl=False), dr_vips=vips) == []


@pytest.mark.netns
def test_collect_command_with_missing_tools(make_netns: Callable[[str], str], tmp_path: Path) -> None:
    ns = make_netns("bare")
    env = dict(os.environ, PATH="/nonexistent")  # no ip, sysctl, netstat, nft, ipvsadm
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubelvs",
            "doctor",
            "collect",
            str(tmp_path / "b"),
            "--netns",
            ns,
            "--no-kubectl",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    files = set(os.listdir(tmp_path / "b"))
    assert {"sysctl.txt", "ip-addr.txt", "proc-net-netstat.txt", "uname.txt"} <= files  # the direct sources
    assert "not installed" in (tmp_path / "b" / "collect-errors.txt").read_text()
    assert analyse(Bundle.load(str(tmp_path / "b"))) == []


@pytest.mark.netns
def test_a_live_host_without_a_load_balancer_says_what_it_looked_at(
    make_netns: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """On this kernel (no IPVS) a namespace has no table: "no findings" alone would read as a
    healthy director. The report says the role it assumed and why, and that no data
    plane was found; a live host gets no "capture next" (what it lacks, it does not have)."""
    ns = make_netns("bare")
    assert main(["doctor", "--netns", ns, "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    examined = report["examined"]
    assert examined["origin"] == f"live namespace {ns}"
    assert (examined["role"], examined["role_reason"]) == (
        "node",
        "inferred: no IPVS or kubelvs table in the input",
    )
    assert examined["data_plane"] == "none found"
    assert examined["checked"]["interface(s)"] == 1  # lo
    assert examined["checked"]["sysctls"] > 100
    assert "virtual service(s)" not in examined["checked"]
    assert examined["missing"][:5] == [
        "the IPVS table",
        "the IPVS listing with its connection counts",
        "the IPVS scheduler flags",
        "the IPVS connection table",
        "the IPVS timeouts",
    ]
    assert examined["capture_next"] == []
    assert report["findings"] == []
    assert main(["doctor", "--netns", ns]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"examined: live namespace {ns}\n  role: node (inferred: no IPVS or kubelvs table")
    assert text.endswith("\n\nno findings\n")
