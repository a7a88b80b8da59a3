"""Switching the lab's director from the config file to the Kubernetes API (a stand-in
API server the caller provides), for the API server's outage."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ...errors import LabError
from ...sources.config import parse_config, parse_yaml, to_desired
from ..netlab import terminate
from ..spec import LAB_TIMEOUTS
from ..topology import LabSpec
from .stream import read_requests
from .suite import KUBE_CIDR, StandInApi, Suite


def kube_config_text(spec: LabSpec) -> str:
    tcp, fin, udp = LAB_TIMEOUTS
    return (
        "# Written by the fault-injection runner: the lab's external IPs from the Kubernetes API.\n"
        f"owned_cidrs: [{KUBE_CIDR}]\n"
        f"timeouts: {{tcp: {tcp}, tcpfin: {fin}, udp: {udp}}}\n"
        "kubernetes:\n"
        f"  external_ip_cidrs: [{KUBE_CIDR}]\n"
        f"  default_scheduler: {spec.scheduler}\n"
        "  health: {enabled: false}   # the lab's workers run no kube-proxy health port\n"
    )


def switch_to_kubernetes(suite: Suite, api: StandInApi) -> None:
    """Replace the lab's config-file director by ``kubelvs director --kubernetes`` against
    ``api`` (started in the root namespace, where the stand-in listens on loopback, and
    programming the director's namespace with ``--netns``), from an empty table."""
    info = suite.info
    suite.running.stop("director dir1")
    if suite.backend == "nftables":
        for family in ("ip", "ip6", "netdev"):
            suite.running.run("dir1", "nft", "delete", "table", family, "kubelvs", check=False)
    else:
        suite.running.run("dir1", "ipvsadm", "-C")
    api.publish({n.name: n.ip for n in info.nodes}, {"whoami": info.spec.vip}, info.spec.port)
    config = Path(info.state_dir) / "director-kubernetes.yaml"
    config.write_text(kube_config_text(info.spec))
    with suite.kube_log.open("ab") as out:
        suite.kube_director = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubelvs",
                "director",
                "-f",
                str(config),
                "--kubernetes",
                "--kubeconfig",
                str(api.kubeconfig),
                "--backend",
                suite.backend,
                "--netns",
                suite.director_ns,
                "--state-file",
                str(Path(info.state_dir) / "director-kubernetes.state.json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    owned = to_desired(
        parse_config(parse_yaml(config.read_text(), source=str(config)), source=str(config))
    ).ownership
    suite.observer.owns = owned.owns
    vip = info.spec.vip

    def serving() -> bool:
        if suite.kube_director is not None and suite.kube_director.poll() is not None:
            raise LabError(f"the Kubernetes director exited: {suite.kube_log.read_text()[-3000:]}")
        image = suite.observer.image()
        return any(
            str(k.address) == vip and len(v.realservers) == len(info.nodes) for k, v in image.services.items()
        )

    suite.until(serving, suite.settings.start_timeout, "the Kubernetes director did not program the Service")
    # Stable: the same image twice, 2 s apart, and traffic answered since.
    while True:
        first = suite.observer.image()
        time.sleep(2.0)
        if not first.differences(suite.observer.image()):
            break
    suite.expected = first
    since = time.monotonic()
    suite.until(
        lambda: any(r.ok and r.start > since for r in read_requests(suite.stream_file)),
        suite.settings.start_timeout,
        "no traffic through the Kubernetes director",
    )


def stop_kube_director(suite: Suite) -> None:
    proc = suite.kube_director
    if proc is None:
        return
    terminate(proc, 30)
    suite.kube_director = None
