"""Data-path probes: a TCP SYN to the VIP, sent to a real server the way the director
forwards a client's packet, answered (SYN-ACK) from the VIP itself.

- DR: an Ethernet frame to the real server's MAC, IP destination the VIP (what IPVS-DR and
  the nftables DR path send). Only a node that holds the VIP (on lo), and whose
  reverse-path filter lets the packet in, answers; its answer comes straight back from
  the VIP, as it would to a client.
- TUN: the same SYN inside IPIP to the real server's address (what IPVS-TUN sends): a
  node without the VIP, without IPIP, or whose rp_filter eats tunnelled packets stays
  silent.

A keepalived ``TCP_CHECK`` connects to the real server's own address, which works while
the data path is broken (VIP missing from lo, wrong ``arp_ignore``, strict rp_filter on
``tunl0``); this probe fails in exactly those cases. It needs raw sockets (root, as the
director is).

The answer is read from a packet socket, before the IP layer: the director usually holds
the VIP itself, so its kernel drops a packet *from* the VIP as a martian before any IP
socket could see it. A classic BPF filter keeps only SYN-ACKs and RSTs (a DR director
sees its clients' SYNs and data, never their answers, so that is little). After a
SYN-ACK the probe sends the RST itself, the same way as the SYN: no half-open connection
is left behind on the real server.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import socket
import struct
from dataclasses import dataclass

from ..errors import KernelError
from ..kernel import iproute
from ..kernel.netns import entered

__all__ = ["SynProbe", "VipProber", "syn_packet", "syn_probe_for", "tcp_reply"]

ETH_P_IP = 0x0800
IPPROTO_IPIP = 4
SO_ATTACH_FILTER = 26
_SYN, _RST, _ACK = 0x02, 0x04, 0x10

#: Classic BPF on the network header (packet socket, SOCK_DGRAM): TCP with RST, or with
#: SYN and ACK. (code, jt, jf, k) as in <linux/filter.h>.
_FILTER = (
    (0x30, 0, 0, 9),  # A = ip protocol
    (0x15, 0, 6, socket.IPPROTO_TCP),  # not TCP: drop
    (0xB1, 0, 0, 0),  # X = ip header length
    (0x50, 0, 0, 13),  # A = tcp flags
    (0x45, 2, 0, _RST),  # RST: accept
    (0x54, 0, 0, _SYN | _ACK),  # A &= SYN|ACK
    (0x15, 0, 1, _SYN | _ACK),  # SYN and ACK: accept, else drop
    (0x06, 0, 0, 0xFFFF),  # accept
    (0x06, 0, 0, 0),  # drop
)


def _attach_filter(sock: socket.socket) -> ctypes.Array[ctypes.c_char]:
    program = b"".join(struct.pack("HBBI", *insn) for insn in _FILTER)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_FILTER), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buffer  # the kernel copied it; kept only so that nothing frees it early


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ident: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0x4000, 64, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:]


def syn_packet(src: str, dst: str, sport: int, dport: int, seq: int, *, flags: int = _SYN) -> bytes:
    """An IPv4 packet carrying a TCP SYN (MSS option), or a bare segment with ``flags``
    (the RST that ends a probe), checksums filled in."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    options = struct.pack("!BBH", 2, 4, 1460) if flags == _SYN else b""  # MSS
    offset = (20 + len(options)) // 4
    window = 64240 if flags == _SYN else 0
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset << 4, flags, window, 0, 0) + options
    pseudo = struct.pack("!4s4sBBH", s, d, 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    return _ipv4_header(s, d, socket.IPPROTO_TCP, len(tcp), random.randrange(1 << 16)) + tcp


@dataclass(frozen=True, slots=True)
class TcpReply:
    src: str
    dst: str
    sport: int
    dport: int
    ack: int
    flags: int


def tcp_reply(packet: bytes) -> TcpReply | None:
    """The TCP header fields of an IPv4 packet (as a raw TCP socket receives it)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 20:
        return None
    sport, dport, _seq, ack, _off, flags = struct.unpack_from("!HHIIBB", packet, ihl)
    return TcpReply(
        socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), sport, dport, ack, flags
    )


@dataclass(frozen=True, slots=True)
class SynProbe:
    """What to send: how to reach the real server, and from which address."""

    vip: str
    port: int
    realserver: str
    source: str  # the director's address the answer comes back to
    tunnel: bool  # TUN: inside IPIP to ``realserver``; DR: a frame to ``mac`` out of ``interface``
    interface: str = ""  # DR: the director's interface on the real server's segment
    mac: bytes = b""  # DR: the real server's MAC


class VipProber:
    """Sends SYNs to VIPs through real servers and waits for their SYN-ACKs, in one
    network namespace. One receiving raw socket serves every probe in flight."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        with entered(netns):
            self._recv = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            self._ipip = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
            self._packet = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        self._filter = _attach_filter(self._recv)
        for s in (self._recv, self._ipip, self._packet):
            s.setblocking(False)
        self._waiting: dict[tuple[str, int, int], asyncio.Future[int]] = {}
        self._reading = False

    def close(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._recv.fileno())
            self._reading = False
        for s in (self._recv, self._ipip, self._packet):
            s.close()

    def _on_readable(self) -> None:
        while True:
            try:
                packet = self._recv.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                return
            reply = tcp_reply(packet)
            if reply is None:
                continue
            waiter = self._waiting.get((reply.src, reply.sport, reply.dport))
            if waiter is not None and not waiter.done():
                waiter.set_result(reply.flags)

    async def _send(self, syn: SynProbe, packet: bytes) -> None:
        loop = asyncio.get_running_loop()
        if syn.tunnel:
            await loop.sock_sendto(self._ipip, packet, (syn.realserver, 0))
        else:
            # AF_PACKET/SOCK_DGRAM: the kernel adds the Ethernet header for the address given.
            await loop.sock_sendto(self._packet, packet, (syn.interface, ETH_P_IP, 0, 0, syn.mac))

    async def probe(self, syn: SynProbe, timeout: float) -> tuple[bool, str]:
        """SYN through the real server: (True, ...) on a SYN-ACK from the VIP."""
        loop = asyncio.get_running_loop()
        if not self._reading:
            loop.add_reader(self._recv.fileno(), self._on_readable)
            self._reading = True
        sport = 32768 + int.from_bytes(os.urandom(2)) % 28000
        seq = int.from_bytes(os.urandom(4))
        key = (syn.vip, syn.port, sport)
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiting[key] = waiter
        try:
            await self._send(syn, syn_packet(syn.source, syn.vip, sport, syn.port, seq))
            flags = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            how = "in IPIP" if syn.tunnel else "to its MAC"
            return (
                False,
                f"no answer from {syn.vip}:{syn.port} within {timeout:g} s (SYN sent {how} via "
                f"{syn.realserver})",
            )
        finally:
            self._waiting.pop(key, None)
        if flags & (_SYN | _ACK) == _SYN | _ACK:
            await self._send(
                syn, syn_packet(syn.source, syn.vip, sport, syn.port, (seq + 1) & 0xFFFFFFFF, flags=_RST)
            )
            return True, f"SYN-ACK from {syn.vip}:{syn.port}"
        if flags & _RST:
            return False, f"connection refused by {syn.vip}:{syn.port} via {syn.realserver}"
        return False, f"unexpected TCP flags {flags:#x} from {syn.vip}:{syn.port}"


def syn_probe_for(netns: str | None, vip: str, port: int, realserver: str, *, tunnel: bool) -> SynProbe:
    """How to reach ``realserver`` for a probe of ``vip:port``: the source address (the
    route's preferred source) and, for DR, the interface and the real server's MAC
    (resolved by ARP when the kernel has no entry, as the director's own traffic would)."""
    if tunnel:
        route = iproute.route_get(netns, realserver)
        if not route.prefsrc:
            raise KernelError(f"no route to real server {realserver}")
        return SynProbe(vip, port, realserver, route.prefsrc, tunnel=True)
    on_link = iproute.resolve_on_link(netns, realserver, timeout=1.0)
    if not on_link.source:
        raise KernelError(f"no source address towards real server {realserver}")
    mac = bytes.fromhex(on_link.mac.replace(":", ""))
    return SynProbe(vip, port, realserver, on_link.source, tunnel=False, interface=on_link.device, mac=mac)
