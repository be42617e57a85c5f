"""Packet delay without `tc netem`: an nfqueue client that holds each packet for delay ± jitter.

Kernels built without CONFIG_NET_SCH_NETEM (the CI VMs) cannot delay packets with `tc`, but
they have nfnetlink_queue: an iptables `NFQUEUE` rule hands each packet to a userspace program,
which must give a verdict for it. This program, run in a bed host's namespace (the queue is per
namespace), reads each packet's id (metadata only: no payload is copied), holds it for
delay + uniform(-jitter, +jitter) and then accepts it. Verdicts go out in due order, not
arrival order, so jitter reorders packets as netem does.

Pure Python over an AF_NETLINK/NETLINK_NETFILTER socket: the PyPI bindings
(NetfilterQueue, python-nfqueue) are C extensions over libnetfilter_queue, and the protocol
needed here is four small messages (see include/uapi/linux/netfilter/nfnetlink_queue.h).

When the queue is full, or the socket's buffer overflows (ENOBUFS), the kernel accepts the
packet undelayed (NFQA_CFG_F_FAIL_OPEN) rather than dropping it, and the iptables rule carries
`--queue-bypass`, so packets pass while no delayer is bound: the tool never blackholes a link.
On SIGTERM it accepts everything it holds at once and exits (the kernel would drop them).

It stands in for a qdisc, which runs in the kernel whatever the load: so it asks for a
real-time priority (SCHED_FIFO, root only; it sleeps in select() between packets and uses a
few % of a core at a cluster's rates), or a loaded machine's scheduler would add its own
delay, tens of ms, on top of the one asked for.

    python -m ddg_testkit.delayer --queue 0 --delay-ms 5 --jitter-ms 2

prints `bound queue 0` once packets may be sent to it, and on exit one line of figures.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

from ddg.errors import ConfigError

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_ACCEPT = 1
NLA_F_MASK = 0x3FFF  # attribute type without the NESTED/BYTEORDER bits
SO_RCVBUFFORCE = 33
QUEUE_MAXLEN = 8192
RCVBUF = 4 << 20
RT_PRIORITY = 10  # SCHED_FIFO, above every normal process (the nodes' too), below the kernel's

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid (host order)
_NFGENMSG = struct.Struct("!BBH")  # family, version, queue number (big-endian)


def check_delay(delay_ms: float, jitter_ms: float) -> None:
    """The one rule for a link's delay (here and in hosts.Impairment)."""
    if not 0 <= jitter_ms <= delay_ms <= 10_000:
        raise ConfigError(f"need 0 <= jitter <= delay <= 10 s, got delay {delay_ms:g} ms, "
                          f"jitter {jitter_ms:g} ms")


@dataclass(frozen=True, kw_only=True, slots=True)
class DelaySpec:
    """What the delayer does to every packet of its queue."""

    queue: int = 0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.queue <= 65535:
            raise ConfigError(f"queue must be 0-65535, got {self.queue}")
        check_delay(self.delay_ms, self.jitter_ms)

    def hold(self, rng: random.Random) -> float:
        """Seconds to hold one packet."""
        return (self.delay_ms + rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1000


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _message(msg: int, queue: int, attrs: bytes, *, flags: int = NLM_F_REQUEST,
             seq: int = 0) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags,
                          seq, 0) + body


def verdict(queue: int, packet_id: int, what: int = NF_ACCEPT) -> bytes:
    return _message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR,
                                                    struct.pack("!II", what, packet_id)))


def packet_ids(data: bytes) -> tuple[list[int], list[str]]:
    """The ids of the NFQNL_MSG_PACKET messages in one datagram, and any errors reported."""
    ids: list[int] = []
    errors: list[str] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        size, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if size < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
            if code:
                errors.append(os.strerror(-code))
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + _NLMSGHDR.size + _NFGENMSG.size
            while a + 4 <= off + size:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & NLA_F_MASK == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (size + 3) & ~3
    return ids, errors


def _acked(data: bytes) -> bool:
    """Whether DATA holds the kernel's ack (an NLMSG_ERROR with code 0)."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        size, kind = _NLMSGHDR.unpack_from(data, off)[:2]
        if kind == NLMSG_ERROR:
            return True
        if size < _NLMSGHDR.size:
            return False
        off += (size + 3) & ~3
    return False


class NfQueue:
    """One bound nfqueue in this process's network namespace."""

    def __init__(self, queue: int) -> None:
        self.queue = queue
        self.early: list[int] = []
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND,
                                                         socket.AF_INET)))
            self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                         + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
                         + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
                         + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)))
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def _config(self, attrs: bytes) -> None:
        """Send one config message and wait for the kernel's ack (raises its error)."""
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs,
                                flags=NLM_F_REQUEST | NLM_F_ACK))
        while True:
            data = self.sock.recv(65536)
            ids, errors = packet_ids(data)
            self.early += ids  # packets queued before the ack: still owed a verdict
            if errors:
                raise OSError(f"nfqueue {self.queue} config refused: {errors[0]}")
            if _acked(data):
                return

    def receive(self) -> tuple[list[int], int]:
        """Every packet id waiting on the socket now; and how many ENOBUFS were reported."""
        ids: list[int] = []
        overflows = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return ids, overflows
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overflows += 1  # those packets were accepted by the kernel (fail-open)
                continue
            got, _ = packet_ids(data)
            ids += got

    def accept(self, ids: list[int]) -> None:
        if ids:
            self.sock.send(b"".join(verdict(self.queue, i) for i in ids))

    def close(self) -> None:
        self.sock.close()


def run(spec: DelaySpec, *, seed: int | None = None) -> str:
    """Delay every packet of SPEC.queue until SIGTERM/SIGINT; returns a line of figures."""
    rng = random.Random(seed)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
        priority = "real-time"
    except OSError as exc:
        priority = f"normal priority ({exc.strerror})"
    q = NfQueue(spec.queue)
    stop = False

    def ask_stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)
    # A signal wakes select() at once (it would otherwise be retried until its timeout).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    print(f"bound queue {spec.queue}", flush=True)
    held: list[tuple[float, int]] = []  # (due, packet id), a heap
    now = time.monotonic()
    for i in q.early:
        heapq.heappush(held, (now + spec.hold(rng), i))
    packets = overflows = 0
    late = 0.0  # the worst lateness of a verdict past its due time, seconds
    try:
        while not stop:
            now = time.monotonic()
            wait = max(0.0, held[0][0] - now) if held else 1.0
            ready, _, _ = select.select([q.sock.fileno(), wake_r], [], [], wait)
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            ids, n = q.receive()
            overflows += n
            now = time.monotonic()
            for i in ids:
                heapq.heappush(held, (now + spec.hold(rng), i))
            packets += len(ids)
            due = []
            while held and held[0][0] <= now:
                when, i = heapq.heappop(held)
                late = max(late, now - when)
                due.append(i)
            q.accept(due)
        ids, n = q.receive()
        q.accept([i for _, i in held] + ids)  # the kernel would drop what we hold
        overflows += n
    finally:
        q.close()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
    return (f"queue {spec.queue}: {packets} packets delayed {spec.delay_ms:g} ± "
            f"{spec.jitter_ms:g} ms, worst verdict {late * 1000:.1f} ms late, "
            f"{overflows} overflows, {time.process_time():.1f} s CPU at {priority}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddg_testkit.delayer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    try:
        spec = DelaySpec(queue=a.queue, delay_ms=a.delay_ms, jitter_ms=a.jitter_ms)
        print(run(spec, seed=a.seed), flush=True)
    except (ConfigError, OSError) as exc:
        print(f"delayer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
