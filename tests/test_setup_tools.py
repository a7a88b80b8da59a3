"""Set-up: every program the product, the tests and the VM tier run is installed by the
Makefile's set-up for the command that needs it, and is on PATH after ``make setup-test``.

Tier 1. A program missing on a fresh machine fails here, named with the Debian package
that provides it, instead of failing some scenario test later with "No such file"
(as ``conntrack`` once did in tests/scenarios/test_nftables_only.py). The table below is
checked three ways: against the programs the Python code actually runs (found in its
source, so a new one cannot be forgotten), against the Makefile's package lists, and
against this machine (on PATH, and provided by the package the table names).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from kubelvs.doctor.live import COMMANDS

ROOT = Path(__file__).resolve().parent.parent

#: Which set-up installs it: ``demo`` (make setup), ``test`` (make setup-test, also every VM
#: run), ``bench`` (make setup-bench), ``essential`` (on every Debian system: never listed),
#: ``optional`` (used only when present; no Debian 12 package), ``machine`` (required, but not
#: from Debian: Debian 12's Go is too old for Kubernetes; these machines come with Go 1.26).
Need = Literal["demo", "test", "bench", "essential", "optional", "machine"]


@dataclass(frozen=True)
class Program:
    package: str
    need: Need
    used_by: str


PROGRAMS: dict[str, Program] = {
    "ip": Program("iproute2", "demo", "every backend, the lab, the node agent and the tests"),
    "ss": Program("iproute2", "demo", "the lab waits for its servers to listen (lab/netlab.py)"),
    "nft": Program("nftables", "demo", "the nftables backend, the lab's kube-proxy rules, doctor collect"),
    "sysctl": Program("procps", "demo", "the lab's and the scenarios' sysctls, doctor collect"),
    "modprobe": Program("kmod", "demo", "backend auto-detection (ip_vs), TUN (ipip), the VM's modules"),
    "kill": Program("procps", "test", "tests/conftest.py ends processes left in a test's namespace"),
    "conntrack": Program("conntrack", "test", "tests/scenarios/test_nftables_only.py reads NAT timeouts"),
    "ipvsadm": Program("ipvsadm", "test", "the IPVS tests compare with it, doctor collect, make demo-ipvs"),
    "netstat": Program("net-tools", "test", "doctor collect (netstat -s), tests/formats/test_kernel_text.py"),
    "depmod": Program("kmod", "test", "scripts/vm-kernel indexes the unpacked kernel's modules"),
    "qemu-system-x86_64": Program(
        "qemu-system-x86", "test", "the VM tier (virtme-ng boots the kernel in it)"
    ),
    "busybox": Program("busybox-static", "test", "virtme-ng's initramfs (static); bench-dr --server busybox"),
    "file": Program("file", "test", "virtme-ng reads the kernel image's version with it"),
    "udevadm": Program("udev", "test", "virtme-ng's guest init (no udevd: no command channel, vng fails)"),
    "apt-get": Program("apt", "essential", "scripts/vm-kernel downloads the kernel package"),
    "apt-cache": Program("apt", "essential", "scripts/vm-kernel resolves linux-image-amd64"),
    "dpkg-deb": Program("dpkg", "essential", "scripts/vm-kernel unpacks the kernel package"),
    "dpkg-query": Program(
        "dpkg", "essential", "scripts/apt-need; this test asks which package has a program"
    ),
    "flock": Program("util-linux", "essential", "scripts/vm-kernel: one unpack when VM runs start together"),
    "cat": Program("coreutils", "essential", "the lab's scenarios read /proc/net files in a namespace"),
    "uname": Program("coreutils", "essential", "doctor collect"),
    "bash": Program("bash", "essential", "scripts/vm-run, scripts/vm-kernel, scripts/demo-ipvs"),
    "wrk": Program("wrk", "bench", "make bench-dr (bench/dr_datapath.py)"),
    "iperf3": Program("iperf3", "bench", "make bench-dr (bench/dr_datapath.py)"),
    "nginx": Program("nginx", "bench", "make bench-dr's HTTP server (bench/dr_datapath.py)"),
    "keepalived": Program(
        "keepalived", "test", "the director's VRRP (app/vrrp.py), tests/ha, make bench-health beside kubelvs"
    ),
    "bird": Program("bird2", "test", "the director's BGP (app/bgp.py), the lab's router, tests/ha"),
    "birdc": Program("bird2", "test", "the director asks bird for its sessions and reloads it"),
    "mmdebstrap": Program("mmdebstrap", "test", "scripts/image: the image's Debian root filesystem"),
    "umoci": Program("umoci", "test", "scripts/image assembles the OCI image; its test unpacks it"),
    "runc": Program("runc", "test", "tests/packaging runs the image's entry point"),
    "curl": Program("curl", "bench", "make bench-dr checks each path with it"),
    "kubectl": Program("", "optional", "doctor collect, only when a cluster is configured"),
    "openssl": Program(
        "openssl", "test", "scripts/kube-up: the local control plane's CA, certificates, keys"
    ),
    "go": Program("", "machine", "scripts/kube-build: kube-apiserver and etcd from their Go modules"),
}

#: Installed into the virtualenv by ``make setup-test`` (pyproject's ``test`` extra).
VENV_PROGRAMS: dict[str, str] = {"vng": "virtme-ng"}

_SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call", "create_subprocess_exec"}
_PROGRAM_NAME = re.compile(r"[a-z][a-z0-9_.+-]*")


def _argv_literal(node: ast.expr) -> list[str | None] | None:
    """The strings of a literal argv (``["ip", ...]`` or ``["ip"] + more``), None if not one."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _argv_literal(node.left)
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return [
            e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts
        ]
    return None


def _programs_in(tree: ast.AST) -> set[str]:
    """Programs a module runs: ``subprocess.run(["prog", ...])`` (also the program after
    ``ip netns exec NS``), ``os.execvp("prog", ...)``, and the lab's ``run(ns, "prog", ...)``
    / ``start(ns, "prog", ...)``, which run ``prog`` inside a namespace."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = node.args[0]
        argv = _argv_literal(first) if name in _SUBPROCESS_CALLS | {"execvp"} else None
        if argv is not None and argv[0] is not None:
            found.add(argv[0])
            if argv[:3] == ["ip", "netns", "exec"] and len(argv) > 4 and argv[4] is not None:
                found.add(argv[4])
        elif name == "execvp" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(first.value)
        elif name in ("run", "start") and len(node.args) >= 2 and not isinstance(first, ast.Constant):
            second = node.args[1]
            if isinstance(second, ast.Constant) and isinstance(second.value, str):
                found.add(second.value)
    return {p for p in found if _PROGRAM_NAME.fullmatch(p)}


def _programs_run_by_the_code() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for top in ("src", "tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for program in _programs_in(ast.parse(path.read_text(), filename=str(path))):
                where.setdefault(program, []).append(str(path.relative_to(ROOT)))
    for argv in COMMANDS.values():
        where.setdefault(argv[0], []).append("src/kubelvs/doctor/live.py (COMMANDS)")
    return where


def _makefile_lists() -> dict[str, set[str]]:
    """``APT_*`` variables of the Makefile, with ``$(APT_...)`` references expanded."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    raw = dict(re.findall(r"^(APT_[A-Z]+)\s*:?=(.*)$", text, flags=re.MULTILINE))
    expanded: dict[str, set[str]] = {}

    def expand(name: str) -> set[str]:
        if name not in expanded:
            words: set[str] = set()
            for word in raw[name].split():
                ref = re.fullmatch(r"\$\((APT_[A-Z]+)\)", word)
                words |= expand(ref.group(1)) if ref else {word}
            expanded[name] = words
        return expanded[name]

    return {name: expand(name) for name in raw}


def test_the_table_names_every_program_the_code_runs() -> None:
    where = _programs_run_by_the_code()
    assert {"ip", "nft", "conntrack", "ipvsadm", "sysctl", "wrk"} <= set(where)  # the scan finds calls
    missing = {p: files for p, files in where.items() if p not in PROGRAMS}
    assert not missing, (
        "programs run by the code but not in PROGRAMS (add each with its Debian package, and the package "
        f"to the Makefile's list for the command that needs it): {missing}"
    )


@pytest.mark.parametrize(
    ("variable", "needs"),
    [("APT_DEMO", {"demo"}), ("APT_TEST", {"demo", "test"}), ("APT_BENCH", {"demo", "test", "bench"})],
)
def test_the_makefile_installs_each_package_where_it_is_needed(variable: str, needs: set[str]) -> None:
    lists = _makefile_lists()
    assert variable in lists, f"the Makefile defines no {variable}"
    absent = sorted(
        f"{p.package} (for {name}: {p.used_by})"
        for name, p in PROGRAMS.items()
        if p.need in needs and p.package not in lists[variable]
    )
    assert not absent, f"{variable} in the Makefile lacks {', '.join(absent)}"


def test_make_demo_installs_no_vm_or_benchmark_package() -> None:
    lists = _makefile_lists()
    assert "APT_DEMO" in lists, "the Makefile defines no APT_DEMO"
    demo = lists["APT_DEMO"]
    heavy = {p.package for p in PROGRAMS.values() if p.need in ("test", "bench")} | {"linux-image-amd64"}
    heavy -= {p.package for p in PROGRAMS.values() if p.need == "demo"}
    assert not demo & heavy, f"make demo would install {sorted(demo & heavy)}, which the demo never runs"


def _dpkg_owner(path: str) -> str | None:
    """The package dpkg registered ``path`` under (merged /usr: it may list /bin/x for /usr/bin/x)."""
    candidates = []
    for p in (path, os.path.realpath(path)):
        candidates += [p, p.removeprefix("/usr")] if p.startswith("/usr/") else [p, "/usr" + p]
    for candidate in candidates:
        done = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0].strip()
    return None


@pytest.mark.parametrize(
    "program", sorted(p for p, d in PROGRAMS.items() if d.need in ("demo", "test", "essential", "machine"))
)
def test_program_is_on_path_after_the_test_set_up(program: str) -> None:
    need = PROGRAMS[program]
    path = shutil.which(program)
    assert path is not None, (
        f"{program} is not on PATH: install the Debian package {need.package} "
        f"(`make setup-test` does). Needed for: {need.used_by}"
    )
    if shutil.which("dpkg-query") is None:
        return
    owner = _dpkg_owner(path)
    # Installed outside dpkg (e.g. /usr/local) is fine; from another package it is not:
    # virtme-ng needs busybox-static's busybox, not the dynamically linked one.
    assert owner in (None, need.package) or need.package in owner.split(", "), (
        f"{path} comes from the Debian package {owner}, expected {need.package} ({need.used_by})"
    )


@pytest.mark.parametrize("program", sorted(VENV_PROGRAMS))
def test_virtualenv_program_is_installed(program: str) -> None:
    path = Path(sys.prefix) / "bin" / program
    assert path.exists(), (
        f"{path} is missing: install the Python package {VENV_PROGRAMS[program]} (`make setup-test` does)"
    )
