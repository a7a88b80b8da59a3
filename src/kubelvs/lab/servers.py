"""Tiny lab servers and a client that reports which server answered.

    python -m kubelvs.lab.servers http --name rs1 --port 8080
    python -m kubelvs.lab.servers udp  --name rs1 --port 5353
    python -m kubelvs.lab.servers probe --target 10.0.0.200:80 --count 20 [--udp] [--source A,B]

``GET /bytes/N`` answers N zero bytes (throughput benchmarks); ``GET /status/N`` answers
with status N, ``GET /slow/S`` after S seconds, ``GET /healthz`` with ``ok`` (what
kube-proxy's health port answers): the health checks' tests use them. Both servers answer
other requests with one JSON object: ``{"server": NAME, "client": "ip:port",
"local": "ip:port"}`` - who answered, the client address it saw (to tell NAT from
SNAT), and the address it was reached on (the VIP in DR mode). The HTTP server keeps
connections alive when asked to, so a test can hold an established connection.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..model import hostport

__all__ = ["Answer", "HttpConnection", "http_get", "main", "udp_ask"]


@dataclass(frozen=True, slots=True)
class Answer:
    server: str
    client: str  # as the server saw it
    local: str  # the address the server was reached on
    source: str = ""  # the source address the client bound to ("" = kernel's choice)


def _hostport(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """``10.0.0.10:80``; an IPv6 address in brackets: ``[fd00::10]:80``. An IPv4 peer of a
    dual-stack socket (``::ffff:10.0.0.10``) is shown as the IPv4 address it is."""
    host = addr[0].removeprefix("::ffff:") if addr[0].startswith("::ffff:") and "." in addr[0] else addr[0]
    return hostport(host, addr[1])


# ---------------------------------------------------------------------- servers


def serve_http(name: str, port: int, bind: str = "0.0.0.0") -> None:
    """``bind`` ``::`` serves IPv6 and IPv4 (a dual-stack socket)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive when the client asks for it

        def do_GET(self) -> None:
            if self.path.startswith("/bytes/"):  # bulk data for throughput benchmarks
                self._bulk(int(self.path.split("/")[2]))
                return
            if self.path.startswith("/status/"):
                self._plain(int(self.path.split("/")[2]), b"status\n")
                return
            if self.path.startswith("/slow/"):
                time.sleep(float(self.path.split("/")[2]))
                self._plain(200, b"slow\n")
                return
            if self.path == "/healthz":
                self._plain(200, b"ok\n")
                return
            body = json.dumps(
                {
                    "server": name,
                    "client": _hostport(self.client_address),
                    "local": _hostport(self.connection.getsockname()),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _plain(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _bulk(self, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"\0" * 65536
            while size > 0:
                self.wfile.write(chunk[: min(size, len(chunk))])
                size -= len(chunk)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

        def server_bind(self) -> None:
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    with Server((bind, port), Handler) as server:
        server.serve_forever()


def serve_udp(name: str, port: int, bind: str = "0.0.0.0") -> None:
    """Echo server that answers *from the address it was reached on* (IP_PKTINFO,
    IPV6_PKTINFO), as DNS servers do: in DR mode that is the VIP on lo, not the
    interface's address. ``bind`` ``::``: IPv6 only (run a second one for IPv4)."""
    ipv6 = ":" in bind
    family, level = (socket.AF_INET6, socket.IPPROTO_IPV6) if ipv6 else (socket.AF_INET, socket.IPPROTO_IP)
    kind = socket.IPV6_PKTINFO if ipv6 else getattr(socket, "IP_PKTINFO", 8)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, kind, 1)
        sock.bind((bind, port))
        while True:
            data, ancdata, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(20))
            local = ""
            cmsgs = []
            for cmsg_level, cmsg_kind, raw in ancdata:
                if cmsg_level != level or cmsg_kind != kind:
                    continue
                # Reply with source = the destination we were reached on.
                if ipv6 and len(raw) >= 20:  # struct in6_pktinfo: address, ifindex
                    dst = raw[:16]
                    local = _hostport((socket.inet_ntop(socket.AF_INET6, dst), port))
                    cmsgs.append((level, kind, dst + struct.pack("=I", 0)))
                elif not ipv6 and len(raw) >= 12:  # struct in_pktinfo: ifindex, spec_dst, addr
                    _ifindex, _spec, dst = struct.unpack("=I4s4s", raw[:12])
                    local = f"{socket.inet_ntoa(dst)}:{port}"
                    cmsgs.append((level, kind, struct.pack("=I4s4s", 0, dst, b"\0" * 4)))
            reply = json.dumps(
                {
                    "server": name,
                    "client": _hostport(peer),
                    "local": local,
                    "echo": data.decode(errors="replace"),
                }
            )
            sock.sendmsg([reply.encode()], cmsgs, 0, peer)


# ---------------------------------------------------------------------- clients


def http_get(host: str, port: int, *, source: str = "", timeout: float = 3.0) -> Answer:
    """One GET on a new connection."""
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        data = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return Answer(data["server"], data["client"], data["local"], source)


class HttpConnection:
    """A kept-alive connection: every ``get`` reuses the same TCP connection."""

    def __init__(self, host: str, port: int, *, timeout: float = 3.0) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def get(self) -> Answer:
        self._conn.request("GET", "/")
        data = json.loads(self._conn.getresponse().read())
        return Answer(data["server"], data["client"], data["local"])

    def close(self) -> None:
        self._conn.close()


def udp_ask(
    host: str, port: int, *, source: str = "", timeout: float = 2.0, payload: bytes = b"ping"
) -> Answer:
    """One datagram from a new socket (a new source port: a new flow)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.sendto(payload, (host, port))
        data, peer = sock.recvfrom(65535)
    reply = json.loads(data)
    return Answer(reply["server"], reply["client"], _hostport(peer), source)


def probe(
    host: str,
    port: int,
    *,
    count: int,
    udp: bool = False,
    sources: Iterable[str] = ("",),
    timeout: float | None = None,  # None: the ask function's default
) -> list[Answer]:
    """``count`` requests from every source address, each on a new connection/flow."""
    ask = udp_ask if udp else http_get
    extra = {} if timeout is None else {"timeout": timeout}
    return [ask(host, port, source=src, **extra) for src in sources for _ in range(count)]


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubelvs.lab.servers", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for kind in ("http", "udp"):
        p = sub.add_parser(kind, help=f"run a {kind} server that answers with its name")
        p.add_argument("--name", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--bind", default="0.0.0.0")
    p = sub.add_parser("probe", help="send requests and print who answered, one JSON object per line")
    p.add_argument("--target", required=True, help="HOST:PORT or [IPv6]:PORT")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--source", default="", help="comma-separated source addresses to bind")
    args = parser.parse_args(argv)
    if args.command == "http":
        serve_http(args.name, args.port, args.bind)
    elif args.command == "udp":
        serve_udp(args.name, args.port, args.bind)
    else:
        host, _, port = args.target.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [IPv6]:PORT
        sources = args.source.split(",") if args.source else [""]
        for answer in probe(host, int(port), count=args.count, udp=args.udp, sources=sources):
            print(
                json.dumps(
                    {
                        "server": answer.server,
                        "client": answer.client,
                        "local": answer.local,
                        "source": answer.source,
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
