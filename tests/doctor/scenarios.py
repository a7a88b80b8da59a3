"""Broken (and healthy) LVS states built for real in network namespaces, then captured
with ``kubelvs doctor collect``. IPVS scenarios need a kernel with IPVS (the VM tier):

    scripts/vm-run -- .venv/bin/python -m tests.doctor.scenarios vm tests/fixtures/bundles

captures every IPVS scenario into ``<out>/vm-<name>/`` (commit-ready fixtures). Scenarios
for the machine's own kernel (no IPVS: ARP/rp_filter/accept_local on DR real servers):

    .venv/bin/python -m tests.doctor.scenarios machine tests/fixtures/bundles

Every namespace is called ``kubelvs-c<token>-<role>`` and is deleted afterwards, and the
only processes stopped are the servers started here, by PID. kubectl.json files are
written by hand in kubectl's JSON shape (there is no cluster here): they describe the
Services the IPVS table is meant to serve.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NotRequired, TypedDict

PY = sys.executable
SERVER = r"""
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(512); socks.append(s)
def serve(s):
    while True:
        c, _ = s.accept()
        try: c.sendall(b"ok\n")
        finally: c.close()
for s in socks[1:]:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
serve(socks[0])
"""
# The same on IPv6 (dual-stack sockets: IPv4 clients are answered too).
SERVER6 = SERVER.replace("socket.socket()", "socket.socket(socket.AF_INET6)").replace('"0.0.0.0"', '"::"')
CLIENT = r"""
import socket, sys
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ok = 0
for i in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET); s.settimeout(timeout)
    try:
        s.connect((host, port)); s.recv(10); ok += 1
    except OSError:
        pass
    finally:
        s.close()
print(ok)
"""
# One connection from (source address, source port): prints "connected <what the server
# said>" (or "failed"), then waits for the server to close first (so that the client keeps
# no TIME_WAIT and may use the same port again at once), or with --hold until stdin closes.
CONNECT = r"""
import socket, sys
host, port, src, sport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.settimeout(3)
s.bind((src, sport))
try:
    s.connect((host, port)); print("connected", s.recv(64).decode().strip(), flush=True)
except OSError:
    print("failed", flush=True); sys.exit(0)
if "--hold" in sys.argv:
    sys.stdin.read()
else:
    while s.recv(64):
        pass
s.close()
"""
# Answers with the address it was reached on; closes the first connection at once (the
# server closes first), holds every later one open until the client goes.
HOLD_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("ready", flush=True)
held = []
while True:
    c, _ = s.accept(); c.sendall(c.getsockname()[0].encode() + b"\n")
    if held or "--hold-all" in sys.argv:
        held.append(c)
    else:
        c.close(); held.append(None)
"""


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Lab:
    """Namespaces and server processes of one scenario; ``close`` removes all of them."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(2)
        self.namespaces: list[str] = []
        self.servers: list[subprocess.Popen[str]] = []

    def name(self, role: str) -> str:
        return f"kubelvs-c{self.token}-{role}"

    def ns(self, role: str) -> str:
        name = self.name(role)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def run(self, ns: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def sysctl(self, ns: str, **values: int) -> None:
        for name, value in values.items():
            self.run(ns, "sysctl", "-qw", f"{name.replace('__', '/').replace('_DOT_', '.')}={value}")

    def link(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            for one in filter(None, addr.split(",")):
                sh("ip", "-n", ns, "addr", "add", one, "dev", ifname)
            sh("ip", "-n", ns, "link", "set", ifname, "up")

    def server(self, ns: str, *ports: int, hold: bool = False, ipv6: bool = False) -> None:
        """``hold``: one port, answered with the address reached; the first connection is
        closed at once, later ones are held open. ``ipv6``: listen on ``::``."""
        script = HOLD_SERVER if hold else SERVER6 if ipv6 else SERVER
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PY, "-c", script, *map(str, ports)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        self.servers.append(proc)

    def connect(self, ns: str, host: str, port: int, src: str, sport: int, *, hold: bool = False) -> str:
        """One connection from ``src:sport``: "connected <reply>" or "failed". ``hold``: kept
        open until the lab closes; else closed after the server closed it."""
        argv = ["ip", "netns", "exec", ns, PY, "-c", CONNECT, host, str(port), src, str(sport)]
        if not hold:
            return sh(*argv).strip()
        proc = subprocess.Popen(
            [*argv, "--hold"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        self.servers.append(proc)
        return proc.stdout.readline().strip()

    def clients(self, ns: str, host: str, port: int, n: int, timeout: float = 2.0) -> int:
        return int(self.run(ns, PY, "-c", CLIENT, host, str(port), str(n), str(timeout)).strip() or 0)

    def collect(self, ns: str, out: Path, role: str) -> None:
        subprocess.run(
            [
                PY,
                "-m",
                "kubelvs",
                "doctor",
                "collect",
                str(out),
                "--netns",
                ns,
                "--role",
                role,
                "--no-kubectl",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        errors = out / "collect-errors.txt"
        if errors.exists():
            errors.unlink()  # which tools were missing on the capturing host: not part of the fixture
        (out / "sysctl-conf.txt").unlink(missing_ok=True)  # the capturing host's files, not the scenario's

    def close(self) -> None:
        for proc in self.servers:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()


class KubeService(TypedDict):
    """One Service for ``kubectl_json``: its cluster IP, port and target port, the
    addresses of its ready endpoints and its externalIPs."""

    name: str
    ip: str
    port: int
    target: int
    endpoints: list[str]
    protocol: NotRequired[str]
    external: NotRequired[list[str]]


def kubectl_json(services: list[KubeService]) -> str:
    """kubectl get svc,endpoints,endpointslices,nodes -A -o json, for ``services``:
    {name, ip, port, target, protocol, endpoints: [ip], external: [ip]}."""
    items: list[dict[str, object]] = []
    for s in services:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": s["name"], "namespace": "default"},
                "spec": {
                    "clusterIP": s["ip"],
                    "clusterIPs": [s["ip"]],
                    "type": "ClusterIP",
                    "externalIPs": s.get("external", []),
                    "ports": [
                        {
                            "name": "p",
                            "port": s["port"],
                            "protocol": s.get("protocol", "TCP"),
                            "targetPort": s["target"],
                        }
                    ],
                },
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "addressType": "IPv4",
                "metadata": {
                    "name": f"{s['name']}-x1",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": s["name"]},
                },
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in s["endpoints"]],
                "ports": [{"name": "p", "port": s["target"], "protocol": s.get("protocol", "TCP")}],
            }
        )
    return json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}, indent=2
    )


# ---------------------------------------------------------------------------- IPVS (VM tier)


def nat_lab(
    lab: Lab, *, vip: str, forward: bool = True, healthy_sysctls: bool = True
) -> tuple[str, str, str]:
    """client 10.0.1.2 -> director (10.0.1.1 | 10.0.2.1, VIP on kube-ipvs0) -> pods 10.0.2.2/.3."""
    d, c, r = lab.ns("dir"), lab.ns("cli"), lab.ns("rs")
    lab.link(d, "eth-cli", "10.0.1.1/24", c, "eth0", "10.0.1.2/24")
    lab.link(d, "eth-rs", "10.0.2.1/24", r, "eth0", "10.0.2.2/24,10.0.2.3/24")
    sh("ip", "-n", c, "route", "add", "default", "via", "10.0.1.1")
    sh("ip", "-n", r, "route", "add", "default", "via", "10.0.2.1")
    sh("ip", "-n", d, "link", "add", "kube-ipvs0", "type", "dummy")
    sh("ip", "-n", d, "addr", "add", f"{vip}/32", "dev", "kube-ipvs0")
    lab.run(d, "sysctl", "-qw", f"net.ipv4.ip_forward={1 if forward else 0}")
    if healthy_sysctls:
        lab.run(
            d, "sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.expire_quiescent_template=1"
        )
        lab.run(d, "ipvsadm", "--set", "7260", "30", "300")  # above tcp_keepalive_time 7200
    return d, c, r


def vm_healthy(lab: Lab, out: Path) -> None:
    d, c, r = nat_lab(lab, vip="10.96.0.10")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.10:80", "-s", "rr")
    for ip in ("10.0.2.2", "10.0.2.3"):
        lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.10:80", "-r", f"{ip}:8080", "-m")
    lab.server(r, 8080)
    assert lab.clients(c, "10.96.0.10", 80, 20) == 20
    lab.collect(d, out, "director")
    (out / "kubectl.json").write_text(
        kubectl_json(
            [
                {
                    "name": "web",
                    "ip": "10.96.0.10",
                    "port": 80,
                    "target": 8080,
                    "endpoints": ["10.0.2.2", "10.0.2.3"],
                }
            ]
        )
    )


def vm_stale(lab: Lab, out: Path) -> None:
    """The stale real server incident: port 80 left beside targetPort 6379."""
    d, c, r = nat_lab(lab, vip="10.96.0.20")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.20:6379", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.20:6379", "-r", "10.0.2.2:80", "-m")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.20:6379", "-r", "10.0.2.2:6379", "-m")
    lab.server(r, 6379)
    ok = lab.clients(c, "10.96.0.20", 6379, 10)
    assert ok == 5, ok  # every second connection is refused: the incident's "50% loss"
    lab.collect(d, out, "director")
    (out / "kubectl.json").write_text(
        kubectl_json(
            [
                {
                    "name": "skuapi-rds-prod",
                    "ip": "10.96.0.20",
                    "port": 6379,
                    "target": 6379,
                    "endpoints": ["10.0.2.2"],
                }
            ]
        )
    )


def vm_weight_zero(lab: Lab, out: Path) -> None:
    d, c, r = nat_lab(lab, vip="10.96.0.25")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.25:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.25:80", "-r", "10.0.2.2:8080", "-m")
    lab.run(
        d, "ipvsadm", "-a", "-t", "10.96.0.25:80", "-r", "10.0.2.3:8080", "-m", "-w", "0"
    )  # drained, never deleted
    lab.server(r, 8080)
    assert lab.clients(c, "10.96.0.25", 80, 6) == 6
    lab.collect(d, out, "director")
    (out / "kubectl.json").write_text(
        kubectl_json(
            [{"name": "web", "ip": "10.96.0.25", "port": 80, "target": 8080, "endpoints": ["10.0.2.2"]}]
        )
    )


def vm_dr_port(lab: Lab, out: Path) -> None:
    """A Route real server with a port of its own: only possible over netlink (ipvsadm forces
    the service port), which is how controllers program IPVS."""
    from kubelvs.backends.ipvs import IpvsBackend
    from kubelvs.model import Forward, Protocol, RealServer, ServiceKey, VirtualService, parse_address
    from kubelvs.planner import AddRealServer, AddService

    d, _c, _r = nat_lab(lab, vip="10.96.0.30")
    key = ServiceKey(4, Protocol.TCP, parse_address("10.96.0.30"), 80)
    backend = IpvsBackend(netns=d)
    try:
        backend.apply(
            [
                AddService(VirtualService(key=key, scheduler="rr")),
                AddRealServer(key, RealServer(parse_address("10.0.2.2"), 8080, 1, Forward.DR)),
            ]
        )
    finally:
        backend.close()
    lab.collect(d, out, "director")


def vm_syn_recv_tun_rp_filter(lab: Lab, out: Path) -> None:
    """The rp_filter incident on real IPVS: a Tunnel real server whose tunl0 has strict
    rp_filter drops the decapsulated SYNs (their source is routed via eth0), so the
    director's entries stay in SYN_RECV. Director, real server and client share one
    segment (replies go straight to the client). Captured from both hosts (a site bundle)."""
    d, c, r, seg = lab.ns("dir"), lab.ns("cli"), lab.ns("rs"), lab.ns("seg")
    sh("ip", "-n", seg, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", seg, "link", "set", "br0", "up")
    for ns, port, addr in (
        (d, "p-dir", "10.0.3.1/24"),
        (c, "p-cli", "10.0.3.3/24"),
        (r, "p-rs", "10.0.3.2/24"),
    ):
        lab.link(seg, port, "", ns, "eth0", addr)
        sh("ip", "-n", seg, "link", "set", port, "master", "br0")
    sh("ip", "-n", c, "route", "add", "10.96.0.40/32", "via", "10.0.3.1")
    sh("ip", "-n", d, "link", "add", "kube-ipvs0", "type", "dummy")
    sh("ip", "-n", d, "addr", "add", "10.96.0.40/32", "dev", "kube-ipvs0")
    lab.run(d, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.vs.expire_nodest_conn=1")
    lab.run(d, "ipvsadm", "--set", "7260", "30", "300")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.40:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.40:80", "-r", "10.0.3.2:80", "-i")
    lab.run(r, "ip", "link", "set", "tunl0", "up")
    lab.run(r, "ip", "addr", "add", "10.96.0.40/32", "dev", "tunl0")
    lab.run(
        r,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.tunl0.rp_filter=1",
    )
    lab.server(r, 80)
    assert lab.clients(c, "10.96.0.40", 80, 4, timeout=1.5) == 0
    lab.collect(d, out / "director", "director")
    lab.collect(r, out / "realserver", "node")
    # the incident's fix, on the same lab: connections work
    lab.run(r, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.tunl0.rp_filter=0")
    assert lab.clients(c, "10.96.0.40", 80, 4) == 4
    lab.collect(r, out.parent / (out.name + "-fixed") / "realserver", "node")
    lab.collect(d, out.parent / (out.name + "-fixed") / "director", "director")


def vm_timewait(lab: Lab, out: Path) -> None:
    """The TIME_WAIT incident: short connections, kernel default timeouts 900/120/300."""
    d, c, r = nat_lab(lab, vip="10.96.0.50", healthy_sysctls=False)
    lab.run(d, "sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.50:80", "-s", "rr")
    for ip in ("10.0.2.2", "10.0.2.3"):
        lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.50:80", "-r", f"{ip}:8080", "-m")
    lab.server(r, 8080)
    n = int(os.environ.get("KUBELVS_TW_CONNS", "1200"))
    assert lab.clients(c, "10.96.0.50", 80, n) == n
    lab.collect(d, out, "director")


def vm_ip_forward_off(lab: Lab, out: Path) -> None:
    d, c, r = nat_lab(lab, vip="10.96.0.60", forward=False)
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.60:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.60:80", "-r", "10.0.2.2:8080", "-m")
    lab.server(r, 8080)
    assert lab.clients(c, "10.96.0.60", 80, 4, timeout=1.5) == 0
    lab.collect(d, out, "director")


def _ip6_nat(lab: Lab, out: Path, *, forward: bool) -> None:
    """The IPv6 twin of nat_lab: client fd00:1::2 -> director (fd00:1::1 | fd00:2::1, VIP
    fd00:96::60 on kube-ipvs0) -> real server fd00:2::2; IPv6 forwarding on or off."""
    d, c, r = lab.ns("dir"), lab.ns("cli"), lab.ns("rs")
    for ns in (d, c, r):  # addresses usable at once (no duplicate address detection)
        lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
    lab.link(d, "eth-cli", "fd00:1::1/64", c, "eth0", "fd00:1::2/64")
    lab.link(d, "eth-rs", "fd00:2::1/64", r, "eth0", "fd00:2::2/64")
    sh("ip", "-n", c, "-6", "route", "add", "default", "via", "fd00:1::1")
    sh("ip", "-n", r, "-6", "route", "add", "default", "via", "fd00:2::1")
    sh("ip", "-n", d, "link", "add", "kube-ipvs0", "type", "dummy")
    sh("ip", "-n", d, "addr", "add", "fd00:96::60/128", "dev", "kube-ipvs0")
    lab.run(d, "sysctl", "-qw", f"net.ipv6.conf.all.forwarding={1 if forward else 0}")
    lab.run(d, "sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.expire_quiescent_template=1")
    lab.run(d, "ipvsadm", "--set", "7260", "30", "300")
    lab.run(d, "ipvsadm", "-A", "-t", "[fd00:96::60]:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "[fd00:96::60]:80", "-r", "[fd00:2::2]:8080", "-m")
    lab.server(r, 8080, ipv6=True)
    assert lab.clients(c, "fd00:96::60", 80, 4, timeout=1.5) == (4 if forward else 0)
    lab.collect(d, out, "director")


def vm_ip6_forward_off(lab: Lab, out: Path) -> None:
    _ip6_nat(lab, out, forward=False)


def vm_ip6_healthy(lab: Lab, out: Path) -> None:
    _ip6_nat(lab, out, forward=True)


def _ip6_tun_source(lab: Lab, out: Path, *, deprecated: bool) -> None:
    """An IPv6 TUN director holding its VIP fd00:2::200/128 on eth-rs beside its own
    fd00:2::1/64: Linux picks the VIP as the source for the real server fd00:2::2 (the /128
    matches more of the address), so the tunnel packets come from the VIP, which the real
    server holds on lo: it drops them, and the connections hang in SYN_RECV. The real
    server answers the client over its own link (fd00:3::/64). ``deprecated``: the VIP
    added with preferred_lft 0 (the fix), and the same connections work."""
    d, c, r = lab.ns("dir"), lab.ns("cli"), lab.ns("rs")
    for ns in (d, c, r):  # addresses usable at once (no duplicate address detection)
        lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
    lab.link(d, "eth-cli", "fd00:1::1/64", c, "eth0", "fd00:1::2/64")
    lab.link(d, "eth-rs", "fd00:2::1/64", r, "eth0", "fd00:2::2/64")
    lab.link(r, "eth1", "fd00:3::1/64", c, "eth1", "fd00:3::2/64")
    sh("ip", "-n", c, "-6", "route", "add", "default", "via", "fd00:1::1")
    sh("ip", "-n", r, "-6", "route", "add", "fd00:1::/64", "via", "fd00:3::2")
    lifetime = ["preferred_lft", "0"] if deprecated else []
    sh("ip", "-n", d, "-6", "addr", "add", "fd00:2::200/128", "dev", "eth-rs", *lifetime)
    sh("ip", "-n", r, "-6", "addr", "add", "fd00:2::200/128", "dev", "lo")
    lab.run(r, "modprobe", "-q", "ip6_tunnel", check=False)
    sh("ip", "-n", r, "link", "set", "ip6tnl0", "up")
    lab.run(d, "sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.expire_quiescent_template=1")
    lab.run(d, "ipvsadm", "--set", "7260", "30", "300")
    lab.run(d, "ipvsadm", "-A", "-t", "[fd00:2::200]:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "[fd00:2::200]:80", "-r", "[fd00:2::2]:80", "-i")
    lab.server(r, 80, ipv6=True)
    ok = lab.clients(c, "fd00:2::200", 80, 4, timeout=1.5)
    assert ok == (4 if deprecated else 0), ok
    lab.collect(d, out, "director")


def vm_ip6_tun_vip_source(lab: Lab, out: Path) -> None:
    _ip6_tun_source(lab, out, deprecated=False)


def vm_ip6_tun_vip_deprecated(lab: Lab, out: Path) -> None:
    _ip6_tun_source(lab, out, deprecated=True)


def _vip_source(lab: Lab, out: Path, *, fixed: bool) -> None:
    """Node-originated traffic to a VIP held on kube-ipvs0 (as on every kube-proxy IPVS
    node): the director's own connection to the VIP takes the VIP as its source (the local
    route's ``src``); the real server's node holds the VIP too, so the reply stays there
    and never returns: the entries stay in SYN_RECV. ``fixed``: the local route's source
    set to the node's address (the doctor's fix), and the same connections work."""
    d, c, r = nat_lab(lab, vip="10.96.0.70")
    sh("ip", "-n", r, "link", "add", "kube-ipvs0", "type", "dummy")
    sh("ip", "-n", r, "addr", "add", "10.96.0.70/32", "dev", "kube-ipvs0")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.70:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.70:80", "-r", "10.0.2.2:8080", "-m")
    lab.server(r, 8080)
    assert lab.clients(c, "10.96.0.70", 80, 4) == 4  # from a client: fine
    if fixed:
        route = "local 10.96.0.70 dev kube-ipvs0 table local proto kernel scope host src 10.0.2.1"
        lab.run(d, "ip", "route", "replace", *route.split())
    ok = lab.clients(d, "10.96.0.70", 80, 4, timeout=1.5)
    assert ok == (4 if fixed else 0), ok
    lab.collect(d, out, "director")


def vm_vip_source(lab: Lab, out: Path) -> None:
    _vip_source(lab, out, fixed=False)


def vm_vip_source_fixed(lab: Lab, out: Path) -> None:
    _vip_source(lab, out, fixed=True)


def _reused_port(lab: Lab, out: Path, *, expire_nodest_conn: int) -> None:
    """A rolling update with kube-proxy's pre-5.9 conn_reuse_mode=0: 10.0.2.2 is drained
    (weight 0, no longer an endpoint); a client reconnects from the port it used a moment
    ago, the SYN follows the old entry, and the new connection lands on the drained server
    (and stays open). With expire_nodest_conn=1 (the healthy twin) this 6.1 kernel
    schedules such a connection anew, to 10.0.2.3 ("ipvs: Fix reuse connection if RS
    weight is 0")."""
    d, c, r = nat_lab(lab, vip="10.96.0.75")
    lab.run(
        d,
        "sysctl",
        "-qw",
        "net.ipv4.vs.conn_reuse_mode=0",
        f"net.ipv4.vs.expire_nodest_conn={expire_nodest_conn}",
    )
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.75:80", "-s", "rr")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.75:80", "-r", "10.0.2.2:8080", "-m")
    lab.server(r, 8080, hold=True)
    first = lab.connect(c, "10.96.0.75", 80, "10.0.1.2", 40000)
    assert first == "connected 10.0.2.2", first  # the only one; the server closed it
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.75:80", "-r", "10.0.2.3:8080", "-m")
    lab.run(d, "ipvsadm", "-e", "-t", "10.96.0.75:80", "-r", "10.0.2.2:8080", "-m", "-w", "0")
    second = lab.connect(c, "10.96.0.75", 80, "10.0.1.2", 40000, hold=True)
    assert second == ("connected 10.0.2.2" if expire_nodest_conn == 0 else "connected 10.0.2.3"), second
    lab.collect(d, out, "director")
    (out / "kubectl.json").write_text(
        kubectl_json(
            [{"name": "web", "ip": "10.96.0.75", "port": 80, "target": 8080, "endpoints": ["10.0.2.3"]}]
        )
    )


def vm_reused_port(lab: Lab, out: Path) -> None:
    _reused_port(lab, out, expire_nodest_conn=0)


def vm_reused_port_rescheduled(lab: Lab, out: Path) -> None:
    _reused_port(lab, out, expire_nodest_conn=1)


def _persistence(lab: Lab, out: Path, *, expire_quiescent_template: int) -> None:
    """A persistent service (-p 300): the client's template pins it to 10.0.2.2; 10.0.2.2
    is drained (weight 0). With expire_quiescent_template=0 the client's next connection
    still goes there; with 1 (the healthy twin) the template is expired at once and the
    connection goes to 10.0.2.3."""
    d, c, r = nat_lab(lab, vip="10.96.0.80")
    lab.run(d, "sysctl", "-qw", f"net.ipv4.vs.expire_quiescent_template={expire_quiescent_template}")
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.80:80", "-s", "rr", "-p", "300")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.80:80", "-r", "10.0.2.2:8080", "-m")
    lab.server(r, 8080)
    assert lab.clients(c, "10.96.0.80", 80, 2) == 2  # both to 10.0.2.2: the template holds
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.80:80", "-r", "10.0.2.3:8080", "-m")
    lab.run(d, "ipvsadm", "-e", "-t", "10.96.0.80:80", "-r", "10.0.2.2:8080", "-m", "-w", "0")
    assert lab.clients(c, "10.96.0.80", 80, 2) == 2
    lab.collect(d, out, "director")


def vm_persistence_template(lab: Lab, out: Path) -> None:
    _persistence(lab, out, expire_quiescent_template=0)


def vm_persistence_template_expired(lab: Lab, out: Path) -> None:
    _persistence(lab, out, expire_quiescent_template=1)


def _mh_directors(lab: Lab, out: Path, *, same_order: bool) -> None:
    """Two directors of one VIP with the kernel's Maglev scheduler (mh) and the same three
    real servers, added in a different order on the second one (it restarted and saw them
    in another order): IPVS fills the Maglev table walking its destination list, newest
    first, so the two tables differ and a flow moved between directors (ECMP) may change
    real server. ``same_order``: the healthy twin."""
    rs = ["10.0.2.2", "10.0.2.3", "10.0.2.4"]
    for name, order in (("dir1", rs), ("dir2", rs if same_order else [rs[2], rs[0], rs[1]])):
        d = lab.ns(name)
        sh("ip", "-n", d, "link", "add", "kube-ipvs0", "type", "dummy")
        sh("ip", "-n", d, "addr", "add", "10.96.0.90/32", "dev", "kube-ipvs0")
        lab.run(d, "sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.sloppy_tcp=1")
        lab.run(d, "ipvsadm", "--set", "7260", "30", "300")
        lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.90:80", "-s", "mh")
        for ip in order:
            lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.90:80", "-r", f"{ip}:80", "-g")
        lab.collect(d, out / name, "director")


def vm_mh_directors(lab: Lab, out: Path) -> None:
    _mh_directors(lab, out, same_order=False)


def vm_mh_directors_same(lab: Lab, out: Path) -> None:
    _mh_directors(lab, out, same_order=True)


def _mh_without_fallback(lab: Lab, out: Path, *, fallback: bool) -> None:
    """kube-proxy's mh (``mh-port``, no fallback) with a terminating endpoint at weight 0:
    the new connections hashed to it are refused. ``fallback``: the twin with mh-fallback,
    where every one is answered."""
    d, c, r = nat_lab(lab, vip="10.96.0.95")
    flags = "mh-port,mh-fallback" if fallback else "mh-port"
    lab.run(d, "ipvsadm", "-A", "-t", "10.96.0.95:80", "-s", "mh", "-b", flags)
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.95:80", "-r", "10.0.2.2:8080", "-m")
    lab.run(d, "ipvsadm", "-a", "-t", "10.96.0.95:80", "-r", "10.0.2.3:8080", "-m")
    # Its endpoint terminates: weight 0 now. (Added at weight 0 it would not be in the
    # Maglev table at all: the table is built from the weight a server last had above 0.)
    lab.run(d, "ipvsadm", "-e", "-t", "10.96.0.95:80", "-r", "10.0.2.3:8080", "-m", "-w", "0")
    lab.server(r, 8080)
    ok = lab.clients(c, "10.96.0.95", 80, 20)
    assert ok == 20 if fallback else 0 < ok < 20, ok
    print(f"{out.name}: {ok} of 20 new connections answered", flush=True)
    lab.collect(d, out, "director")


def vm_mh_without_fallback(lab: Lab, out: Path) -> None:
    _mh_without_fallback(lab, out, fallback=False)


def vm_mh_with_fallback(lab: Lab, out: Path) -> None:
    _mh_without_fallback(lab, out, fallback=True)


VM_SCENARIOS: dict[str, Callable[[Lab, Path], None]] = {
    "healthy": vm_healthy,
    "stale": vm_stale,
    "weight-zero": vm_weight_zero,
    "dr-port": vm_dr_port,
    "tun-rp-filter": vm_syn_recv_tun_rp_filter,
    "timewait": vm_timewait,
    "ip-forward-off": vm_ip_forward_off,
    "ip6-forward-off": vm_ip6_forward_off,
    "ip6-tun-vip-source": vm_ip6_tun_vip_source,
    "ip6-tun-vip-deprecated": vm_ip6_tun_vip_deprecated,
    "ip6-healthy": vm_ip6_healthy,
    "vip-source": vm_vip_source,
    "vip-source-fixed": vm_vip_source_fixed,
    "reused-port": vm_reused_port,
    "reused-port-rescheduled": vm_reused_port_rescheduled,
    "persistence-template": vm_persistence_template,
    "persistence-template-expired": vm_persistence_template_expired,
    "mh-directors": vm_mh_directors,
    "mh-directors-same": vm_mh_directors_same,
    "mh-without-fallback": vm_mh_without_fallback,
    "mh-with-fallback": vm_mh_with_fallback,
}


# ---------------------------------------------------------------------------- machine kernel


def dr_node_lab(
    lab: Lab,
    *,
    vip: str | None,
    arp_ignore: int,
    arp_announce: int,
    accept_local: int = 0,
    rp_filter: int = 0,
) -> str:
    """A DR real server: eth1 10.240.0.101/24 on a segment with its director; VIP on lo."""
    node, seg = lab.ns("node"), lab.ns("seg")
    lab.link(seg, "to-node", "10.240.0.200/24", node, "eth1", "10.240.0.101/24")
    if vip:
        sh("ip", "-n", node, "addr", "add", f"{vip}/32", "dev", "lo")
    lab.run(
        node,
        "sysctl",
        "-qw",
        f"net.ipv4.conf.eth1.arp_ignore={arp_ignore}",
        f"net.ipv4.conf.eth1.arp_announce={arp_announce}",
        f"net.ipv4.conf.eth1.accept_local={accept_local}",
        f"net.ipv4.conf.eth1.rp_filter={rp_filter}",
    )
    return node


def _whoami_kubectl(out: Path, *external: str) -> None:
    """kubectl.json of the DR node scenarios: the whoami Service with these externalIPs."""
    service: KubeService = {
        "name": "whoami",
        "ip": "10.32.0.60",
        "port": 80,
        "target": 80,
        "endpoints": ["10.230.74.24"],
        "external": list(external),
    }
    (out / "kubectl.json").write_text(kubectl_json([service]))


def m_dr_node_healthy(lab: Lab, out: Path) -> None:
    node = dr_node_lab(lab, vip="10.240.0.201", arp_ignore=1, arp_announce=2)
    lab.collect(node, out, "node")
    _whoami_kubectl(out, "10.240.0.201")


def m_dr_node_arp(lab: Lab, out: Path) -> None:
    node = dr_node_lab(lab, vip="10.240.0.201", arp_ignore=0, arp_announce=0)
    lab.collect(node, out, "node")


# The segment's side asks for the VIP (a TCP connect makes the kernel solicit it) and
# prints the neighbour entry it got: a MAC when the node answered.
SOLICIT = r"""
import socket, subprocess, sys
s = socket.socket(socket.AF_INET6); s.settimeout(1.5)
try: s.connect((sys.argv[1], 80))
except OSError: pass
print(subprocess.run(["ip", "-6", "neigh", "show", sys.argv[1]], capture_output=True, text=True).stdout)
"""


def _dr_node_vip6(lab: Lab, out: Path, *, on_lan: bool = False, proxy: bool = False) -> None:
    """A dual-stack DR real server: the IPv4 VIP on lo, the IPv6 VIP on lo or (the mistake)
    on its LAN interface eth1, where it answers the segment's neighbour solicitations: the
    scenario checks that it does, and does not from lo. ``proxy``: the VIP on lo, and a
    proxy neighbour entry for it on eth1 with proxy_ndp and forwarding on there (the other
    mistake), which answers too."""
    node = dr_node_lab(lab, vip="10.240.0.201", arp_ignore=1, arp_announce=2)
    seg = lab.name("seg")
    sh("ip", "-n", seg, "addr", "add", "fd00:240::200/64", "dev", "to-node", "nodad")
    sh("ip", "-n", node, "addr", "add", "fd00:240::101/64", "dev", "eth1", "nodad")
    if on_lan:
        sh("ip", "-n", node, "addr", "add", "fd00:240::201/64", "dev", "eth1", "nodad")
    else:
        sh("ip", "-n", node, "addr", "add", "fd00:240::201/128", "dev", "lo")
        sh("ip", "-n", seg, "-6", "route", "add", "fd00:240::201/128", "dev", "to-node")
    if proxy:
        sh("ip", "-n", node, "-6", "neigh", "add", "proxy", "fd00:240::201", "dev", "eth1")
        lab.run(node, "sysctl", "-qw", "net.ipv6.conf.eth1.proxy_ndp=1", "net.ipv6.conf.eth1.forwarding=1")
    answered = "lladdr" in lab.run(seg, PY, "-c", SOLICIT, "fd00:240::201")
    assert answered == (on_lan or proxy), (
        f"the node {'answered' if answered else 'did not answer'} for the VIP"
    )
    lab.collect(node, out, "node")
    _whoami_kubectl(out, "10.240.0.201", "fd00:240::201")


def m_dr_node_vip6_on_lan(lab: Lab, out: Path) -> None:
    _dr_node_vip6(lab, out, on_lan=True)


def m_dr_node_vip6_proxy_ndp(lab: Lab, out: Path) -> None:
    _dr_node_vip6(lab, out, proxy=True)


def m_dr_node_vip6_healthy(lab: Lab, out: Path) -> None:
    _dr_node_vip6(lab, out)


def m_dr_node_loop(lab: Lab, out: Path) -> None:
    """The worker-local VIP loop's setup: no VIP, accept_local=1 and rp_filter=1 on eth1."""
    node = dr_node_lab(lab, vip=None, arp_ignore=1, arp_announce=2, accept_local=1, rp_filter=1)
    lab.collect(node, out, "node")
    _whoami_kubectl(out, "10.240.0.201")


def m_rp_filter_tunnel(lab: Lab, out: Path) -> None:
    """kube-router-like node: kube-bridge and a tun-<ip> tunnel (vxlan here: the machine kernel
    has no ipip), conf.all.rp_filter=1 as CentOS 7 ships it."""
    node = lab.ns("node")
    peer = lab.ns("peer")
    lab.link(peer, "eth0", "192.168.9.26/24", node, "em1", "192.168.9.27/24")
    sh("ip", "-n", node, "link", "add", "kube-bridge", "type", "bridge")
    sh("ip", "-n", node, "addr", "add", "172.26.6.1/24", "dev", "kube-bridge")
    sh("ip", "-n", node, "link", "set", "kube-bridge", "up")
    sh(
        "ip",
        "-n",
        node,
        "link",
        "add",
        "tun-192168926",
        "type",
        "vxlan",
        "id",
        "26",
        "remote",
        "192.168.9.26",
        "dstport",
        "4789",
        "dev",
        "em1",
    )
    sh("ip", "-n", node, "link", "set", "tun-192168926", "up")
    lab.run(
        node,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.em1.rp_filter=1",
        "net.ipv4.conf.tun-192168926.rp_filter=1",
    )
    lab.collect(node, out, "node")


def m_node_healthy(lab: Lab, out: Path) -> None:
    node = lab.ns("node")
    peer = lab.ns("peer")
    lab.link(peer, "eth0", "192.168.9.26/24", node, "em1", "192.168.9.27/24")
    sh("ip", "-n", node, "link", "add", "kube-bridge", "type", "bridge")
    sh("ip", "-n", node, "link", "set", "kube-bridge", "up")
    lab.run(node, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.em1.rp_filter=2")
    lab.collect(node, out, "node")


MACHINE_SCENARIOS: dict[str, Callable[[Lab, Path], None]] = {
    "dr-node-healthy": m_dr_node_healthy,
    "dr-node-arp": m_dr_node_arp,
    "dr-node-loop": m_dr_node_loop,
    "dr-node-vip6-on-lan": m_dr_node_vip6_on_lan,
    "dr-node-vip6-proxy-ndp": m_dr_node_vip6_proxy_ndp,
    "dr-node-vip6-healthy": m_dr_node_vip6_healthy,
    "rp-filter-tunnel": m_rp_filter_tunnel,
    "node-healthy": m_node_healthy,
}


def main(argv: list[str]) -> int:
    tier, out_dir = argv[0], Path(argv[1])
    only = set(argv[2:])
    scenarios = VM_SCENARIOS if tier == "vm" else MACHINE_SCENARIOS
    prefix = "vm-" if tier == "vm" else "m-"
    for name, build in scenarios.items():
        if only and name not in only:
            continue
        target = out_dir / f"{prefix}{name}"
        started = time.monotonic()
        with lab() as the_lab:
            target.mkdir(parents=True, exist_ok=True)
            build(the_lab, target)
        print(f"{target}: {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
