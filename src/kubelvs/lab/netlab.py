"""A small network-namespace lab: hosts on one L2 segment, commands and servers in them.

Every namespace is called ``<prefix>-<role>`` and the prefix must start with
``kubelvs-`` (the project's rule: nothing outside our own namespaces is touched).
The segment is a Linux bridge inside its own namespace (``<prefix>-sw``); each host
gets one end of a veth pair, the other end is a bridge port.

``Lab.teardown`` kills the processes the lab started (by PID), then whatever still
runs inside its namespaces, then deletes the namespaces: also after a failure
half-way through building. Use it as a context manager.

Links, addresses and sysctls are made through the kernel-interface layer
(``kernel.iproute``, ``kernel.sysctl``); only namespaces themselves (``ip netns``) and
the programs run in them (``ip netns exec``) are commands.

Used by the scenario tests, the benchmarks and ``kubelvs lab up|down``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from ..app.state import remove_director_state
from ..errors import KernelError, LabError
from ..kernel import iproute
from ..kernel import sysctl as _sysctl

__all__ = ["NETNS_PREFIX", "Host", "Lab", "LabError", "Process", "terminate"]

NETNS_PREFIX = "kubelvs-"


def terminate(popen: subprocess.Popen[bytes], timeout: float) -> None:
    """End a process we started: SIGTERM, ``timeout`` seconds for it to exit, then SIGKILL."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout)


@contextlib.contextmanager
def _lab_errors() -> Iterator[None]:
    """The kernel layer's errors as the lab's (the message names the device and namespace)."""
    try:
        yield
    except KernelError as exc:
        raise LabError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Process:
    """A background process started in a namespace."""

    pid: int
    netns: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes] = field(compare=False, repr=False)


@dataclass(slots=True)
class Host:
    """A namespace attached to the segment through ``ifname``."""

    netns: str
    ifname: str
    addresses: list[str]  # with prefix length, e.g. "10.0.0.2/24"
    mac: str = ""

    @property
    def ip(self) -> str:
        """The first address without its prefix length."""
        return self.addresses[0].split("/")[0]


def _check_name(name: str) -> None:
    if not name.startswith(NETNS_PREFIX):
        raise ValueError(f"namespace {name!r} must start with {NETNS_PREFIX!r}")
    if len(name) > 200 or "/" in name:
        raise ValueError(f"namespace name {name!r} is not usable")


class Lab:
    """Namespaces ``<prefix>-<role>`` on one bridge segment. Not thread-safe."""

    def __init__(self, prefix: str) -> None:
        _check_name(prefix)
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.processes: list[Process] = []
        self.hosts: dict[str, Host] = {}
        self._switch: str | None = None
        self._ports = 0

    # --------------------------------------------------------------- building

    def namespace(self, role: str) -> str:
        """Create ``<prefix>-<role>`` with ``lo`` up."""
        name = f"{self.prefix}-{role}"
        _check_name(name)
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise LabError(f"ip netns add {name}: {made.stderr.strip() or 'failed'}")
        self.namespaces.append(name)
        with _lab_errors():
            iproute.set_link_up(name, "lo")
            # No duplicate address detection on the lab's interfaces (addresses are unique
            # by construction): an IPv6 address is usable at once, not a second later.
            if _sysctl.read_in(name, "net.ipv6.conf.default.accept_dad") is not None:
                _sysctl.write_in(name, "net.ipv6.conf.default.accept_dad", 0)
        return name

    def switch(self) -> str:
        """The segment's namespace (created on first use) holding bridge ``br0``."""
        if self._switch is None:
            self._switch = self.namespace("sw")
            with _lab_errors():
                iproute.add_bridge(self._switch, "br0")
                iproute.set_link_up(self._switch, "br0")
        return self._switch

    def host(self, role: str, addresses: Sequence[str], *, ifname: str = "eth0") -> Host:
        """A new namespace with ``ifname`` on the segment carrying ``addresses`` (CIDR form)."""
        sw = self.switch()
        ns = self.namespace(role)
        self._ports += 1
        port = f"p{self._ports}"
        for address in addresses:
            ipaddress.ip_interface(address)  # a clear error for a typo, before anything is made
        with _lab_errors():
            iproute.add_veth(sw, port, ifname, peer_netns=ns)
            iproute.set_master(sw, port, "br0")
            iproute.set_link_up(sw, port)
            for address in addresses:
                iproute.add_address(ns, ifname, address)
            iproute.set_link_up(ns, ifname)
            link = iproute.link(ns, ifname)
        if link is None:
            raise LabError(f"{ifname} vanished from {ns} while it was being set up")
        host = Host(netns=ns, ifname=ifname, addresses=list(addresses), mac=link.mac)
        self.hosts[role] = host
        return host

    # --------------------------------------------------------------- running

    def run(
        self, netns: str, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``netns`` and wait for it."""
        cmd = ["ip", "netns", "exec", netns, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} (in {netns}) exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sysctl(self, netns: str, name: str, value: int | str) -> None:
        """Set sysctl ``name`` (dotted, or a path for dotted interface names) in ``netns``."""
        with _lab_errors():
            _sysctl.write_in(netns, name, int(value))

    def start(self, netns: str, *argv: str, log: str | os.PathLike[str] | None = None) -> Process:
        """Start ``argv`` in the background inside ``netns``; stop it with ``stop``.

        ``log``: write its stdout and stderr to this file and start it in its own
        session, so it outlives this Python process (``kubelvs lab up`` returns while
        the lab keeps running; ``lab down`` finds it again through its namespace)."""
        if log is not None:
            with open(log, "ab") as out:
                popen = subprocess.Popen(
                    ["ip", "netns", "exec", netns, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            proc = Process(pid=popen.pid, netns=netns, argv=tuple(argv), popen=popen)
            self.processes.append(proc)
            return proc
        popen = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        proc = Process(pid=popen.pid, netns=netns, argv=tuple(argv), popen=popen)
        self.processes.append(proc)
        return proc

    def start_python(
        self, netns: str, module: str, *args: str, log: str | os.PathLike[str] | None = None
    ) -> Process:
        """``python -m module args`` with this interpreter, inside ``netns`` (``log``: see ``start``)."""
        return self.start(netns, sys.executable, "-m", module, *args, log=log)

    def stop(self, proc: Process, *, timeout: float = 3) -> None:
        """Stop one process we started (SIGTERM, then SIGKILL), by its PID."""
        terminate(proc.popen, timeout)
        if proc.popen.stderr is not None:
            proc.popen.stderr.close()
        if proc in self.processes:
            self.processes.remove(proc)

    def wait_listening(self, netns: str, port: int, *, udp: bool = False, timeout: float = 60) -> None:
        """Wait until something in ``netns`` listens on ``port``."""
        deadline = time.monotonic() + timeout
        flag = "-lun" if udp else "-ltn"
        while True:
            out = self.run(netns, "ss", "-H", flag, f"sport = :{port}", check=False).stdout
            if out.strip():
                return
            if time.monotonic() > deadline:
                raise LabError(f"nothing listens on {'udp' if udp else 'tcp'} port {port} in {netns}")
            time.sleep(0.05)

    # --------------------------------------------------------------- teardown

    def teardown(self) -> None:
        """Remove everything the lab made. Safe to call twice and after partial setup."""
        for proc in list(self.processes):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(proc, timeout=2)
        for name in reversed(self.namespaces):
            listed = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
            )
            pids = listed.stdout.split()
            for pid in pids:  # children of ours that outlived their parent; only inside our namespace
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            remove_director_state(name)  # a director run with --netns NAME (by the lab or a test)
        self.namespaces.clear()
        self.hosts.clear()
        self._switch = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()
