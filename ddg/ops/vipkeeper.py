"""The floating IP's keeper (`--vip ADDR/PREFIX --vip-dev DEV`), a process of its own beside the
node, and the few rtnetlink calls it and the tests make (Linux, IPv4).

The keeper holds the address on DEV only while the node's latest word is "goose, lease until
T" and T is still ahead: it removes the address at T - EARLY on its own (CLOCK_MONOTONIC is
the host's, the same clock the node's lease runs on), whether or not the node says anything
more. So a node frozen by SIGSTOP or a paused VM (its lease lapses, a new goose is elected a
wait W later), a node cut off from its peers, or a node whose loop is stuck loses the address
before its lease ends, and a new goose can be elected only after that (design.md, the lease
and the wait W = L / 0.8 after it). The node says "H UNTIL TERM" each time its lease moves,
"D" the moment it stops being the goose (a hand-over, a higher term, a stop).

The node's death (SIGKILL, a crash, the OOM killer) closes its end of a socket pair only it
holds: the keeper removes the address at once and exits (the parent-death signal, SIGHUP, is
the second messenger). At its start the keeper removes a stale copy (a keeper that was itself
SIGKILLed leaves one: the next start of the node clears it), then says "ready" (or "error
ERRNO TEXT" and exits 1). After adding it runs `arping -U` (iputils) so that the neighbours
move their ARP entry to this host at once, instead of when theirs expires.

It runs as `python -I -S vipkeeper.py PARENT FD ADDR PREFIX DEV ARPING`: the standard
library only, as ddg.ops.lifeline's guard. Address changes go through rtnetlink in-process (no
fork of `ip`): a removal takes well under a millisecond.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence

EARLY = 0.010  # s: the keeper removes the address this long before the lease it was told ends
READY, ERROR = "ready", "error"  # keeper -> node
MONO = "monotonic"  # in a log line: when the address was added or removed
HOLD, DROP = "H", "D"  # node -> keeper: "H UNTIL TERM", "D"; keeper -> node: "D" (removed)

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE, NLM_F_DUMP = 1, 4, 0x100, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")  # len, type


def netlink() -> socket.socket:
    """A route netlink socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, 0))
    return sock


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


_seq = 0


def _request(sock: socket.socket, kind: int, flags: int, payload: bytes) -> int:
    """Send one request, read its acknowledgement: 0 or the errno the kernel answered."""
    global _seq
    _seq += 1
    sock.send(_NLMSG.pack(_NLMSG.size + len(payload), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                          _seq, 0) + payload)
    while True:
        data = sock.recv(65536)
        off = 0
        while off + _NLMSG.size <= len(data):
            length, mtype, _, seq, _ = _NLMSG.unpack_from(data, off)
            if mtype == NLMSG_ERROR and seq == _seq:
                return -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
            off += max(length + (-length % 4), _NLMSG.size)


def change(sock: socket.socket, *, add: bool, ip: str, prefix: int, index: int) -> int:
    """Add (or replace) or delete IP/PREFIX on the interface INDEX; 0 or an errno
    (EADDRNOTAVAIL: deleting what is not there)."""
    addr = socket.inet_aton(ip)
    payload = (_IFADDR.pack(socket.AF_INET, prefix, 0, 0, index)
               + _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr))
    if add:
        return _request(sock, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, payload)
    return _request(sock, RTM_DELADDR, 0, payload)


def addresses(sock: socket.socket) -> set[str]:
    """Every IPv4 address of the namespace (a dump: one consistent reading)."""
    global _seq
    _seq += 1
    sock.send(_NLMSG.pack(_NLMSG.size + _IFADDR.size, RTM_GETADDR,
                          NLM_F_REQUEST | NLM_F_DUMP, _seq, 0)
              + _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0))
    found: set[str] = set()
    while True:
        data = sock.recv(65536)
        off = 0
        while off + _NLMSG.size <= len(data):
            length, mtype, _, seq, _ = _NLMSG.unpack_from(data, off)
            if seq == _seq:
                if mtype == NLMSG_DONE:
                    return found
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
                    raise OSError(err, os.strerror(err))
                if mtype == RTM_NEWADDR:
                    at, end = off + _NLMSG.size + _IFADDR.size, off + length
                    while at + _RTA.size <= end:
                        alen, akind = _RTA.unpack_from(data, at)
                        if alen < _RTA.size:
                            break
                        if akind == IFA_LOCAL:
                            found.add(socket.inet_ntoa(data[at + 4:at + 8]))
                        at += alen + (-alen % 4)
            off += max(length + (-length % 4), _NLMSG.size)


# ---- the keeper ---------------------------------------------------------------------------


class _Keeper:
    def __init__(self, parent: int, chan: int, ip: str, prefix: int, dev: str,
                 arping: str) -> None:
        self.parent, self.chan = parent, chan
        self.ip, self.prefix, self.dev, self.arping = ip, prefix, dev, arping
        self.index = socket.if_nametoindex(dev)
        self.sock = netlink()
        self.held = False
        self.until: float | None = None  # the lease end the node told; None: not the goose
        self.term = 0
        self.buf = b""
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)

    def say(self, line: str) -> None:
        try:
            os.write(self.chan, line.encode(errors="replace") + b"\n")
        except OSError:
            pass

    def note(self, text: str, at: float | None = None) -> None:
        """A line in the node's log; AT: the monotonic instant of an address change, which
        the tests and benchmarks/vip.py read to check that holders never overlap."""
        when = "" if at is None else f" [{MONO} {at:.6f}]"
        print(f"ddg vip keeper: {text}{when}", file=sys.stderr, flush=True)

    def release(self, why: str) -> None:
        self.until = None
        if not self.held:
            return
        err = change(self.sock, add=False, ip=self.ip, prefix=self.prefix, index=self.index)
        at = time.monotonic()
        self.held = False
        if err and err != errno.EADDRNOTAVAIL:
            self.note(f"removing {self.ip}/{self.prefix} from {self.dev} failed: "
                      f"{os.strerror(err)}")
        else:
            self.note(f"removed {self.ip}/{self.prefix} from {self.dev} (term {self.term}): {why}",
                      at)

    def hold(self, until: float, term: int) -> None:
        if until - EARLY <= time.monotonic():
            return
        self.until, self.term = until, term
        if self.held:
            return
        before = time.monotonic()  # the address may be there from now on
        err = change(self.sock, add=True, ip=self.ip, prefix=self.prefix, index=self.index)
        if err:
            self.note(f"adding {self.ip}/{self.prefix} to {self.dev} failed: {os.strerror(err)}")
            return
        self.held = True
        self.note(f"added {self.ip}/{self.prefix} to {self.dev} (term {term})", before)
        try:  # neighbours move their ARP entry now: 2 unsolicited ARPs, 1 s apart
            os.posix_spawn(self.arping, [self.arping, "-q", "-U", "-c", "2",
                                         "-I", self.dev, self.ip], os.environ)
        except OSError as exc:
            self.note(f"cannot run {self.arping}: {exc.strerror or exc}")

    def read(self) -> bool:
        """Take what the node said; False once it is gone (its end closed)."""
        while True:
            try:
                data = os.read(self.chan, 4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return False
            if not data:
                return False
            self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            words = raw.decode(errors="replace").split()
            if words[:1] == [HOLD] and len(words) == 3:
                self.hold(float(words[1]), int(words[2]))
            elif words[:1] == [DROP]:
                self.release("the node is no longer the goose")
                self.say(DROP)  # done: a hand-over waits for this before it lets go
        return True

    def run(self) -> int:
        err = change(self.sock, add=False, ip=self.ip, prefix=self.prefix, index=self.index)
        if err and err != errno.EADDRNOTAVAIL:
            self.say(f"{ERROR} {err} removing a stale {self.ip}/{self.prefix} from {self.dev}: "
                     f"{os.strerror(err)}")
            return 1
        if not err:
            self.note(f"removed a stale {self.ip}/{self.prefix} from {self.dev}")
        self.say(READY)
        while True:
            timeout = None if self.until is None else max(0.0, self.until - EARLY
                                                          - time.monotonic())
            try:
                select.select([self.chan, self.wake_r], [], [], timeout)
            except InterruptedError:
                pass
            try:
                signals = set(os.read(self.wake_r, 512))
            except BlockingIOError:
                signals = set()
            if not self.read() or os.getppid() != self.parent:
                self.release("the node is gone")
                return 0
            if signal.SIGHUP in signals:  # the parent-death signal
                self.release("the node is gone")
                return 0
            if signals & {signal.SIGTERM, signal.SIGINT}:
                self.release("the keeper was told to stop")
                return 0
            if self.until is not None and time.monotonic() >= self.until - EARLY:
                self.release("the lease ran out without a renewal from the node")
            while True:  # arping runs
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break


def main(argv: Sequence[str]) -> int:
    """PARENT FD ADDR PREFIX DEV ARPING (started by ddg-node --vip)."""
    if len(argv) != 6 or not argv[0].isdigit() or not argv[1].isdigit():
        print("usage: vipkeeper.py PARENT_PID FD ADDR PREFIX DEV ARPING (started by ddg-node)",
              file=sys.stderr)
        return 2
    parent, chan = int(argv[0]), int(argv[1])
    os.set_blocking(chan, False)
    os.set_inheritable(chan, False)
    try:
        os.nice(-10)  # it must act by the lease's end on a busy host (root only)
    except OSError:
        pass
    try:
        keeper = _Keeper(parent, chan, argv[2], int(argv[3]), argv[4], argv[5])
    except OSError as exc:
        os.write(chan, f"{ERROR} {exc.errno or 0} {exc.strerror or exc}\n".encode())
        return 1
    if os.getppid() != parent:
        return 0
    return keeper.run()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
