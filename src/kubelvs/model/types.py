"""The load-balancing state as plain, frozen values.

Identity is kept apart from attributes (kube-proxy's ``RealServer.Equal`` compares
address and port only): a real server is *the same one* when its ``key`` is equal,
and *unchanged* when the whole value is equal. The planner relies on this to emit
an edit instead of delete + add, which would drop the real server's connections.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import operator
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar

from .health import HealthCheck

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "KNOWN_SCHEDULERS",
    "NO_TRAFFIC",
    "SCHED_FLAGS",
    "ConnectionSync",
    "DesiredState",
    "Forward",
    "IPAddress",
    "IPNetwork",
    "LBState",
    "ObservedState",
    "Ownership",
    "Protocol",
    "RealServer",
    "RealServerKey",
    "RealServerStats",
    "ServiceKey",
    "Timeouts",
    "VirtualService",
    "desired_flags",
    "host_text",
    "hostport",
    "in_key_order",
    "last_by_identity",
    "parse_address",
    "shared_realservers",
    "split_hostport",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Seconds a real server that left the desired state may drain before it is deleted.
DEFAULT_DRAIN_TIMEOUT = 30.0

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every scheduler in Linux's net/netfilter/ipvs (ip_vs_<name>.c).
KNOWN_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)

#: Scheduler flags ipvsadm accepts with ``-b``, per scheduler. ``flag-N`` are the raw bits.
SCHED_FLAGS: Mapping[str, frozenset[str]] = {
    "sh": frozenset({"sh-fallback", "sh-port"}),
    "mh": frozenset({"mh-fallback", "mh-port"}),
}


def desired_flags(scheduler: str, flags: frozenset[str]) -> frozenset[str]:
    """The flags a desired service is programmed with: ``sh`` and ``mh`` always fall back.

    kubelvs takes a real server out by weight 0 (drains, health checks with ``weight0``).
    Without the fallback flag IPVS's ``sh``/``mh`` still hash new connections to a weight-0
    real server and then refuse them ("no destination available": the client gets a port
    unreachable), so one server's drain or failure would refuse its share of new clients
    (kube-proxy's mh does this, kubernetes/kubernetes#139497). With the flag they go to the
    next server of the table; flows of the other servers stay where they are."""
    if scheduler in SCHED_FLAGS and "flag-1" not in flags:  # flag-1 is the fallback bit
        return flags | {f"{scheduler}-fallback"}
    return flags


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class Forward(enum.StrEnum):
    """Packet-forwarding method of a real server (ipvsadm ``-m``, ``-g``, ``-i``)."""

    NAT = "nat"  # "Masq": rewrites the destination address and port; replies must return through the director
    DR = "dr"  # "Route": rewrites the destination MAC only; the real server must hold the VIP
    TUN = "tun"  # "Tunnel": IPIP-encapsulates; the real server must hold the VIP and accept ipip
    LOCAL = "local"  # "Local": the kernel picks this when the real server is the director itself


@functools.lru_cache(maxsize=1 << 16)
def parse_address(text: str) -> IPAddress:
    """Parse an IPv4/IPv6 address; ``[v6]`` brackets are accepted.

    Cached, and a plain dotted quad goes through the C parser (``inet_pton`` accepts
    a strict subset of what ipaddress does; anything else takes ipaddress's own path):
    ipaddress's parser is slow enough to dominate loading a 10,000-service config."""
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        return ipaddress.ip_address(text.strip().strip("[]"))


@dataclass(frozen=True, slots=True)
class RealServerKey:
    address: IPAddress
    port: int
    # Keys are hashed millions of times in a large sync (dict lookups in the planner and
    # the picture), and an ipaddress object hashes through hex(): cache it.
    _hash: int = field(init=False, repr=False, compare=False)
    _text: str = field(
        default="", init=False, repr=False, compare=False
    )  # filled on first use, as ServiceKey's

    # The sort order of real servers within a service (the kernel read-back's order),
    # computed once: keys are shared (see _realserver_key), sorting happens per sync.
    _order: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.address, self.port)))
        # IPv4 and IPv6 addresses are not orderable against each other.
        object.__setattr__(self, "_order", (self.address.version, int(self.address), self.port))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        if not self._text:
            object.__setattr__(self, "_text", hostport(self.address, self.port))
        return self._text

    @staticmethod
    def parse(text: str) -> RealServerKey:
        """The key ``str(key)`` printed: ``10.0.0.1:80``, ``[2001:db8::1]:80``."""
        address, port = split_hostport(text)
        return RealServerKey(address, port)

    def sort_key(self) -> tuple[int, int, int]:
        return self._order


@dataclass(frozen=True, slots=True)
class RealServer:
    """A real server of one virtual service. ``u_thresh``/``l_thresh`` 0 mean "no limit"."""

    address: IPAddress
    port: int
    weight: int = 1
    forward: Forward = Forward.DR
    u_thresh: int = 0
    l_thresh: int = 0
    # Identity within its service. Computed once: planning, sorting and picture updates
    # ask for it several times per real server, and building it each time was the
    # largest single cost of a 100,000-real-server sync.
    key: RealServerKey = field(init=False, repr=False, compare=False)
    # Cached as the keys' hashes: tuples of real servers are looked up by value
    # (shared_realservers, the health overlay, the nftables layouts), and a dataclass
    # hash would hash the address anew every time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = _realserver_key(self.address, self.port)
        object.__setattr__(self, "key", key)
        object.__setattr__(
            self, "_hash", hash((key._hash, self.weight, self.forward, self.u_thresh, self.l_thresh))
        )

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ compares field tuples (the address in Python); services
        # with the same nodes compare their real servers often (health, the nftables
        # layouts): the cached hash and the shared key first.
        if self is other:
            return True
        if type(other) is not RealServer:
            return NotImplemented
        return (
            self._hash == other._hash
            and (self.key is other.key or self.key == other.key)
            and self.weight == other.weight
            and self.forward is other.forward
            and self.u_thresh == other.u_thresh
            and self.l_thresh == other.l_thresh
        )

    def __str__(self) -> str:
        text = f"{self.key} {self.forward} w={self.weight}"
        if self.u_thresh or self.l_thresh:  # rare: skip the concatenations otherwise
            text += (f" x={self.u_thresh}" if self.u_thresh else "") + (
                f" y={self.l_thresh}" if self.l_thresh else ""
            )
        return text


@dataclass(frozen=True, slots=True)
class RealServerStats:
    """Counters the kernel keeps per real server. Not part of the desired state."""

    active_conns: int = 0
    inactive_conns: int = 0
    persist_conns: int = 0
    conns: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    out_bytes: int = 0


#: The counters of a real server that has seen no traffic (frozen: one object serves all).
NO_TRAFFIC = RealServerStats()


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """Identity of a virtual service: ``protocol VIP:port``, or ``fwmark N`` (then address is None)."""

    family: int  # 4 or 6
    protocol: Protocol
    address: IPAddress | None
    port: int
    fwmark: int = 0
    _hash: int = field(init=False, repr=False, compare=False)  # cached, as RealServerKey's
    # Filled on first use: a plan prints the service's key once per real server.
    _text: str = field(default="", init=False, repr=False, compare=False)
    # Filled on first use too: every plan sorts the keys it compares.
    _order: tuple[int, int, str, int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_hash", hash((self.family, self.protocol, self.address, self.port, self.fwmark))
        )

    def __hash__(self) -> int:
        return self._hash

    @staticmethod
    def for_fwmark(fwmark: int, family: int = 4) -> ServiceKey:
        # The kernel stores fwmark services with protocol TCP and no address.
        return ServiceKey(family, Protocol.TCP, None, 0, fwmark)

    @staticmethod
    def parse(text: str) -> ServiceKey:
        """The key ``str(key)`` printed: ``TCP 10.0.0.1:80``, ``UDP [2001:db8::1]:53``,
        ``FWM 7`` (``FWM 7 IPv6``). ValueError when it is none of these."""
        words = text.split()
        if len(words) in (2, 3) and words[0] == "FWM" and words[1].isdigit():
            if len(words) == 3 and words[2] != "IPv6":
                raise ValueError(f"not a virtual service key: {text!r}")
            return ServiceKey.for_fwmark(int(words[1]), 6 if len(words) == 3 else 4)
        if len(words) != 2:
            raise ValueError(f"not a virtual service key: {text!r}")
        address, port = split_hostport(words[1])
        return ServiceKey(address.version, Protocol(words[0].lower()), address, port)

    def __str__(self) -> str:
        if not self._text:
            if self.fwmark:
                text = f"FWM {self.fwmark}" + (" IPv6" if self.family == 6 else "")
            else:
                assert self.address is not None
                text = f"{self.protocol.upper()} {hostport(self.address, self.port)}"
            object.__setattr__(self, "_text", text)
        return self._text

    def sort_key(self) -> tuple[int, int, str, int, int]:
        # Total order across families and fwmark services (None is not orderable).
        order = self._order
        if order is None:
            order = (self.family, self.fwmark, str(self.protocol), int(self.address or 0), self.port)
            object.__setattr__(self, "_order", order)
        return order


@dataclass(frozen=True, slots=True)
class VirtualService:
    """A virtual service with its real servers (sorted by key, one per key)."""

    key: ServiceKey
    scheduler: str = "wlc"
    persistence: int = 0  # seconds; 0 = not persistent (ipvsadm -p)
    netmask: int | None = None  # persistence granularity as a prefix length; None = host (/32, /128)
    flags: frozenset[str] = frozenset()  # scheduler flags (mh-port, ...) and "ops" (one-packet scheduling)
    realservers: tuple[RealServer, ...] = ()
    name: str = field(default="", compare=False)  # the config's name; not kernel state

    def realserver_map(self) -> dict[RealServerKey, RealServer]:
        return {rs.key: rs for rs in self.realservers}

    def attributes_equal(self, other: VirtualService) -> bool:
        """Service-level attributes equal (real servers not compared)."""
        return (
            self.scheduler == other.scheduler
            and self.persistence == other.persistence
            and self.effective_netmask == other.effective_netmask
            and self.flags == other.flags
        )

    @property
    def effective_netmask(self) -> int:
        return self.netmask if self.netmask is not None else (32 if self.key.family == 4 else 128)

    def with_realservers(self, realservers: Iterable[RealServer]) -> VirtualService:
        return self.holding(in_key_order(realservers))

    def holding(self, realservers: tuple[RealServer, ...]) -> VirtualService:
        """This service with ``realservers``, already in key order (a shared tuple that a
        node change or a health verdict gives 10,000 services: no sort per service)."""
        return VirtualService(
            self.key, self.scheduler, self.persistence, self.netmask, self.flags, realservers, self.name
        )


@dataclass(frozen=True, slots=True)
class ConnectionSync:
    """The kernel's connection sync daemons (IPVS), master and backup at once: a director
    sends its connections to its peers and learns theirs, whichever holds the VIPs."""

    interface: str  # the multicast interface
    syncid: int  # 0-255: peers with another id ignore each other


@dataclass(frozen=True, slots=True)
class Timeouts:
    """IPVS connection timeouts in seconds (``ipvsadm --set tcp tcpfin udp``)."""

    tcp: int
    tcpfin: int
    udp: int

    def __str__(self) -> str:
        return f"tcp={self.tcp} tcpfin={self.tcpfin} udp={self.udp}"


@dataclass(frozen=True, slots=True)
class Ownership:
    """What kubelvs may program and delete: virtual services with a VIP inside ``cidrs``
    or a fwmark inside ``fwmarks``. Everything else in the kernel is foreign."""

    cidrs: tuple[IPNetwork, ...] = ()
    fwmarks: tuple[range, ...] = ()
    # The answers so far: asked for every service of every sync (10,000 at a time), and
    # ``address in network`` is slow Python in ipaddress. Not part of the value.
    _answers: dict[ServiceKey, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def owns(self, key: ServiceKey) -> bool:
        known = self._answers.get(key)
        if known is None:
            if key.fwmark:
                known = any(key.fwmark in r for r in self.fwmarks)
            else:
                assert key.address is not None
                known = any(key.address in net for net in self.cidrs)
            if len(self._answers) < 1 << 20:  # bounded: keys come and go over a long run
                self._answers[key] = known
        return known


@dataclass(frozen=True, slots=True)
class LBState:
    """Virtual services, global timeouts and sysctls: what one kernel holds (or should)."""

    services: Mapping[ServiceKey, VirtualService] = field(default_factory=dict)
    timeouts: Timeouts | None = None  # None: not managed / unknown
    sysctls: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DesiredState(LBState):
    ownership: Ownership = Ownership()
    # Per virtual service: its health check (none when absent). Not kernel state: the
    # director probes with it and gives each real server the weight its health says.
    health: Mapping[ServiceKey, HealthCheck] = field(default_factory=dict)
    # How long a real server that left may drain its connections (weight 0) before it is
    # deleted anyway: ``drain_timeout``, or the virtual service's own in ``drain_timeouts``.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    drain_timeouts: Mapping[ServiceKey, float] = field(default_factory=dict)

    def drain_timeout_of(self, key: ServiceKey) -> float:
        return self.drain_timeouts.get(key, self.drain_timeout)


@dataclass(frozen=True, slots=True)
class ObservedState(LBState):
    """What a backend read from the kernel, with counters per (service, real server)."""

    stats: Mapping[tuple[ServiceKey, RealServerKey], RealServerStats] = field(default_factory=dict)


_BY_KEY = operator.attrgetter("key._order")  # real servers in key order, in C


def in_key_order(realservers: Iterable[RealServer]) -> tuple[RealServer, ...]:
    """Real servers as a virtual service holds them: in key order, the shared tuple."""
    return shared_realservers(tuple(sorted(realservers, key=_BY_KEY)))


def last_by_identity(fn: Callable[[_T], _R]) -> Callable[[_T], _R]:
    """``fn`` answering at once when asked again about the object it was just asked
    about: a layer that asks something of 10,000 Services' real servers asks about one
    shared tuple after another (``shared_realservers``), and a cache by value would hash
    the tuple every time."""
    last: tuple[object, _R | None] = (object(), None)

    def remembered(arg: _T) -> _R:
        nonlocal last
        seen, answer = last  # one tuple: another thread sees the old pair or the new one
        if seen is arg:
            return answer  # type: ignore[return-value]
        answer = fn(arg)
        last = (arg, answer)
        return answer

    return remembered


@functools.lru_cache(maxsize=4096)
def shared_realservers(realservers: tuple[RealServer, ...]) -> tuple[RealServer, ...]:
    """The one tuple of its value: most Services of a cluster have the same real servers
    (every node, weight 1), and sharing the tuple makes them one object in memory and
    lets every layer compare and look them up by identity."""
    return realservers


@functools.lru_cache(maxsize=1 << 16)
def _realserver_key(address: IPAddress, port: int) -> RealServerKey:
    # Shared: the same nodes are real servers of every service, so a director with
    # 10,000 services holds a few keys instead of 100,000, and builds them once.
    return RealServerKey(address, port)


def split_hostport(text: str) -> tuple[IPAddress, int]:
    """``10.0.0.1:80`` or ``[2001:db8::1]:80`` -> (address, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not address:port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: {text!r}")
    return ipaddress.ip_address(host), int(port)


def hostport(address: IPAddress | str, port: int) -> str:
    """``10.0.0.1:80``; an IPv6 address in brackets: ``[2001:db8::1]:80`` (split_hostport's
    inverse, and how ipvsadm, curl and the lab's servers write one)."""
    return f"{host_text(address)}:{port}"


def host_text(address: IPAddress | str) -> str:
    """An address as the host part of an address:port or a URL: IPv6 in brackets."""
    if isinstance(address, str):
        return f"[{address}]" if ":" in address else address
    return _address_text(address)


@functools.lru_cache(maxsize=1 << 16)
def _address_text(address: IPAddress) -> str:
    # Cached: a plan of 100,000 real servers prints the same few node addresses over
    # and over, and ipaddress formats one in pure Python.
    return f"[{address}]" if address.version == 6 else str(address)
