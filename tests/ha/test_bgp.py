"""Active-active directors over BGP: the config's ``bgp:`` (validated like the rest), bird's
configuration rendered from it (accepted by the real bird), which VIPs the director
announces, and the announcer running the real bird against a real BGP peer (bird in
another namespace): the route appears, follows the VIP set, and is withdrawn before
bird stops on a planned stop."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kubelvs.app.bgp import BgpAnnouncer
from kubelvs.app.bird import announceable, parse_protocols, render
from kubelvs.app.director import DirectorOptions, start_director
from kubelvs.backends.memory import MemoryBackend
from kubelvs.errors import ConfigError
from kubelvs.kernel import iproute
from kubelvs.lab.spec import router_bird_config
from kubelvs.sources.bgp import BgpPeerSpec, BgpSpec
from kubelvs.sources.config import parse_config
from kubelvs.sources.file import ConfigFileSource

from ..unit.test_director_program import until
from .said import said

SPEC = BgpSpec(
    local_as=64512,
    peers=(BgpPeerSpec("10.9.0.254", 64500), BgpPeerSpec("10.9.0.253", 64500, password="s3cret")),
    router_id="10.9.0.1",
)


def test_render_is_bird_conf(tmp_path: Path) -> None:
    text = render(SPEC, ["10.9.0.202", "10.9.0.201", "fd00::1"])
    assert text == (
        "# Written by kubelvs director: BGP announcements of the VIPs it serves.\n"
        "log stderr { info, remote, warning, error, auth, fatal, bug };\n"
        'timeformat protocol "%s";\n'
        "router id 10.9.0.1;\n"
        "protocol device {}\n"
        "protocol static kubelvs_vips {\n"
        "  ipv4;\n"
        "  route 10.9.0.201/32 unreachable;\n"
        "  route 10.9.0.202/32 unreachable;\n"
        "}\n"
        "protocol bfd {\n"
        '  interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n'
        "}\n"
        "protocol bgp peer_10_9_0_254 {\n"
        "  local as 64512;\n"
        "  neighbor 10.9.0.254 port 179 as 64500;\n"
        "  hold time 3; keepalive time 1;\n"
        "  connect retry time 1;\n"
        "  bfd on;\n"
        '  ipv4 { import none; export where proto = "kubelvs_vips"; next hop self; };\n'
        "}\n"
        "protocol bgp peer_10_9_0_253 {\n"
        "  local as 64512;\n"
        "  neighbor 10.9.0.253 port 179 as 64500;\n"
        "  hold time 3; keepalive time 1;\n"
        "  connect retry time 1;\n"
        "  bfd on;\n"
        '  password "s3cret";\n'
        '  ipv4 { import none; export where proto = "kubelvs_vips"; next hop self; };\n'
        "}\n"
    )
    # The real bird parses it (and the lab router's), and one without routes or BFD.
    for name, conf in (
        ("director", text),
        ("empty", render(BgpSpec(local_as=65000, peers=(BgpPeerSpec("10.9.0.254", 65001),), bfd=False), [])),
        ("router", router_bird_config({"dir1": "10.240.0.2", "dir2": "10.240.0.3"})),
    ):
        path = tmp_path / f"{name}.conf"
        path.write_text(conf)
        check = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, (name, check.stdout + check.stderr)


def test_each_family_goes_to_the_peers_of_that_family(tmp_path: Path) -> None:
    """Routers peer once per family: IPv4 VIPs over the IPv4 session, IPv6 VIPs over the
    IPv6 one (an IPv6 route over an IPv4 session would have no IPv6 next hop)."""
    spec = BgpSpec(
        local_as=64512, peers=(BgpPeerSpec("10.9.0.254", 64500), BgpPeerSpec("fd00:9::fe", 64500)), bfd=False
    )
    text = render(spec, ["fd00:9::201", "10.9.0.201", "fd00:9::10"])
    assert (
        "protocol static kubelvs_vips {\n  ipv4;\n  route 10.9.0.201/32 unreachable;\n}\n"
        "protocol static kubelvs_vips6 {\n  ipv6;\n  route fd00:9::10/128 unreachable;\n"
        "  route fd00:9::201/128 unreachable;\n}\n"
    ) in text
    assert '  ipv4 { import none; export where proto = "kubelvs_vips"; next hop self; };\n' in text
    assert (
        "protocol bgp peer_fd00_9__fe {\n  local as 64512;\n  neighbor fd00:9::fe port 179 as 64500;\n"
        "  hold time 3; keepalive time 1;\n  connect retry time 1;\n"
        '  ipv6 { import none; export where proto = "kubelvs_vips6"; next hop self; };\n}\n'
    ) in text
    path = tmp_path / "dual.conf"
    path.write_text(text)
    check = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # Without an IPv6 peer an IPv6 VIP is not announced, and not said to be.
    assert announceable(SPEC, ["10.9.0.201", "fd00:9::201"]) == {"10.9.0.201"}
    assert announceable(spec, ["10.9.0.201", "fd00:9::201"]) == {"10.9.0.201", "fd00:9::201"}


@pytest.mark.parametrize(
    ("bgp", "path", "reason"),
    [
        ({"peers": [{"address": "10.0.0.1", "peer_as": 1}]}, "bgp.local_as", "required"),
        ({"local_as": 0, "peers": [{"address": "10.0.0.1", "peer_as": 1}]}, "bgp.local_as", "0"),
        ({"local_as": 1, "peers": []}, "bgp.peers", "at least one peer"),
        (
            {"local_as": 1, "peers": [{"address": "router", "peer_as": 1}]},
            "bgp.peers[0].address",
            "not an IP",
        ),
        (
            {
                "local_as": 1,
                "peers": [{"address": "10.0.0.1", "peer_as": 1}, {"address": "10.0.0.1", "peer_as": 2}],
            },
            "bgp.peers[1].address",
            "already bgp.peers[0]",
        ),
        (
            {"local_as": 1, "peers": [{"address": "10.0.0.1", "peer_as": 1}], "hold_time": 1},
            "bgp.hold_time",
            "1",
        ),
        (
            {"local_as": 1, "peers": [{"address": "10.0.0.1", "peer_as": 1, "password": 'a"b'}]},
            "bgp.peers[0].password",
            "double quote",
        ),
        (
            {"local_as": 1, "peers": [{"address": "10.0.0.1", "peer_as": 1}], "router_id": "::1"},
            "bgp.router_id",
            "IPv4",
        ),
        (
            {"local_as": 1, "peers": [{"address": "10.0.0.1", "peer_as": 1, "asn": 5}]},
            "bgp.peers[0].asn",
            "unknown key",
        ),
    ],
)
def test_bad_bgp_is_refused_naming_the_field(bgp: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"bgp": bgp})
    assert any(e.field == path and reason in e.reason for e in caught.value.errors), caught.value


def test_parse_protocols() -> None:
    text = (
        "BIRD 2.0.12 ready.\n"
        "Name       Proto      Table      State  Since         Info\n"
        "device1    Device     ---        up     1796173978\n"
        "peer_10_9_0_254 BGP   ---        up     1796173980    Established\n"
        "peer_10_9_0_253 BGP   ---        start  1796173978    Active        Socket: Connection refused\n"
        "peer_10_9_0_252 BGP   ---        down   1796173978\n"
    )
    assert parse_protocols(text) == {
        "peer_10_9_0_254": "Established",
        "peer_10_9_0_253": "Active",
        "peer_10_9_0_252": "down",
    }


def test_the_director_announces_only_vips_it_can_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A VIP whose real servers all have weight 0 is not announced; the IPVS active-active
    sysctls are recommended with ``bgp:`` (checked on the memory backend named ipvs). What
    is announced or withdrawn is said on each service (a log line; an Event with Kubernetes)."""
    config = tmp_path / "lb.yaml"
    config.write_text(
        "owned_cidrs: [10.240.0.0/24]\n"
        "bgp: {local_as: 64512, peers: [{address: 10.240.0.254, peer_as: 64500}]}\n"
        "services:\n"
        "  - {vip: 10.240.0.1, port: 80, scheduler: rr, realservers: [{address: 10.240.0.101}]}\n"
        "  - {vip: 10.240.0.1, port: 443, scheduler: rr, realservers: [{address: 10.240.0.101, weight: 0}]}\n"
        "  - {vip: 10.240.0.2, port: 80, scheduler: rr, realservers: [{address: 10.240.0.101, weight: 0}]}\n"
        "  - {vip: 10.240.0.3, port: 80, scheduler: rr, realservers: []}\n"
    )
    backend = MemoryBackend()
    backend.name = "ipvs"

    async def main() -> tuple[frozenset[str], frozenset[str]]:
        program = await start_director(DirectorOptions(), ConfigFileSource(config), backend=backend)
        try:
            await asyncio.to_thread(program.step, True)
            first = program.served_vips
            # 10.240.0.1:80's only real server goes to weight 0: the VIP is withdrawn.
            config.write_text(
                config.read_text().replace(
                    "[{address: 10.240.0.101}]", "[{address: 10.240.0.101, weight: 0}]"
                )
            )
            await program.source.open()  # the file read again
            await asyncio.to_thread(program.step, True)
            return first, program.served_vips
        finally:
            await program.close()

    with caplog.at_level("INFO", logger="kubelvs.director"):
        first, then = asyncio.run(main())
    assert first == {"10.240.0.1"} and then == set()
    assert said(caplog) == [
        ("VIPAnnounced", "TCP 10.240.0.1:80", "10.240.0.1 announced by this director (BGP)"),
        ("VIPAnnounced", "TCP 10.240.0.1:443", "10.240.0.1 announced by this director (BGP)"),
        ("VIPWithdrawn", "TCP 10.240.0.1:80", "10.240.0.1 withdrawn by this director (BGP)"),
        ("VIPWithdrawn", "TCP 10.240.0.1:443", "10.240.0.1 withdrawn by this director (BGP)"),
    ]
    sysctls = backend.read(sysctls=["net.ipv4.vs.sloppy_tcp"]).sysctls
    assert sysctls.get("net.ipv4.vs.sloppy_tcp") == 1


# ---------------------------------------------------------------------- the real bird


def _routes(ns: str, *family: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", ns, *family, "-o", "route", "show", "proto", "bird"], capture_output=True, text=True
    )
    return {line.split()[0] for line in out.stdout.splitlines()}


#: The router's side of an IPv6 session: what a top-of-rack router does, ECMP into its kernel.
ROUTER6 = """
log stderr { info, remote, warning, error, auth, fatal, bug };
router id 10.240.0.254;
protocol device {}
protocol kernel { ipv6 { import none; export all; }; merge paths on; }
protocol bgp dir1 {
  local as 64500; neighbor fd00:240::2 as 64512; hold time 3; keepalive time 1; connect retry time 1;
  ipv6 { import all; export none; };
}
"""


@pytest.mark.netns
def test_announcer_announces_ipv6_vips_to_a_real_ipv6_peer(
    make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    director, router = make_netns("dir6"), make_netns("router6")
    iproute.add_veth(director, "eth0", "eth0", peer_netns=router)
    for ns, address in ((director, "fd00:240::2/64"), (router, "fd00:240::fe/64")):
        subprocess.run(["ip", "-n", ns, "addr", "add", address, "dev", "eth0", "nodad"], check=True)
        iproute.set_link_up(ns, "eth0")
    peer_conf = tmp_path / "router6.conf"
    peer_conf.write_text(ROUTER6)
    peer = subprocess.Popen(
        ["ip", "netns", "exec", router, "bird", "-f", "-c", str(peer_conf), "-s", str(tmp_path / "r6.ctl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # An IPv6-only director: bird takes its router id from an IPv4 address, so it is given.
    spec = BgpSpec(
        local_as=64512,
        peers=(BgpPeerSpec("fd00:240::fe", 64500),),
        router_id="10.240.0.2",
        bfd=False,
        withdraw_delay=1.0,
    )
    announcer = BgpAnnouncer(tmp_path / "bgp6", netns=director)
    try:

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(announcer.run(stop))
            announcer.update(spec, ["fd00:240::201", "10.240.0.201"])
            await until(lambda: _routes(router, "-6") == {"fd00:240::201"}, timeout=20)
            await until(lambda: announcer.sessions == {"fd00:240::fe": "Established"}, timeout=20)
            assert announcer.document()["announced"] == ["fd00:240::201"]  # no IPv4 peer: not the IPv4 VIP
            route = subprocess.run(
                ["ip", "-n", router, "-6", "route", "show", "fd00:240::201"], capture_output=True, text=True
            ).stdout
            assert "via fd00:240::2 dev eth0" in route  # next hop self: the director
            stop.set()
            await until(lambda: _routes(router, "-6") == set(), timeout=2.5)
            await task

        asyncio.run(main())
    finally:
        peer.terminate()
        peer.wait(10)


@pytest.mark.netns
def test_announcer_against_a_real_peer(make_netns: Callable[[str], str], tmp_path: Path) -> None:
    director, router = make_netns("dir"), make_netns("router")
    iproute.add_veth(director, "eth0", "eth0", peer_netns=router)
    for ns, address in ((director, "10.240.0.2/24"), (router, "10.240.0.254/24")):
        iproute.add_address(ns, "eth0", address)
        iproute.set_link_up(ns, "eth0")
    peer_conf = tmp_path / "router.conf"
    peer_conf.write_text(router_bird_config({"dir1": "10.240.0.2"}))
    peer = subprocess.Popen(
        ["ip", "netns", "exec", router, "bird", "-f", "-c", str(peer_conf), "-s", str(tmp_path / "r.ctl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    spec = BgpSpec(local_as=64512, peers=(BgpPeerSpec("10.240.0.254", 64500),), withdraw_delay=3.0)
    announcer = BgpAnnouncer(tmp_path / "bgp", netns=director)
    try:

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(announcer.run(stop))
            announcer.update(spec, ["10.240.0.201"])
            await until(lambda: _routes(router) == {"10.240.0.201"}, timeout=20)
            await until(lambda: announcer.sessions == {"10.240.0.254": "Established"}, timeout=20)
            assert announcer.document()["announced"] == ["10.240.0.201"]
            first = announcer.pid
            # The set follows the desired state: birdc configure, the session stays up.
            announcer.update(spec, ["10.240.0.202"])
            await until(lambda: _routes(router) == {"10.240.0.202"}, timeout=20)
            assert announcer.pid == first and announcer.starts == 1
            # A planned stop: the routes go first, while bird still runs (withdraw_delay) ...
            stop.set()
            await until(lambda: _routes(router) == set(), timeout=2.5)
            assert announcer.pid == first
            await task
            # ... then bird stops.
            assert announcer.pid is None and first is not None and not Path(f"/proc/{first}").exists()

        asyncio.run(main())
    finally:
        peer.terminate()
        peer.wait(10)
