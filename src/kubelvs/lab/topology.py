"""The LVS-DR external-IP setup of a Kubernetes Service as network namespaces on one machine.

    client 10.240.0.10 ──┐                          (or, with a router / in nat:
    dir1   10.240.0.2  ──┤ segment 10.240.0.0/24     client 192.168.58.36 ─ router
    node1  10.240.0.101 ─┤ (bridge in <prefix>-sw)   192.168.58.254 / 10.240.0.254)
    node2  10.240.0.102 ─┘
      └ cbr0 10.230.N.1/24 ─ pods whoami-nodeN-M 10.230.N.(9+M):8080

- Every director holds the VIP on eth0 (it answers ARP for it, as a DR director does) and runs
  the real ``kubelvs director -f director.yaml --backend auto`` (IPVS where the kernel
  has it, nftables otherwise).
- Every worker runs what kube-proxy installs for the Service's external IP (the
  three KUBE-SERVICES rules, as nftables in table ``ip kubelvs_lab_proxy``): traffic to
  VIP:80 that comes from outside, or that is addressed to a VIP the node holds, is
  marked for masquerade and DNATed to one of the node's pods on 8080. (kube-proxy picks
  from all pods of the cluster; the lab keeps each node's traffic on its own pods -
  externalTrafficPolicy: Local - so that "which node answered" is visible.) A counter
  ``vip_forwarded`` counts VIP packets the node *routes on* (the accept_local loop).
- Every worker runs ``kubelvs node -f director.yaml`` (VIP on lo, arp_ignore/announce,
  rp_filter), unless the caller (a scenario) wants to show the node without it.
- Every pod runs the whoami server (``kubelvs.lab.servers http``): it answers with its
  pod name and the client address it saw.

The lab's record (spec, hosts, PIDs, config, logs) lives in ``/run/kubelvs/lab/<prefix>/``
so that ``lab status|exec|down`` in another process find it; ``down`` needs only the
prefix: it removes every namespace called ``<prefix>-*`` (killing what runs inside by
PID first) and that directory, also when the process that built the lab crashed.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..app.state import remove_director_state
from ..errors import LabError
from ..kernel import iproute
from ..kernel.netns import entered
from .kube import lab_kubectl_json
from .netlab import Lab
from .spec import (
    AGENT_METRICS_PORT,
    CLIENT_NET,
    DEFAULT_PREFIX,
    KUBECTL_FILE,
    LAB_TIMEOUTS,
    METRICS_PORT,
    PROXY_TABLE,
    READY_TIMEOUT,
    SEGMENT,
    SEGMENT6,
    STATE_ROOT,
    LabInfo,
    LabSpec,
    NodeInfo,
    PodInfo,
    director_config,
    host6,
    load_info,
    pod_network6,
    proxy_ruleset,
    router_bird_config,
    state_dir,
    vrrp_priority,
)
from .teardown import down, lab_namespaces

# The lab's spec and record (``spec``) and its removal (``teardown``) are re-exported:
# "the lab" is what callers import, whichever module a part lives in.
__all__ = [
    "DEFAULT_PREFIX",
    "KUBECTL_FILE",
    "LAB_TIMEOUTS",
    "PROXY_TABLE",
    "STATE_ROOT",
    "LabInfo",
    "LabSpec",
    "NodeInfo",
    "PodInfo",
    "RunningLab",
    "build",
    "director_config",
    "down",
    "lab_namespaces",
    "load_info",
    "proxy_ruleset",
    "state_dir",
]


@dataclass
class RunningLab:
    """A built lab in this process: the netlab ``Lab`` plus its saved record."""

    lab: Lab
    info: LabInfo

    def save(self) -> None:
        (Path(self.info.state_dir) / "lab.json").write_text(self.info.to_json())

    def run(
        self, role: str, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.info.netns_of(role), *argv, check=check, timeout=timeout)

    def log(self, name: str) -> Path:
        return Path(self.info.state_dir) / f"{name}.log"

    def start_director(self, name: str = "dir1", *, config: str | None = None) -> int:
        ns = self.info.directors[name]
        proc = self.lab.start_python(
            ns,
            "kubelvs",
            "director",
            "-f",
            config or self.info.config,
            "--backend",
            self.info.spec.backend,
            "--poll",
            "0.3",
            *(("--vrrp-priority", str(vrrp_priority(name))) if self.info.spec.vrrp else ()),
            "--metrics-address",
            f"0.0.0.0:{METRICS_PORT}" if self.info.spec.metrics else "off",
            log=self.log(f"director-{name}"),
        )
        self.info.pids[f"director {name}"] = proc.pid
        self.save()
        return proc.pid

    def start_agent(self, node: str) -> int:
        info = next(n for n in self.info.nodes if n.name == node)
        proc = self.lab.start_python(
            info.netns,
            "kubelvs",
            "node",
            "-f",
            self.info.config,
            "--interface",
            "eth0",
            "--state-dir",
            str(Path(self.info.state_dir) / "node-state" / node),
            "--poll",
            "1",
            "--metrics-address",
            f"0.0.0.0:{AGENT_METRICS_PORT}" if self.info.spec.metrics else "off",
            log=self.log(f"agent-{node}"),
        )
        self.info.pids[f"agent {node}"] = proc.pid
        self.save()
        return proc.pid

    def start_pod(self, pod: PodInfo) -> int:
        """Start one pod's web server (it answers with the pod's name)."""
        proc = self.lab.start_python(
            pod.netns,
            "kubelvs.lab.servers",
            "http",
            "--name",
            pod.name,
            "--port",
            str(self.info.spec.target_port),
            *(("--bind", "::") if self.info.spec.ipv6 else ()),  # a dual-stack socket
            log=self.log(f"pod-{pod.name}"),
        )
        self.info.pids[f"pod {pod.name}"] = proc.pid
        self.save()
        return proc.pid

    def stop(self, key: str) -> None:
        """Stop one process of the lab by its record key (``director dir1``, ``agent node1``)."""
        pid = self.info.pids.pop(key, None)
        for proc in list(self.lab.processes):
            if proc.pid == pid:
                self.lab.stop(proc)
        self.save()

    def start_router_bgp(self) -> int:
        """bird on the router: BGP sessions with every director, ECMP into its routes."""
        assert self.info.router is not None
        conf = Path(self.info.state_dir) / "router-bird.conf"
        conf.write_text(router_bird_config(self.info.director_ips))
        run = Path(self.info.state_dir) / "router-bird"
        proc = self.lab.start(
            self.info.router,
            "bird",
            "-f",
            "-c",
            str(conf),
            "-s",
            f"{run}.ctl",
            "-P",
            f"{run}.pid",
            log=self.log("router-bird"),
        )
        self.info.pids["bird router"] = proc.pid
        self.save()
        return proc.pid

    def router_paths(self) -> list[str]:
        """The next hops of the router's route to the VIP (the directors it spreads flows over)."""
        assert self.info.router is not None
        out = self.lab.run(
            self.info.router, "ip", "-o", "route", "show", f"{self.info.spec.vip}/32", check=False
        )
        return sorted(set(re.findall(r"via (\S+)", out.stdout)))

    def wait_router_paths(self, count: int, *, timeout: float = READY_TIMEOUT) -> float:
        """Until the router's route to the VIP has ``count`` next hops; returns when (wall time)."""
        deadline = time.monotonic() + timeout
        while len(self.router_paths()) != count:
            if time.monotonic() > deadline:
                raise LabError(
                    f"the router's route to {self.info.spec.vip} has next hops {self.router_paths()}, "
                    f"not {count} (log: {self.log('router-bird')})"
                )
            time.sleep(0.02)
        return time.time()

    def crash(self, key: str) -> None:
        """Kill one process of the lab with SIGKILL, by its record key: a machine that dies
        cleans nothing up."""
        pid = self.info.pids.pop(key, None)
        for proc in list(self.lab.processes):
            if proc.pid == pid:
                proc.popen.kill()
                proc.popen.wait()
                self.lab.processes.remove(proc)
        self.save()

    def wait_director(self, name: str = "dir1", *, timeout: float = READY_TIMEOUT) -> None:
        """Until the director has done its first full sync (its log says so)."""
        path = self.log(f"director-{name}")
        self._wait(
            lambda: "full sync" in _read(path),
            timeout,
            f"director {name} did not sync",
            path,
            pid=self.info.pids.get(f"director {name}"),
        )

    def wait_agent(
        self,
        node: str,
        *,
        ready: Callable[[], bool] | None = None,  # None: until the node holds the VIP
        what: str = "",
        timeout: float = READY_TIMEOUT,
    ) -> None:
        """Until ``ready()``, evaluated inside the node's namespace, holds; by default until
        the node holds the VIPs (the agent put them on lo or kubelvs0). Fails early, with the
        agent's log, when the agent exited."""
        ns = next(n.netns for n in self.info.nodes if n.name == node)
        vips = {f"{vip}/{128 if ':' in vip else 32}" for vip in self.info.spec.vips}
        vip = ", ".join(sorted(vips))

        def has_vip() -> bool:
            return vips <= {a.cidr for a in iproute.addresses(ns)}

        def in_node() -> bool:
            assert ready is not None
            with entered(ns):
                return ready()

        self._wait(
            in_node if ready else has_vip,
            timeout,
            f"node agent on {node} did not {what or f'put {vip} in place'}",
            self.log("agent-" + node),
            pid=self.info.pids.get(f"agent {node}"),
        )

    def _wait(self, ready: Any, timeout: float, what: str, log: Path, *, pid: int | None = None) -> None:
        """Poll ``ready``; fail early when the process ``pid`` (director, agent) exited.
        The log is read when failing, not before: the process may still be writing it."""
        deadline = time.monotonic() + timeout
        proc = next((p for p in self.lab.processes if p.pid == pid), None)
        while not ready():
            if proc is not None and proc.popen.poll() is not None:
                raise LabError(
                    f"{what}; it exited with status {proc.popen.returncode}; its log:\n{_read(log)}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"{what} within {timeout:.0f} s; its log:\n{_read(log)}")
            time.sleep(0.1)

    def teardown(self) -> None:
        self.lab.teardown()
        for ns in self.info.directors.values():
            remove_director_state(ns)  # written until the director stopped
        shutil.rmtree(self.info.state_dir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def build(spec: LabSpec) -> RunningLab:
    """Build the lab, start its servers (and director and node agents as the spec says),
    wait until they are ready. On any failure everything built so far is removed."""
    spec.check()
    if lab_namespaces(spec.prefix):
        raise LabError(
            f"lab {spec.prefix} is already up (or left over): run kubelvs lab down --prefix {spec.prefix}"
        )
    from ..backends.base import ipvs_available

    backend = spec.backend if spec.backend != "auto" else ("ipvs" if ipvs_available() else "nftables")
    if spec.topology == "tun":
        from ..backends.nftables.backend import tun_supported

        if not tun_supported():
            raise LabError(
                "topology: tun needs IPIP tunnels and this kernel has no ipip; "
                "run it in the VM (scripts/vm-run)"
            )
    sdir = state_dir(spec.prefix)
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(parents=True)
    lab = Lab(spec.prefix)
    try:
        running = _build(lab, spec, sdir, backend)
    except subprocess.TimeoutExpired as exc:
        lab.teardown()
        shutil.rmtree(sdir, ignore_errors=True)
        raise LabError(
            f"building the lab timed out: {' '.join(map(str, exc.cmd))} took over {exc.timeout:.0f} s"
        ) from exc
    except BaseException:
        lab.teardown()
        shutil.rmtree(sdir, ignore_errors=True)
        raise
    return running


def _host6(number: int) -> ipaddress.IPv6Address:
    return host6(SEGMENT6, number)


def _v6(spec: LabSpec, number: int) -> list[str]:
    """A segment host's IPv6 address (CIDR form), when the lab has IPv6."""
    return [f"{_host6(number)}/{SEGMENT6.prefixlen}"] if spec.ipv6 else []


def _build(lab: Lab, spec: LabSpec, sdir: Path, backend: str) -> RunningLab:
    seg = SEGMENT.network_address
    plen = SEGMENT.prefixlen
    vip = spec.vip
    # --- the segment's hosts
    router_ns: str | None = None
    if spec.with_router:
        router = lab.host("router", [f"{seg + 254}/{plen}"])
        router_ns = router.netns
        client_ns = lab.namespace("client")
        lab.run(
            router_ns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", client_ns
        )
        lab.run(router_ns, "ip", "addr", "add", f"{CLIENT_NET.network_address + 254}/24", "dev", "eth1")
        lab.run(router_ns, "ip", "link", "set", "eth1", "up")
        client_ip = str(CLIENT_NET.network_address + 36)
        lab.run(client_ns, "ip", "addr", "add", f"{client_ip}/24", "dev", "eth0")
        lab.run(client_ns, "ip", "link", "set", "eth0", "up")
        lab.run(client_ns, "ip", "route", "add", "default", "via", str(CLIENT_NET.network_address + 254))
        lab.sysctl(router_ns, "net.ipv4.ip_forward", 1)
    else:
        client = lab.host("client", [f"{seg + 10}/{plen}", *_v6(spec, 10)])
        client_ns, client_ip = client.netns, client.ip
    directors: dict[str, str] = {}
    director_ips: dict[str, str] = {}
    director_macs: dict[str, str] = {}
    for d in range(1, spec.directors + 1):
        name = f"dir{d}"
        # With VRRP the VIP is keepalived's to add, on the master only.
        host = lab.host(
            name,
            [f"{seg + 1 + d}/{plen}"]
            + ([] if spec.vrrp or vip not in spec.vips else [f"{vip}/32"])
            + _v6(spec, 1 + d),
        )
        directors[name], director_ips[name], director_macs[name] = host.netns, host.ip, host.mac
        if spec.ipv6:
            # Deprecated, as keepalived adds it: the director must not pick the VIP as the
            # source of its own packets to the nodes (health checks; docs/ipv6.md).
            lab.run(
                host.netns, "ip", "-6", "addr", "add", f"{spec.vip6}/128", "dev", "eth0", "preferred_lft", "0"
            )
        for key, value in (("net.ipv4.conf.all.send_redirects", 0), ("net.ipv4.conf.eth0.send_redirects", 0)):
            lab.sysctl(host.netns, key, value)
        if spec.with_router:
            lab.run(host.netns, "ip", "route", "add", str(CLIENT_NET), "via", str(seg + 254))
        if spec.topology == "nat":
            lab.sysctl(host.netns, "net.ipv4.ip_forward", 1)
    if router_ns is not None:
        hops = [ip for ip in director_ips.values()]
        if spec.vrrp:  # on the segment: whoever answers ARP for it (the master)
            lab.run(router_ns, "ip", "route", "add", f"{vip}/32", "dev", "eth0")
        elif spec.bgp:  # bird installs the route, ECMP over the directors that announce it
            lab.sysctl(router_ns, "net.ipv4.fib_multipath_hash_policy", 1)
        elif len(hops) == 1:
            lab.run(router_ns, "ip", "route", "add", f"{vip}/32", "via", hops[0])
        else:
            nexthops = [w for ip in hops for w in ("nexthop", "via", ip)]
            lab.sysctl(router_ns, "net.ipv4.fib_multipath_hash_policy", 1)  # L4 hash: flows spread
            lab.run(router_ns, "ip", "route", "add", f"{vip}/32", *nexthops)
    # --- workers and pods
    nodes: list[NodeInfo] = []
    for n in range(1, spec.nodes + 1):
        name = f"node{n}"
        host = lab.host(name, [f"{seg + 100 + n}/{plen}", *_v6(spec, 100 + n)])
        ns = host.netns
        lab.sysctl(ns, "net.ipv4.ip_forward", 1)  # it routes its pods' traffic, as a k8s node does
        if spec.ipv6:
            lab.sysctl(ns, "net.ipv6.conf.all.forwarding", 1)
        if spec.with_router:
            via = director_ips["dir1"] if spec.topology == "nat" else str(seg + 254)
            lab.run(ns, "ip", "route", "add", str(CLIENT_NET), "via", via)
        pod_cidr = ipaddress.ip_network(f"10.230.{n}.0/24")
        gw = pod_cidr.network_address + 1
        lab.run(ns, "ip", "link", "add", "cbr0", "type", "bridge")
        lab.run(ns, "ip", "addr", "add", f"{gw}/24", "dev", "cbr0")
        pod_net6 = pod_network6(n)
        if spec.ipv6:
            lab.run(ns, "ip", "addr", "add", f"{host6(pod_net6, 1)}/64", "dev", "cbr0", "nodad")
        lab.run(ns, "ip", "link", "set", "cbr0", "up")
        pods = []
        for m in range(1, spec.pods + 1):
            pod_ns = lab.namespace(f"{name}-pod{m}")
            pod_ip = str(pod_cidr.network_address + 9 + m)
            lab.run(
                ns, "ip", "link", "add", f"vp{m}", "type", "veth", "peer", "name", "eth0", "netns", pod_ns
            )
            lab.run(ns, "ip", "link", "set", f"vp{m}", "master", "cbr0", "up")
            lab.run(pod_ns, "ip", "addr", "add", f"{pod_ip}/24", "dev", "eth0")
            lab.run(pod_ns, "ip", "link", "set", "eth0", "up")
            lab.run(pod_ns, "ip", "route", "add", "default", "via", str(gw))
            pod_ip6 = ""
            if spec.ipv6:
                pod_ip6 = str(host6(pod_net6, 9 + m))
                lab.run(pod_ns, "ip", "addr", "add", f"{pod_ip6}/64", "dev", "eth0", "nodad")
                lab.run(pod_ns, "ip", "-6", "route", "add", "default", "via", str(host6(pod_net6, 1)))
            pods.append(PodInfo(name=f"whoami-{name}-{m}", node=name, netns=pod_ns, ip=pod_ip, ip6=pod_ip6))
        node_info = NodeInfo(
            name=name,
            netns=ns,
            ip=host.ip,
            mac=host.mac,
            pod_cidr=str(pod_cidr),
            pods=tuple(pods),
            ip6=str(_host6(100 + n)) if spec.ipv6 else "",
        )
        nodes.append(node_info)
        # The first nft in a VM loads modules on an emulated CPU: allow minutes.
        lab.run(ns, "nft", "-f", "-", input=proxy_ruleset(spec, node_info), timeout=300)
    if spec.topology == "nat":
        for node in nodes:
            for dns in directors.values():
                lab.run(dns, "ip", "route", "add", node.pod_cidr, "via", node.ip)
    config = sdir / "director.yaml"
    config.write_text(director_config(spec, nodes))
    # The Service the lab stands for, as kubectl prints it: what doctor compares with.
    (sdir / KUBECTL_FILE).write_text(lab_kubectl_json(spec, nodes))
    info = LabInfo(
        spec=spec,
        client=client_ns,
        client_ip=client_ip,
        router=router_ns,
        directors=directors,
        director_ips=director_ips,
        director_macs=director_macs,
        nodes=tuple(nodes),
        config=str(config),
        state_dir=str(sdir),
        namespaces=tuple(lab.namespaces),
        backend=backend,
        client_ip6=str(_host6(10)) if spec.ipv6 and router_ns is None else "",
    )
    running = RunningLab(lab, info)
    running.save()
    # --- processes
    if spec.bgp:
        running.start_router_bgp()
    for node in nodes:
        for pod in node.pods:
            running.start_pod(pod)
    if spec.agents and spec.topology in ("dr", "tun"):
        for node in nodes:
            running.start_agent(node.name)
    if spec.director:
        for name in directors:
            running.start_director(name)
    for node in nodes:
        for pod in node.pods:
            lab.wait_listening(pod.netns, spec.target_port, timeout=READY_TIMEOUT)
    if spec.agents and spec.topology in ("dr", "tun"):
        for node in nodes:
            running.wait_agent(node.name)
    if spec.director:
        for name in directors:
            running.wait_director(name)
        if spec.bgp:
            running.wait_router_paths(len(directors))
    return running
