"""``kubelvs director --kubernetes`` as a real long-running process: against the
stand-in API server (kubeconfig), programming nftables in a namespace, converging on
an edit made through the API, writing status as the Lease holder, and releasing the
Lease on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kubelvs.backends.nftables import NftablesBackend

from . import k8sobjects as k
from .apiserver import ServerThread
from .test_runner import CONFIG

pytestmark = pytest.mark.netns


def table(ns: str) -> dict[str, list[tuple[str, int, int]]]:
    backend = NftablesBackend(netns=ns)
    try:
        state = backend.read()
    finally:
        backend.close()
    return {
        str(key): [(str(r.address), r.port, r.weight) for r in vs.realservers]
        for key, vs in state.services.items()
    }


def wait_for(cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.1)


def test_long_running_director_process(
    api_server: tuple[ServerThread, Path], make_netns: Callable[[str], str], tmp_path: Path
) -> None:
    st, kubeconfig = api_server
    ns = make_netns("dir")

    def ipn(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True)

    ipn("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ipn("link", "set", "v0", "up")
    ipn("link", "set", "v1", "up")
    ipn("addr", "add", "10.240.0.1/24", "dev", "v0")
    for i, addr in enumerate(("10.240.0.101", "10.240.0.102")):  # DR needs the nodes' MACs
        ipn(
            "neigh", "replace", addr, "lladdr", f"02:00:00:00:00:{i + 1:02x}", "dev", "v0", "nud", "permanent"
        )
    for obj in [*k.whoami_objects(), k.service("lb", type="LoadBalancer", created="2026-11-21T00:00:00Z")]:
        st.call(st.server.put, obj)
    log = tmp_path / "director.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelvs",
                "director",
                "-f",
                str(CONFIG),
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--backend",
                "nftables",
                "--netns",
                ns,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: set(table(ns)) == {"TCP 10.240.0.201:80", "TCP 10.240.0.225:80"})
        wait_for(
            lambda: (
                st.call(
                    lambda: st.server.get("Service", "default", "lb")["status"]["loadBalancer"].get("ingress")
                )
                == [{"ip": "10.240.0.225", "ipMode": "VIP"}]
            )
        )

        def edit() -> None:
            svc = st.server.get("Service", "default", "whoami")
            svc["spec"]["ports"][0]["port"] = 8080
            st.server.put(svc)
            st.server.delete("Node", "", "node2")

        st.call(edit)
        wait_for(lambda: table(ns).get("TCP 10.240.0.201:8080") == [("10.240.0.101", 8080, 1)])
        assert "TCP 10.240.0.201:80" not in table(ns)
        holder = st.call(
            lambda: st.server.objects["Lease"][("kube-system", "kubelvs-director")]["spec"]["holderIdentity"]
        )
        assert holder  # this process holds the Lease
    finally:
        proc.send_signal(signal.SIGTERM)
        rc: int | None
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            rc = None
    assert rc == 0, log.read_text()[-3000:]
    assert (
        st.call(
            lambda: st.server.objects["Lease"][("kube-system", "kubelvs-director")]["spec"]["holderIdentity"]
        )
        == ""
    )
