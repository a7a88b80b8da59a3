"""The VRRP pair: the config's ``vrrp:`` (validated like the rest), the keepalived
configuration rendered from it (accepted by the real keepalived), and the director's
announcer running the real keepalived in a namespace: it holds the VIPs, follows the
VIP set, comes back when keepalived dies, and takes the VIPs with it when it stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kubelvs.app.director import DirectorOptions, start_director
from kubelvs.app.keepalived import Instance, instances, render
from kubelvs.app.vrrp import VrrpAnnouncer, parse_notify
from kubelvs.backends.memory import MemoryBackend
from kubelvs.cli.render import director_lines
from kubelvs.errors import ConfigError
from kubelvs.kernel import iproute
from kubelvs.model import ConnectionSync
from kubelvs.sources.config import parse_config
from kubelvs.sources.file import ConfigFileSource
from kubelvs.sources.vrrp import VrrpGroupSpec, VrrpSpec

from ..unit.test_director_program import until
from .said import said

SPEC = VrrpSpec(
    interface="eth0",
    virtual_router_id=51,
    priority=100,
    advert_interval=0.1,
    unicast_src_ip="10.9.0.1",
    unicast_peers=("10.9.0.2",),
    groups=(VrrpGroupSpec(virtual_router_id=52, vips=("10.9.0.210", "10.9.0.211"), priority=90),),
)


def test_instances_group_the_vips_ipv6_beside_ipv4() -> None:
    vips = ["10.9.0.201", "10.9.0.210", "10.9.0.200", "fd00::1", "10.9.0.211"]
    assert instances(SPEC, vips) == [
        Instance(51, 100, ("10.9.0.200", "10.9.0.201", "fd00::1")),
        Instance(52, 90, ("10.9.0.210", "10.9.0.211")),
    ]
    # --vrrp-priority replaces the top-level priority, not a group's own.
    assert [i.priority for i in instances(SPEC, vips, priority=150)] == [150, 90]
    # A group with none of its VIPs wanted is not rendered (keepalived refuses an empty one).
    assert instances(SPEC, ["10.9.0.201"]) == [Instance(51, 100, ("10.9.0.201",))]
    # IPv6 VIPs alone would need IPv6 adverts: not with IPv4 unicast peers ...
    assert instances(SPEC, ["fd00::1"]) == []
    # ... but over multicast on the interface (IPv6 link-local adverts).
    assert instances(VrrpSpec(interface="eth0"), ["fd00::1"]) == [Instance(51, 100, ("fd00::1",))]


def test_ipv6_vips_ride_beside_the_ipv4_ones_or_alone(tmp_path: Path) -> None:
    """The adverts carry one family: IPv6 VIPs are excluded from them beside IPv4 ones;
    alone, they are the advertised ones. The real keepalived accepts both."""
    spec = VrrpSpec(interface="eth0")
    mixed = render(spec, instances(spec, ["fd00::1", "10.9.0.201"]), fifo=tmp_path / "f", router_id="d")
    assert (
        "  virtual_ipaddress {\n    10.9.0.201/32 dev eth0\n  }\n"
        "  virtual_ipaddress_excluded {\n    fd00::1/128 dev eth0\n  }\n"
    ) in mixed
    alone = render(spec, instances(spec, ["fd00::1"]), fifo=tmp_path / "f", router_id="d")
    assert "  virtual_ipaddress {\n    fd00::1/128 dev eth0\n  }\n" in alone
    assert "virtual_ipaddress_excluded" not in alone
    for name, text in (("mixed", mixed), ("alone", alone)):
        conf = tmp_path / f"{name}.conf"
        conf.write_text(text)
        check = subprocess.run(
            ["keepalived", "--config-test", "--use-file", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, (name, check.stdout + check.stderr)


def test_render_is_keepalived_conf() -> None:
    text = render(
        SPEC, instances(SPEC, ["10.9.0.201", "10.9.0.210"]), fifo=Path("/run/x/fifo"), router_id="d1"
    )
    assert text == (
        "# Written by kubelvs director: VRRP only; kubelvs owns the load-balancing table.\n"
        "global_defs {\n"
        "  router_id d1\n"
        "  notify_fifo /run/x/fifo\n"
        "}\n"
        "\n"
        "vrrp_instance kubelvs_51 {\n"
        "  state BACKUP\n"
        "  interface eth0\n"
        "  virtual_router_id 51\n"
        "  priority 100\n"
        "  advert_int 0.1\n"
        "  version 3\n"
        "  unicast_src_ip 10.9.0.1\n"
        "  unicast_peer {\n"
        "    10.9.0.2\n"
        "  }\n"
        "  virtual_ipaddress {\n"
        "    10.9.0.201/32 dev eth0\n"
        "  }\n"
        "}\n"
        "\n"
        "vrrp_instance kubelvs_52 {\n"
        "  state BACKUP\n"
        "  interface eth0\n"
        "  virtual_router_id 52\n"
        "  priority 90\n"
        "  advert_int 0.1\n"
        "  version 3\n"
        "  unicast_src_ip 10.9.0.1\n"
        "  unicast_peer {\n"
        "    10.9.0.2\n"
        "  }\n"
        "  virtual_ipaddress {\n"
        "    10.9.0.210/32 dev eth0\n"
        "  }\n"
        "}\n"
    )


def test_many_vips_beyond_the_advert_are_held_too(tmp_path: Path) -> None:
    spec = VrrpSpec(interface="eth0", nopreempt=True)
    vips = [f"10.9.1.{i}" for i in range(1, 31)]
    text = render(spec, instances(spec, vips), fifo=tmp_path / "f", router_id="d")
    shown, _, excluded = text.partition("virtual_ipaddress_excluded {")
    assert shown.count("/32 dev eth0") == 20 and excluded.count("/32 dev eth0") == 10
    assert "  nopreempt\n" in text
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    # The real keepalived reads it without complaint.
    check = subprocess.run(
        ["keepalived", "--config-test", "--use-file", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_keepalived_accepts_every_option(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(
        render(SPEC, instances(SPEC, ["10.9.0.201", "10.9.0.210"]), fifo=tmp_path / "f", router_id="d")
    )
    check = subprocess.run(
        ["keepalived", "--config-test", "--use-file", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("vrrp", "path", "reason"),
    [
        ({"priority": 100}, "vrrp.interface", "required"),
        ({"interface": "eth0", "priority": 255}, "vrrp.priority", "255"),
        ({"interface": "eth0", "advert_interval": 0}, "vrrp.advert_interval", "0"),
        (
            {"interface": "eth0", "unicast_peers": ["10.0.0.300"]},
            "vrrp.unicast_peers[0]",
            "not an IP address",
        ),
        (
            {"interface": "eth0", "unicast_src_ip": "10.0.0.1"},
            "vrrp.unicast_peers",
            "required with unicast_src_ip",
        ),
        ({"interface": "eth0", "nopreempt": True, "preempt_delay": 5}, "vrrp.preempt_delay", "nopreempt"),
        ({"interface": "eth0", "auth_pass": "x"}, "vrrp.auth_pass", "unknown key"),
        (
            {"interface": "eth0", "groups": [{"virtual_router_id": 51, "vips": ["10.0.0.1"]}]},
            "vrrp.groups[0].virtual_router_id",
            "already vrrp.virtual_router_id's",
        ),
        (
            {
                "interface": "eth0",
                "groups": [
                    {"virtual_router_id": 52, "vips": ["10.0.0.1"]},
                    {"virtual_router_id": 53, "vips": ["10.0.0.1"]},
                ],
            },
            "vrrp.groups[1].vips[0]",
            "already in vrrp.groups[0]",
        ),
        (
            {"interface": "eth0", "groups": [{"virtual_router_id": 52, "vips": []}]},
            "vrrp.groups[0].vips",
            "at least one",
        ),
    ],
)
def test_bad_vrrp_is_refused_naming_the_field(vrrp: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"vrrp": vrrp})
    assert any(e.field == path and reason in e.reason for e in caught.value.errors), caught.value


def test_parse_notify() -> None:
    assert parse_notify('INSTANCE "kubelvs_51" MASTER 150\n') == ("kubelvs_51", "MASTER")
    assert parse_notify('GROUP "g" BACKUP\n') is None
    assert parse_notify("") is None


# ---------------------------------------------------------------------- the real keepalived


def _vips(ns: str) -> set[str]:
    return {a.cidr for a in iproute.addresses(ns, "eth0") if a.cidr.endswith("/32")}


@pytest.mark.netns
def test_announcer_holds_follows_restarts_and_releases(
    make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    director, peer = make_netns("dir"), make_netns("peer")
    iproute.add_veth(director, "eth0", "eth0", peer_netns=peer)
    for ns, address in ((director, "10.9.0.1/24"), (peer, "10.9.0.2/24")):
        iproute.add_address(ns, "eth0", address)
        iproute.set_link_up(ns, "eth0")
    spec = VrrpSpec(interface="eth0", advert_interval=0.1)
    changes: list[str] = []
    announcer = VrrpAnnouncer(
        tmp_path / "vrrp", netns=director, priority=150, router_id="t", on_change=lambda: changes.append("x")
    )

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(announcer.run(stop))
        announcer.update(spec, ["10.9.0.201"])
        # Alone on the link: master after the master-down interval, the VIP on eth0.
        await until(lambda: announcer.master and _vips(director) == {"10.9.0.201/32"}, timeout=15)
        assert announcer.document()["instances"]["kubelvs_51"]["state"] == "MASTER" and changes
        first = announcer.pid
        assert first is not None
        # The VIP set follows the desired state: a reload, not a restart.
        announcer.update(spec, ["10.9.0.201", "10.9.0.202"])
        await until(lambda: _vips(director) == {"10.9.0.201/32", "10.9.0.202/32"}, timeout=15)
        assert announcer.pid == first and announcer.starts == 1
        # keepalived dies: started again (after 1 s), the VIPs held again.
        os.kill(first, signal.SIGKILL)
        await until(lambda: announcer.starts == 2 and announcer.master, timeout=15)
        await until(lambda: _vips(director) == {"10.9.0.201/32", "10.9.0.202/32"}, timeout=15)
        second = announcer.pid
        assert second is not None and second != first
        # No VIP left to hold: keepalived stops and the VIPs go.
        announcer.update(spec, [])
        await until(lambda: announcer.pid is None and _vips(director) == set(), timeout=15)
        announcer.update(spec, ["10.9.0.203"])
        await until(lambda: announcer.master and _vips(director) == {"10.9.0.203/32"}, timeout=15)
        third = announcer.pid
        stop.set()
        await task
        # The director stopped: keepalived with it, the VIP released.
        assert announcer.document()["pid"] is None and _vips(director) == set()
        assert third is not None and not Path(f"/proc/{third}").exists()

    asyncio.run(main())


def _deprecated6(ns: str) -> dict[str, bool]:
    """The global IPv6 /128s on eth0 -> deprecated (preferred_lft 0)."""
    out = subprocess.run(
        ["ip", "-n", ns, "-6", "addr", "show", "dev", "eth0", "scope", "global"],
        capture_output=True,
        text=True,
    )
    found = {}
    for line in out.stdout.splitlines():
        words = line.split()
        if words and words[0] == "inet6" and words[1].endswith("/128"):
            found[words[1]] = "deprecated" in words
    return found


@pytest.mark.netns
def test_ipv6_vips_are_held_deprecated_beside_ipv4_ones_and_alone(
    make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    """The real keepalived: an IPv6 VIP beside an IPv4 one, then one alone (adverts over
    IPv6 multicast), each held on the master as a deprecated /128 (never the director's
    source address: docs/ipv6.md), released when the director stops."""
    director, peer = make_netns("dir6"), make_netns("peer6")
    iproute.add_veth(director, "eth0", "eth0", peer_netns=peer)
    for ns, address in ((director, "10.9.0.1/24"), (peer, "10.9.0.2/24")):
        iproute.add_address(ns, "eth0", address)
        iproute.set_link_up(ns, "eth0")
    subprocess.run(["ip", "-n", director, "addr", "add", "fd00:9::1/64", "dev", "eth0", "nodad"], check=True)
    spec = VrrpSpec(interface="eth0", advert_interval=0.1)
    announcer = VrrpAnnouncer(tmp_path / "vrrp6", netns=director, priority=150, router_id="t6")

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(announcer.run(stop))
        announcer.update(spec, ["10.9.0.201", "fd00:9::201"])
        await until(
            lambda: announcer.master and _deprecated6(director) == {"fd00:9::201/128": True}, timeout=15
        )
        assert _vips(director) == {"10.9.0.201/32"}
        announcer.update(spec, ["fd00:9::202"])
        await until(
            lambda: (
                announcer.master
                and _deprecated6(director) == {"fd00:9::202/128": True}
                and not _vips(director)
            ),
            timeout=20,
        )
        stop.set()
        await task
        assert _deprecated6(director) == {}

    asyncio.run(main())


# ---------------------------------------------------------------------- the director


def test_director_starts_the_connection_sync_once_and_leaves_a_foreign_one(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(
        "owned_cidrs: [10.240.0.0/24]\nrecommended_sysctls: false\n"
        "vrrp: {interface: eth0, virtual_router_id: 7, sync_daemon: {}}\n"
        "services: [{vip: 10.240.0.1, port: 80, scheduler: rr, realservers: [{address: 10.240.0.101}]}]\n"
    )

    def step_with(backend: MemoryBackend) -> None:
        async def main() -> None:
            program = await start_director(DirectorOptions(), ConfigFileSource(config), backend=backend)
            try:
                await asyncio.to_thread(program.step, True)
                await asyncio.to_thread(program.step, False)
            finally:
                await program.close()

        asyncio.run(main())

    ours = MemoryBackend()
    step_with(ours)
    assert ours.connection_sync == ConnectionSync("eth0", 7)  # interface and id from vrrp:
    assert len(ours.read().services) == 1
    foreign = MemoryBackend()
    foreign.connection_sync = ConnectionSync("eth1", 9)
    step_with(foreign)  # reported, not replaced; the table is programmed all the same
    assert foreign.connection_sync == ConnectionSync("eth1", 9) and len(foreign.read().services) == 1


def test_status_shows_the_vrrp_role() -> None:
    state = {
        "pid": 1,
        "backend": "nftables",
        "source": "config file lb.yaml",
        "vrrp": {
            "running": True,
            "pid": 42,
            "starts": 1,
            "instances": {"kubelvs_51": {"state": "MASTER", "since": time.time() - 125}},
        },
    }
    assert "  vrrp: kubelvs_51 MASTER for 2m (keepalived pid 42)\n" in director_lines(state)


def test_the_director_says_when_it_takes_and_gives_up_the_vips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """keepalived's notifications (master, backup) become VIPAnnounced / VIPWithdrawn on
    each service of the instance's VIPs (a log line; an Event with Kubernetes)."""
    config = tmp_path / "lb.yaml"
    config.write_text(
        "owned_cidrs: [10.240.0.0/24]\nrecommended_sysctls: false\n"
        "vrrp: {interface: eth0, virtual_router_id: 7}\n"
        "services: [{vip: 10.240.0.1, port: 80, scheduler: rr, realservers: [{address: 10.240.0.101}]}]\n"
    )

    async def main() -> None:
        program = await start_director(DirectorOptions(), ConfigFileSource(config), backend=MemoryBackend())
        try:
            await asyncio.to_thread(program.step, True)
            program.vrrp.update(program.source.current(full=True).vrrp, ["10.240.0.1"])
            (name,) = program.vrrp.vips_of_instances()
            for state in ("BACKUP", "MASTER", "MASTER", "FAULT"):
                program.vrrp.roles[name] = (state, time.time())
                program._vrrp_changed()  # what keepalived's notify FIFO reader calls
        finally:
            await program.close()

    with caplog.at_level("INFO", logger="kubelvs.director"):
        asyncio.run(main())
    assert said(caplog) == [
        ("VIPAnnounced", "TCP 10.240.0.1:80", "10.240.0.1 announced by this director (VRRP master)"),
        ("VIPWithdrawn", "TCP 10.240.0.1:80", "10.240.0.1 withdrawn by this director (VRRP fault)"),
    ]
