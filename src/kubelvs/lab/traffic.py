"""Traffic and counters for the lab: real TCP requests from a namespace, and the
director-side counters that prove whether replies crossed the director.

A request is one new TCP connection with one HTTP GET (as ``curl http://VIP`` in the
users' ``curl http://VIP``); a failed one is recorded with its error instead of raising, because several
scenarios *expect* failures before their fix.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import KernelError, LabError
from ..kernel import iproute
from ..kernel.netns import entered

__all__ = [
    "DirectorCounters",
    "LongLived",
    "NewConnections",
    "Result",
    "Sent",
    "arp_who_has",
    "error_text",
    "neighbour_mac",
    "nft_counter",
    "requests",
    "tally",
    "wait_until",
]

COUNT_TABLE = "kubelvs_lab_count"
MESSAGE_EVERY = 0.1  # seconds between a long-lived connection's requests
ANSWER_WITHIN = 5.0  # seconds: a long-lived connection that waits longer is broken


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    pod: str = ""  # who answered
    client: str = ""  # the client address the pod saw
    error: str = ""  # why it failed ("connection refused", "timed out", "no route to host")


def error_text(exc: BaseException) -> str:
    """A failed request's reason in a few words (``connection refused``, ``timed out``)."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return {
            errno.ECONNREFUSED: "connection refused",
            errno.EHOSTUNREACH: "no route to host",
            errno.ECONNRESET: "connection reset",
            errno.ENETUNREACH: "network unreachable",
        }.get(exc.errno, exc.strerror or str(exc))
    return f"{type(exc).__name__}: {exc}"


def _one(host: str, port: int, timeout: float) -> Result:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        data = json.loads(conn.getresponse().read())
        return Result(True, pod=str(data["server"]), client=str(data["client"]))
    except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        return Result(False, error=error_text(exc))
    finally:
        conn.close()


def requests(netns: str, host: str, port: int, count: int, *, timeout: float = 2.0) -> list[Result]:
    """``count`` requests from inside ``netns``, each on a new connection."""
    with entered(netns):
        return [_one(host, port, timeout) for _ in range(count)]


@dataclass(frozen=True, slots=True)
class Sent:
    sent: float  # wall time the connection was opened
    done: float  # wall time it was answered or given up
    result: Result


class NewConnections:
    """New connections (one request each) from ``netns`` at a steady ``rate`` a second
    until the ``with`` block ends. ``overlap``: each in its own thread, so that one
    waiting for its timeout does not hold back the next (what a gap measures must be the
    network's); otherwise one after the other (less load on a slow, emulated CPU, where
    the rate then drops while requests time out). ``results`` in the order sent."""

    def __init__(
        self, netns: str, host: str, port: int, *, rate: float, timeout: float = 1.0, overlap: bool = True
    ) -> None:
        self.netns, self.host, self.port, self.rate, self.timeout = netns, host, port, rate, timeout
        self.overlap = overlap
        self._done: list[Sent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._workers: list[threading.Thread] = []

    @property
    def results(self) -> list[Sent]:
        return sorted(self._done, key=lambda s: s.sent)

    def _one(self) -> None:
        sent = time.time()
        with entered(self.netns):
            result = _one(self.host, self.port, self.timeout)
        self._done.append(Sent(sent, time.time(), result))  # list.append is atomic

    def _run(self) -> None:
        next_at = time.time()
        while not self._stop.is_set():
            if self.overlap:
                worker = threading.Thread(target=self._one, daemon=True)
                worker.start()
                self._workers = [w for w in self._workers if w.is_alive()] + [worker]
            else:
                self._one()
            next_at += 1 / self.rate
            self._stop.wait(max(0.0, next_at - time.time()))

    def __enter__(self) -> NewConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for worker in self._workers:
            worker.join(self.timeout + 5)


class LongLived:
    """``count`` kept-alive HTTP connections from ``netns``, one thread each, a request
    every ``MESSAGE_EVERY`` s; a connection that fails (a reset, or no answer within
    ``ANSWER_WITHIN`` s) is broken for good."""

    def __init__(self, netns: str, host: str, port: int, count: int) -> None:
        self.broken: dict[int, tuple[float, str]] = {}  # connection -> (wall time, why)
        self.answered: dict[int, float] = {}  # connection -> wall time of its last answer
        self.opened = 0
        self._stop = threading.Event()
        self._conns: list[http.client.HTTPConnection] = []
        with entered(netns):  # the sockets stay in the client's namespace
            for _ in range(count):
                conn = http.client.HTTPConnection(host, port, timeout=ANSWER_WITHIN)
                try:
                    self._ask(conn)
                except (OSError, http.client.HTTPException, ValueError):
                    conn.close()
                    continue
                self._conns.append(conn)
        self.opened = len(self._conns)
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.opened)
        ]

    @staticmethod
    def _ask(conn: http.client.HTTPConnection) -> None:
        conn.request("GET", "/")
        json.loads(conn.getresponse().read())

    def _run(self, i: int) -> None:
        conn = self._conns[i]
        while not self._stop.wait(MESSAGE_EVERY):
            try:
                self._ask(conn)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.broken[i] = (time.time(), error_text(exc))
                return
            self.answered[i] = time.time()

    def broken_between(self, start: float, end: float) -> int:
        return sum(1 for when, _ in self.broken.values() if start <= when < end)

    def __enter__(self) -> LongLived:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(ANSWER_WITHIN + 1)
        for conn in self._conns:
            conn.close()


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 20 ms; whether it became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def tally(results: Iterable[Result], pod_node: Mapping[str, str]) -> tuple[Counter[str], Counter[str]]:
    by_pod: Counter[str] = Counter()
    by_node: Counter[str] = Counter()
    for r in results:
        if r.ok:
            by_pod[r.pod] += 1
            by_node[pod_node.get(r.pod, "?")] += 1
    return by_pod, by_node


def nft_counter(netns: str, family: str, table: str, name: str) -> int:
    """Packets of a named nftables counter in ``netns``."""
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "counter", family, table, name],
        capture_output=True,
        text=True,
        check=True,
    )
    for item in json.loads(proc.stdout)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise ValueError(f"no counter {name} in {family} {table}")


class DirectorCounters:
    """Counters at the director's segment interface (ingress, before anything else of
    the director sees the frame), counting only frames *addressed to the director*
    (``pkttype host``: a frame the bridge floods to every port is not "crossing" it):

    - ``requests``: packets to VIP:port - the director's share of the work;
    - ``replies``: packets from VIP:port or from a real server's address:port - a reply
      that came back through the director (NAT must; DR/TUN must not).

    One table per VIP family (an IPv6 VIP's: ``kubelvs_lab_count6``), so that both
    families of a dual-stack Service are counted apart.
    """

    def __init__(
        self,
        netns: str,
        *,
        vip: str,
        port: int,
        reply_sources: Iterable[tuple[str, int]],
        device: str = "eth0",
    ) -> None:
        self.netns = netns
        ipv6 = ":" in vip
        self.table = COUNT_TABLE + ("6" if ipv6 else "")
        l3, addr_type = ("ip6", "ipv6_addr") if ipv6 else ("ip", "ipv4_addr")
        sources = sorted({(vip, port), *reply_sources})
        elements = ", ".join(f"{a} . {p}" for a, p in sources)
        ruleset = (
            f"table netdev {self.table} {{\n"
            f"  set reply_src {{ type {addr_type} . inet_service; elements = {{ {elements} }}; }}\n"
            "  counter requests { }\n"
            "  counter replies { }\n"
            "  counter syns { }\n"
            f'  chain ingress {{ type filter hook ingress device "{device}" priority -500; policy accept;\n'
            f"    meta pkttype host {l3} daddr {vip} tcp dport {port} tcp flags & (syn | ack) == syn"
            ' counter name "syns"\n'
            f'    meta pkttype host {l3} daddr {vip} tcp dport {port} counter name "requests"\n'
            f'    meta pkttype host {l3} saddr . tcp sport @reply_src counter name "replies"\n'
            "  }\n}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"],
            input=ruleset,
            text=True,
            capture_output=True,
            check=True,
        )

    def read(self) -> tuple[int, int]:
        """(request packets, reply packets) so far."""
        return (
            nft_counter(self.netns, "netdev", self.table, "requests"),
            nft_counter(self.netns, "netdev", self.table, "replies"),
        )

    def syns(self) -> int:
        """SYNs to VIP:port that reached the director (connection attempts it saw)."""
        return nft_counter(self.netns, "netdev", self.table, "syns")


def arp_who_has(netns: str, ifname: str, target: str, *, timeout: float = 0.5) -> list[str]:
    """Broadcast one ARP request for ``target`` from ``ifname`` in ``netns`` and return
    the MAC of every host that answered (in order of arrival) - arping, in Python."""
    try:
        link = iproute.link(netns, ifname)
        ipv4 = [a.address for a in iproute.addresses(netns, ifname) if a.version == 4]
    except KernelError as exc:
        raise LabError(str(exc)) from exc
    if link is None or not ipv4:
        why = "no such device" if link is None else "no IPv4 address to ask from"
        raise LabError(f"{ifname} in {netns}: {why}")
    mac = bytes.fromhex(link.mac.replace(":", ""))
    src = ipv4[0]
    arp_request = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, 6/4-byte addresses, request
    frame = (
        b"\xff" * 6
        + mac
        + b"\x08\x06"
        + arp_request
        + mac
        + socket.inet_aton(src)
        + b"\0" * 6
        + socket.inet_aton(target)
    )
    answers: list[str] = []
    with entered(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    with sock:
        sock.bind((ifname, 0x0806))
        sock.send(frame)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(128)
            except TimeoutError:
                break
            op = struct.unpack("!H", data[20:22])[0]
            if op == 2 and data[28:32] == socket.inet_aton(target):
                sender = ":".join(f"{b:02x}" for b in data[22:28])
                if sender not in answers:
                    answers.append(sender)
    return answers


def neighbour_mac(netns: str, address: str, ifname: str = "eth0") -> str | None:
    """The MAC ``netns``'s neighbour table holds for ``address`` (None: no entry)."""
    try:
        entries = iproute.neighbours(netns, device=ifname, address=address)
    except KernelError as exc:
        raise LabError(str(exc)) from exc
    return next((e.mac for e in entries if e.mac), None)
