"""A generic-netlink socket for IPVS: dumps, single requests, and pipelined batches.

Why pipelining works: a netlink message sent to the kernel is processed inside the
sender's ``send()``, one message after another, and the kernel goes on with the next
message of the buffer after one fails (``netlink_rcv_skb``). So a batch of requests
is one ``send()``; only the last carries NLM_F_ACK, failures come back as error
messages carrying the failed request's sequence number. ``ipvsadm -R`` instead
waits for an acknowledgement after every single rule.
"""

from __future__ import annotations

import errno as errno_mod
import socket
import struct
from collections.abc import Callable, Iterator, Sequence

from ...errors import BackendError, BackendUnavailable
from .wire import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Cmd, encode_request

__all__ = ["GenlSocket", "Request"]

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11

_HDR = struct.Struct("=IHHII")
_ERR = struct.Struct("=i")
_RCVBUF = 32 * 1024 * 1024

#: (cmd, attributes, tag): the tag comes back with an error so the caller can name the operation.
Request = tuple[Cmd, bytes, int]


class GenlSocket:
    """One netlink socket bound to the IPVS family, in the namespace it was created in."""

    def __init__(self, family: str = "IPVS") -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self._sock.bind((0, 0))
            try:  # a big receive buffer: errors of a whole batch must fit (no ENOBUFS)
                self._sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE (root)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            self._seq = 0
            self._buf = bytearray(1 << 20)
            self.family_id = self._resolve(family)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _resolve(self, name: str) -> int:
        payload = name.encode() + b"\0"
        nla = (
            struct.pack("=HH", 4 + len(payload), CTRL_ATTR_FAMILY_NAME)
            + payload
            + b"\0" * (-len(payload) & 3)
        )
        seq = self._next_seq()
        msg = (
            struct.pack(
                "=IHHIIBBH", 20 + len(nla), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0, CTRL_CMD_GETFAMILY, 1, 0
            )
            + nla
        )
        self._sock.send(msg)
        for kind, body, rseq in self._messages():
            if rseq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -_ERR.unpack_from(body)[0]
                if code == errno_mod.ENOENT:
                    raise BackendUnavailable(
                        f"the kernel has no {name} netlink family (is the ip_vs module loaded?)"
                    )
                raise BackendError(f"resolving netlink family {name}: {errno_mod.errorcode.get(code, code)}")
            offset = 4  # genlmsghdr
            while offset + 4 <= len(body):
                length, attr = struct.unpack_from("=HH", body, offset)
                if attr == CTRL_ATTR_FAMILY_ID:
                    return int(struct.unpack_from("=H", body, offset + 4)[0])
                offset += (length + 3) & ~3
        raise BackendError(f"no reply resolving netlink family {name}")

    def _messages(self) -> Iterator[tuple[int, memoryview, int]]:
        """Receive one datagram and yield (type, body, seq) for each message in it."""
        n = self._sock.recv_into(self._buf)
        view = memoryview(self._buf)[:n]
        offset = 0
        while offset + 16 <= n:
            length, kind, _flags, seq, _pid = _HDR.unpack_from(view, offset)
            if length < 16:
                break
            yield kind, view[offset + 16 : offset + length], seq
            offset += (length + 3) & ~3

    def dump(self, cmd: Cmd, attrs: bytes = b"") -> list[bytes]:
        """A dump request; the reply messages, whole (header included), undecoded."""
        seq = self._next_seq()
        self._sock.send(encode_request(self.family_id, cmd, attrs, flags=NLM_F_REQUEST | NLM_F_DUMP, seq=seq))
        out: list[bytes] = []
        while True:
            for kind, body, rseq in self._messages():
                if rseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -_ERR.unpack_from(body)[0]
                    if code == 0:
                        return out
                    raise OSError(code, f"IPVS dump {cmd.name}: {errno_mod.errorcode.get(code, code)}")
                out.append(_HDR.pack(16 + len(body), kind, 0, rseq, 0) + bytes(body))

    def request(self, cmd: Cmd, attrs: bytes = b"") -> list[bytes]:
        """One acknowledged request; returns the reply messages (e.g. GET_CONFIG), undecoded."""
        replies: list[bytes] = []
        errors = self.pipeline([(cmd, attrs, 0)], replies)
        if errors:
            code = errors[0][1]
            raise OSError(code, f"IPVS {cmd.name}: {errno_mod.errorcode.get(code, code)}")
        return replies

    def pipeline(
        self,
        requests: Sequence[Request],
        replies: list[bytes] | None = None,
        *,
        batch: int = 256,
        skip: Callable[[int], bool] | None = None,
        on_error: Callable[[int, int], None] | None = None,
    ) -> list[tuple[int, int]]:
        """Send ``requests`` in batches of one ``send()`` each, every batch even after
        failures. Returns [(tag, errno)] of the failed requests, in order.

        ``skip(tag)`` is asked before a request goes into a batch (True: it is not sent
        and not reported: the caller knows why); ``on_error(tag, errno)`` is called as
        each failure comes back, so the caller can skip what depends on it in the
        following batches. Requests after a failed one in the same batch were processed
        by the kernel too (they were already sent).
        """
        failures: list[tuple[int, int]] = []
        next_request = 0
        while next_request < len(requests):
            chunk: list[Request] = []
            while next_request < len(requests) and len(chunk) < batch:
                request = requests[next_request]
                next_request += 1
                if skip is None or not skip(request[2]):
                    chunk.append(request)
            if not chunk:
                continue
            tags: dict[int, int] = {}
            parts = []
            last = len(chunk) - 1
            seq = 0
            for i, (cmd, attrs, tag) in enumerate(chunk):
                seq = self._next_seq()
                tags[seq] = tag
                flags = NLM_F_REQUEST | (NLM_F_ACK if i == last else 0)
                parts.append(encode_request(self.family_id, cmd, attrs, flags=flags, seq=seq))
            self._sock.send(b"".join(parts))
            final_seq = seq
            done = False
            while not done:
                for kind, body, rseq in self._messages():
                    if kind == NLMSG_ERROR:
                        code = -_ERR.unpack_from(body)[0]
                        if code:
                            tag = tags.get(rseq, -1)
                            failures.append((tag, code))
                            if on_error is not None:
                                on_error(tag, code)
                        if rseq == final_seq:
                            done = True
                    elif replies is not None and rseq in tags and kind == self.family_id:
                        replies.append(_HDR.pack(16 + len(body), kind, 0, rseq, 0) + bytes(body))
        return failures
