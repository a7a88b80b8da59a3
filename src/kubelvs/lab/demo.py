"""``kubelvs demo``: an LVS-DR external IP end to end, with one command.

Lab up (director running ``kubelvs director``, workers running ``kubelvs node``), N
requests from the client to the VIP, a table of which pod and node answered (the
``curl http://VIP`` output, one row per request), the director's counters as the proof that replies
bypassed it, lab down - also when something fails half-way. ``--ip-family dual``: the
same over the Service's IPv6 VIP after its IPv4 one (``ipv6`` in the JSON), each family
proven on its own.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..app.state import read_director_state, state_path
from ..backends import open_backend
from ..errors import BackendError
from ..formats.explain import render_site
from ..formats.top import Frame, frame
from ..formats.top import render as render_top
from ..model import ServiceKey, host_text, hostport
from .explain import explain_directors
from .topology import LabSpec, RunningLab, build, down, lab_namespaces
from .traffic import DirectorCounters, Result, requests, tally

__all__ = ["DemoResult", "render", "run_demo"]

DEMO_PREFIX = (
    "kubelvs-demolab"  # not "kubelvs-demo": scripts/demo-ipvs names its namespace kubelvs-demo-<pid>
)


@dataclass
class DemoResult:
    topology: str
    backend: str
    vip: str
    port: int
    client: str
    requests: int
    succeeded: int
    by_pod: dict[str, int]
    by_node: dict[str, int]
    replies_via_director: int  # reply packets (from the VIP or a real server) that reached a director
    requests_via_director: int  # request packets to the VIP that reached a director
    pods: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    top: Frame | None = None  # ``kubelvs top`` over the requests (one director)
    explain: dict[str, Any] | None = None  # ``kubelvs lab explain`` of the last answered request (IPv4)
    ip_family: str = "ipv4"  # the lab's: ipv4, ipv6 or dual
    ipv6: DemoResult | None = None  # dual: the same measured over the IPv6 VIP

    @property
    def ok(self) -> bool:
        """Every request answered, every node's pods answered, and replies took the
        path of the forwarding method (bypass the director in DR/TUN, cross it in NAT)."""
        spread = _answered_all(self.by_node, self.nodes, self.requests) and _answered_all(
            self.by_pod, self.pods, self.requests
        )
        path_ok = self.replies_via_director > 0 if self.topology == "nat" else self.replies_via_director == 0
        both = self.ipv6 is None or self.ipv6.ok
        return (
            self.succeeded == self.requests and spread and path_ok and self.requests_via_director > 0 and both
        )

    def as_json(self) -> dict[str, Any]:
        out = {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "by_pod": self.by_pod,
            "by_node": self.by_node,
            "replies_via_director": self.replies_via_director,
        }
        extra = asdict(self)
        for key in out:
            extra.pop(key)
        extra.pop("answers")
        extra["top"] = self.top.as_dict() if self.top is not None else None
        extra["ipv6"] = self.ipv6.as_json() if self.ipv6 is not None else None
        return {**out, **extra, "ok": self.ok}


def _answered_all(answered: dict[str, int], expected: list[str], requests: int) -> bool:
    """Every expected node (or pod) answered, required once missing one by chance
    would be rarer than 1 in 10,000: flows pick at random, so 2 nodes need 15
    requests, 4 pods 37 (the bound is the union over them, n * (1 - 1/n) ** requests)."""
    n = len(expected)
    missed_by_chance = n * (1 - 1 / n) ** requests if n else 0.0
    return set(answered) == set(expected) or missed_by_chance > 1e-4


def measure(running: RunningLab, count: int) -> DemoResult:
    """Send ``count`` requests to each VIP of the lab's Service (IPv4 first) and collect
    the result."""
    first, *more = running.info.spec.vips
    result = _measure(running, first, count)
    if more:
        result.ipv6 = _measure(running, more[0], count)
    return result


def _measure(running: RunningLab, vip: str, count: int) -> DemoResult:
    """``count`` requests to ``vip`` through a built, running lab."""
    info = running.info
    spec = info.spec
    ipv6 = ":" in vip
    sources = (
        [(p.ip6 if ipv6 else p.ip, spec.target_port) for n in info.nodes for p in n.pods]
        if spec.topology == "nat"
        else [(n.ip6 if ipv6 else n.ip, spec.port) for n in info.nodes]
    )
    counters = [
        DirectorCounters(ns, vip=vip, port=spec.port, reply_sources=sources) for ns in info.directors.values()
    ]
    window = _TopWindow(info.backend, info.directors["dir1"]) if len(info.directors) == 1 else None
    results = requests(info.client, vip, spec.port, count)
    top = window.frame() if window is not None else None
    answered = [r for r in results if r.ok]
    explained = None
    if answered and not ipv6:  # kubelvs explain hashes IPv4 flows (docs/observability.md)
        # The client's port as the pod saw it: the node's masquerading keeps it.
        port = int(answered[-1].client.rsplit(":", 1)[1])
        key = ServiceKey.parse(f"TCP {vip}:{spec.port}")
        try:
            explained = explain_directors(info, info.client_ip, port, key)
        except BackendError as exc:  # said in the result; the demo's traffic stands on its own
            explained = {"error": str(exc)}
    by_pod, by_node = tally(results, info.pod_node())
    reqs = reps = 0
    for c in counters:
        a, b = c.read()
        reqs += a
        reps += b
    return DemoResult(
        topology=spec.topology,
        backend=info.backend,
        vip=vip,
        port=spec.port,
        client=info.client_ip6 if ipv6 else info.client_ip,
        requests=count,
        succeeded=sum(r.ok for r in results),
        by_pod=dict(sorted(by_pod.items())),
        by_node=dict(sorted(by_node.items())),
        replies_via_director=reps,
        requests_via_director=reqs,
        pods=sorted(info.pod_node()),
        nodes=[n.name for n in info.nodes],
        answers=[_answer(r, info.pod_node()) for r in results],
        top=top,
        explain=explained,
        ip_family=spec.ip_family,
    )


class _TopWindow:
    """The director's table read before and after the requests: ``kubelvs top``'s frame
    of exactly them, with the director's names from its state file."""

    def __init__(self, backend: str, netns: str) -> None:
        self.netns = netns
        self.backend = open_backend(backend, netns=netns)  # type: ignore[arg-type]
        self.before, self.at = self.backend.read(), time.monotonic()

    def frame(self) -> Frame:
        try:
            after = self.backend.read()
            seconds = time.monotonic() - self.at
        finally:
            self.backend.close()
        return frame(
            self.backend.name, self.before, after, seconds, read_director_state(state_path(self.netns))
        )


def _answer(r: Result, pod_node: dict[str, str]) -> dict[str, Any]:
    return {"ok": r.ok, "pod": r.pod, "node": pod_node.get(r.pod, ""), "client": r.client, "error": r.error}


def run_demo(spec: LabSpec, count: int, *, log: Any = None) -> DemoResult:
    """Build, measure, tear down (always)."""
    say = log or (lambda _msg: None)
    if lab_namespaces(spec.prefix):
        say(f"removing a lab left over by an earlier run: {spec.prefix}")
        down(spec.prefix)
    say(f"lab up: {spec.topology}, {spec.nodes} nodes x {spec.pods} pods, backend {spec.backend} ...")
    running = build(spec)
    try:
        say(
            f"director running `kubelvs director --backend {spec.backend}` ({running.info.backend}); "
            "node agents ready"
        )
        return measure(running, count)
    finally:
        running.teardown()
        down(spec.prefix)  # anything teardown could not reach (it is by prefix)
        say("lab down")


def render(result: DemoResult) -> str:
    text = _render_one(result)
    if result.ipv6 is not None:
        text += "\n" + _render_one(result.ipv6)
        text += f"both families: {'OK' if result.ok else 'FAILED'}\n"
    return text


def _render_one(result: DemoResult) -> str:
    lines = [
        f"$ curl http://{host_text(result.vip)}"
        + (f":{result.port}" if result.port != 80 else "")
        + f"   x{result.requests}, from the client {result.client}",
        f"  {'#':>3}  {'Hostname (pod)':<18} {'node':<7} RemoteAddr (as the pod saw it)",
    ]
    for i, a in enumerate(result.answers, 1):
        if a["ok"]:
            lines.append(f"  {i:>3}  {a['pod']:<18} {a['node']:<7} {a['client']}")
        else:
            lines.append(f"  {i:>3}  FAILED: {a['error']}")
    lines.append("")
    lines.append(f"succeeded: {result.succeeded}/{result.requests}")
    lines.append("by pod:  " + ", ".join(f"{k} {v}" for k, v in result.by_pod.items()))
    lines.append("by node: " + ", ".join(f"{k} {v}" for k, v in result.by_node.items()))
    missing = sorted(set(result.pods) - set(result.by_pod))
    if missing:
        lines.append("pods that never answered: " + ", ".join(missing))
    lines.append(
        f"director: {result.requests_via_director} request packets to "
        f"{hostport(result.vip, result.port)} arrived, "
        f"{result.replies_via_director} reply packets came back through it"
    )
    if result.topology == "nat":
        verdict = "NAT: replies return through the director (they must: it undoes the DNAT)"
    elif result.replies_via_director == 0:
        verdict = (
            f"{result.topology.upper()}: every reply bypassed the director "
            "(nodes answered the client directly from the VIP)"
        )
    else:
        verdict = f"NOT {result.topology.upper()}: replies crossed the director"
    lines.append(verdict)
    if result.top is not None:
        lines += [
            "",
            "$ kubelvs top --once   (the director, over the requests)",
            *render_top(result.top).splitlines(),
        ]
    if result.explain is not None and "error" in result.explain:
        lines.append(f"kubelvs lab explain failed: {result.explain['error']}")
    elif result.explain is not None:
        client = next(iter(result.explain["directors"].values()))["client"]
        lines += [
            "",
            f"$ kubelvs lab explain {client} {result.vip}:{result.port}   (the last request answered)",
            *render_site(result.explain).splitlines(),
        ]
    lines.append(f"backend: {result.backend}; result: {'OK' if result.ok else 'FAILED'}")
    return "\n".join(lines) + "\n"


def print_result(result: DemoResult, output: str) -> None:
    if output == "json":
        json.dump(result.as_json(), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(render(result))
