"""``kubelvs explain``'s predictions against where real connections went: 1,000 HTTP
requests from the lab's client, each on a new connection; the pod that answered names
its node, i.e. the real server; the prediction from the client's address and port (as
the pod saw them) must name the same, every time. nftables on this machine's kernel,
IPVS (mh and sh, from the kernel's destination order) in the VM. And NAT's conntrack
entries name where each flow went, through ``kubelvs lab explain``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from kubelvs.backends import open_backend
from kubelvs.backends.ipvs import IpvsBackend
from kubelvs.backends.ipvs.flowhash import predict as predict_ipvs
from kubelvs.backends.nftables.flowhash import predict
from kubelvs.lab.explain import explain_directors
from kubelvs.lab.topology import LabSpec, RunningLab, build
from kubelvs.lab.traffic import requests
from kubelvs.model import Prediction, ServiceKey

FLOWS = 1000


def _assert_every_flow_predicted(running: RunningLab, guess: Callable[[str, int], Prediction]) -> None:
    """FLOWS requests, each on a new connection: ``guess(client, port)`` names the real
    server (the node) whose pod answered, every time."""
    info = running.info
    results = requests(info.client, info.spec.vip, info.spec.port, FLOWS)
    assert all(r.ok for r in results)
    node_ip = {n.name: n.ip for n in info.nodes}
    pod_node = info.pod_node()
    wrong = []
    for r in results:
        # The pod sees its node's address (the node's kube-proxy rules masquerade)
        # and, as masquerading keeps it when it can, the client's own port.
        port = int(r.client.rsplit(":", 1)[1])
        went = f"{node_ip[pod_node[r.pod]]}:{info.spec.port}"
        predicted = guess(info.client_ip, port)
        if predicted.realserver != went:
            wrong.append((r.client, went, predicted))
    assert not wrong, f"{len(wrong)} of {FLOWS} flows went elsewhere than predicted: {wrong[:5]}"
    assert len({r.pod for r in results}) == len(pod_node)  # the sample reached every pod


@pytest.mark.netns
@pytest.mark.parametrize(("scheduler", "flags"), [("mh", ("mh-port",)), ("rr", ()), ("wrr", ())])
def test_nftables_predictions_match_real_flows(prefix: str, scheduler: str, flags: tuple[str, ...]) -> None:
    running = build(LabSpec(prefix=prefix, scheduler=scheduler, flags=flags, backend="nftables", agents=True))
    try:
        info = running.info
        with open_backend("nftables", netns=info.directors["dir1"]) as kernel:
            svc = kernel.read().services[ServiceKey.parse(f"TCP {info.spec.vip}:{info.spec.port}")]
        _assert_every_flow_predicted(running, lambda client, port: predict(svc, client, port))
    finally:
        running.teardown()


@pytest.mark.kernel_ipvs
@pytest.mark.parametrize(("scheduler", "flags"), [("mh", ("mh-port",)), ("sh", ("sh-port",))])
def test_ipvs_predictions_match_real_flows(prefix: str, scheduler: str, flags: tuple[str, ...]) -> None:
    running = build(LabSpec(prefix=prefix, scheduler=scheduler, flags=flags, backend="ipvs", agents=True))
    try:
        info = running.info
        key = ServiceKey.parse(f"TCP {info.spec.vip}:{info.spec.port}")
        with IpvsBackend(netns=info.directors["dir1"]) as kernel:
            svc = kernel.read().services[key]
            order = kernel.destination_order(key)
        _assert_every_flow_predicted(running, lambda client, port: predict_ipvs(svc, order, client, port))
    finally:
        running.teardown()


@pytest.mark.netns
def test_nat_flows_are_explained_by_their_conntrack_entries(prefix: str) -> None:
    """rr on NAT picks by a counter (no prediction); each flow's conntrack entry names its
    real server, the pod that answered."""
    running = build(LabSpec(prefix=prefix, topology="nat", backend="nftables", agents=True))
    try:
        info = running.info
        results = requests(info.client, info.spec.vip, info.spec.port, 20)
        assert all(r.ok for r in results)
        key = ServiceKey.parse(f"TCP {info.spec.vip}:{info.spec.port}")
        pod_ip = {p.name: p.ip for n in info.nodes for p in n.pods}
        for r in results:
            address, port = r.client.rsplit(":", 1)
            assert address == info.client_ip  # NAT: no SNAT on the way
            doc = explain_directors(info, address, int(port), key)["directors"]["dir1"]
            assert doc["entry"]["kind"] == "connection", doc
            assert doc["realserver"].split(":")[0] == pod_ip[r.pod], (r, doc)
            assert doc["entry"]["state"] == "TIME_WAIT"  # the server closed first
            assert not doc["prediction"]["predictable"]  # numgen: a counter
        last = results[-1].client
        done = subprocess.run(
            [sys.executable, "-m", "kubelvs", "lab", "explain", last, f"{info.spec.vip}:{info.spec.port}",
             "--prefix", prefix, "-o", "json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        doc = json.loads(done.stdout)
        assert doc["agree"] is True
        assert doc["directors"]["dir1"]["realserver"].split(":")[0] == pod_ip[results[-1].pod]
    finally:
        running.teardown()
