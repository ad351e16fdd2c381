#!/usr/bin/env python3
"""Constant one-way delay for packets sent to an NFQUEUE (this kernel has no sch_netem).

    python3 nfq_delay.py QUEUE_NUM DELAY_MS

Binds netfilter queue QUEUE_NUM of the current network namespace over raw netlink (stdlib only),
in copy-mode META so no payload is copied to user space. Each queued packet's id is stamped with
its release time; once due, one batch verdict "ACCEPT every id <= N" releases them. That is exact for
a FIFO constant delay, and also releases ids whose notifications were lost to a socket overflow.
Pair it with `iptables -t raw -A PREROUTING -i DEV -j NFQUEUE --queue-num Q --queue-bypass`
(--queue-bypass: if this process dies, packets flow undelayed instead of being dropped).
"""
from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time
from collections import deque

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
SO_RCVBUFFORCE = 33
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
SUBSYS_QUEUE = 3
MSG_PACKET, MSG_CONFIG, MSG_VERDICT_BATCH = 0, 2, 3
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND = 1
COPY_META = 1
F_GSO = 0x4  # accept GSO super-packets unsegmented: far less work at high rates
ATTR_PACKET_HDR, ATTR_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
PACKET_MSG = (SUBSYS_QUEUE << 8) | MSG_PACKET


class Queue:
    def __init__(self, num: int) -> None:
        self.num, self.seq = num, 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)

    @staticmethod
    def attr(kind: int, payload: bytes) -> bytes:
        n = 4 + len(payload)
        return struct.pack("=HH", n, kind) + payload + bytes(-n % 4)

    def send(self, msg: int, *attrs: bytes, ack: bool = False) -> None:
        self.seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num)) + b"".join(attrs)
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.send(struct.pack("=IHHII", 16 + len(body), (SUBSYS_QUEUE << 8) | msg, flags, self.seq, 0) + body)

    def configure(self, what: str, *attrs: bytes) -> None:
        self.send(MSG_CONFIG, *attrs, ack=True)
        reply = self.sock.recv(65536)
        if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
            err = struct.unpack_from("=i", reply, 16)[0]
            if err:
                sys.exit(f"nfq_delay: {what}: {os.strerror(-err)}")

    def setup(self) -> None:
        a = self.attr
        self.configure("bind", a(CFG_CMD, struct.pack("=BxH", CMD_BIND, 0)))
        self.configure("copy mode", a(CFG_PARAMS, struct.pack(">IB", 0, COPY_META)))
        self.configure("queue length", a(CFG_QUEUE_MAXLEN, struct.pack(">I", 1 << 17)))
        self.configure("flags", a(CFG_MASK, struct.pack(">I", F_GSO)), a(CFG_FLAGS, struct.pack(">I", F_GSO)))

    def accept_upto(self, packet_id: int) -> None:
        self.send(MSG_VERDICT_BATCH, self.attr(ATTR_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id)))


def packet_ids(buf: bytearray, n: int):
    """Packet ids in a buffer of netlink messages (nlmsghdr 16 + nfgenmsg 4, then attributes)."""
    off = 0
    while off + 16 <= n:
        length, kind = struct.unpack_from("=IH", buf, off)
        if length < 16:
            return
        if kind == PACKET_MSG:
            a, end = off + 20, off + length
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", buf, a)
                if alen < 4:
                    break
                if atype & 0x7FFF == ATTR_PACKET_HDR:
                    yield struct.unpack_from(">I", buf, a + 4)[0]
                    break
                a += (alen + 3) & ~3
        off += (length + 3) & ~3


def main() -> None:
    q = Queue(int(sys.argv[1]))
    delay = float(sys.argv[2]) / 1000.0
    q.setup()
    print(f"nfq_delay: queue {q.num}, {delay * 1000:.2f} ms, ready", flush=True)
    q.sock.setblocking(False)
    poll = select.poll()
    poll.register(q.sock, select.POLLIN)
    due: deque[tuple[float, int]] = deque()  # (release time, packet id), FIFO
    buf = bytearray(1 << 20)
    clock = time.monotonic
    while True:
        wait_ms = None if not due else max(0, int((due[0][0] - clock()) * 1000 + 0.999))
        if poll.poll(wait_ms):
            while True:
                try:
                    n = q.sock.recv_into(buf)
                except BlockingIOError:
                    break
                release = clock() + delay
                due.extend((release, pid) for pid in packet_ids(buf, n))
        now, last = clock(), None
        while due and due[0][0] <= now:
            last = due.popleft()[1]
        if last is not None:
            q.accept_upto(last)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
