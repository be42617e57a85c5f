"""The floating IP (`ddg-node --vip`) on the multi-host bed: nodes on hosts h1..hN, each with
`--vip VIP/24 --vip-dev eth0`, a client host that asks `http://VIP:PORT/` every 10 ms, a
watcher that reads every node host's addresses every 10 ms (rtnetlink dumps, one socket per
namespace), and goose faults: SIGKILL (then a restart), a link cut (then the link back), a
freeze (SIGSTOP, then SIGCONT). Used by tests/ops/test_vip.py and benchmarks/vip.py.

The client also asks each node's own address every 10 ms: the first `goose` there after a fault
is the failover as any client of the cluster sees it, the reference the VIP's gap is measured
against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ddg.ops import vipkeeper

from .hosts import CLIENT, Bed, BedConfig
from .procs import proc_stat

Fault = Literal["kill", "cut", "freeze", "stop"]
PROBE_EVERY = 0.010  # s
PROBE_TIMEOUT = 0.3  # s: a request without an answer by then is a miss (a gap)
WATCH_EVERY = 0.010  # s
MOVED = "moved"  # what a 503 through the VIP counts as: "not the goose, the address moved"


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # monotonic
    done: float
    target: str  # "vip" or a node's name
    body: str | None  # None: no answer (refused, timed out)


@dataclass(slots=True)
class Failover:
    fault: Fault
    old: str
    at: float  # monotonic: the fault
    vip_ms: float  # fault to the first `goose` through the VIP (a request sent after it)
    direct_ms: float  # fault to the first `goose` from another node's own address
    new: str = ""


@dataclass(slots=True)
class VipReport:
    failovers: list[Failover] = field(default_factory=list)
    samples: int = 0  # readings of every host's addresses
    two_holders: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    # body (or "none": no answer; MOVED: 503 from a node the address just left) -> count
    vip_answers: dict[str, int] = field(default_factory=dict)
    # answers through the VIP that say anything but goose: (sent, done, body, the last fault)
    not_goose: list[tuple[float, float, str, str]] = field(default_factory=list)
    max_sample_gap_ms: float = 0.0  # the longest time between two readings
    # From the nodes' logs (the keepers' monotonic instants of each add and removal, taken
    # conservatively: before an add, after a removal): every interval a host held the
    # address, the pairs of hosts' intervals that overlap, and the shortest time between one
    # host's removal and another's add.
    held: list[tuple[float, float, str]] = field(default_factory=list)
    overlaps: list[tuple[tuple[float, float, str], tuple[float, float, str]]] = field(
        default_factory=list)
    handovers_ms: list[float] = field(default_factory=list)
    removals: dict[str, int] = field(default_factory=dict)  # why (the keeper's words) -> count

    def figures(self) -> str:
        lines = []
        for kind in ("kill", "cut", "freeze", "stop", None):
            fs = [f for f in self.failovers if kind is None or f.fault == kind]
            if not fs:
                continue
            lines.append(f"{kind or 'all':6} n={len(fs):3}  through the VIP: "
                         f"{_spread([f.vip_ms for f in fs])}   direct: "
                         f"{_spread([f.direct_ms for f in fs])}")
        if self.handovers_ms:
            lines.append(f"from the keepers' logs: {len(self.held)} holds, "
                         f"{len(self.overlaps)} overlapping; one host's removal to another's "
                         f"add: {_spread(self.handovers_ms)} (min {min(self.handovers_ms):.1f}); "
                         f"removals: {self.removals}")
        lines.append(f"address readings {self.samples} (longest between two "
                     f"{self.max_sample_gap_ms:.1f} ms), with two holders: "
                     f"{len(self.two_holders)}; answers through the VIP: {self.vip_answers}")
        return "\n".join(lines)


def _spread(ms: Sequence[float]) -> str:
    s = sorted(ms)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return f"median {statistics.median(s):6.1f} p95 {p95:6.1f} max {s[-1]:6.1f} ms"


class VipBed:
    """A Bed whose nodes all run with --vip; start(), fault(...) as often as wanted, close()."""

    def __init__(self, nodes: int = 3, *, subnet: str = "10.77.0", port: int = 7000) -> None:
        self.bed = Bed(BedConfig(nodes=nodes, subnet=subnet, port=port))
        self.vip = f"{subnet}.100"
        self.port = port
        self.report = VipReport()
        self.answers: list[Answer] = []
        self.holders: list[tuple[float, frozenset[str]]] = []  # each reading
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def names(self) -> list[str]:
        return self.bed.names

    def holder_now(self) -> frozenset[str]:
        with self._lock:
            return self.holders[-1][1] if self.holders else frozenset()

    def add_stale(self, name: str) -> None:
        """Put the VIP on NAME's host by hand, as a keeper SIGKILLed with its node leaves it."""
        self.bed.net.ip(self.bed.host_of(name), "addr", "add", f"{self.vip}/24", "dev", "eth0")

    def held_by(self, name: str) -> bool:
        out = self.bed.net.ip(self.bed.host_of(name), "-4", "-o", "addr", "show", "dev", "eth0")
        return f" {self.vip}/" in out.stdout

    def keeper_of(self, name: str) -> int:
        """The pid of NAME's VIP keeper (its node's child running ddg/ops/vipkeeper.py)."""
        node = self.bed.cluster.pid(name)
        found = []
        for entry in os.listdir("/proc"):
            stat = proc_stat(int(entry)) if entry.isdigit() else None
            if stat is not None and stat[1] == str(node):
                with contextlib.suppress(OSError):
                    if b"vipkeeper.py" in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found.append(int(entry))
        if len(found) != 1:
            raise AssertionError(f"{name} (pid {node}) has keepers {found}")
        return found[0]

    def start(self, *, stale: Sequence[str] = ()) -> None:
        """The bed, STALE hosts holding the address before any node starts, the nodes, then the
        watcher and the client once exactly one host holds it."""
        self.bed.start(nodes=[])
        for name in stale:
            self.add_stale(name)
        for name in self.names:
            self.bed.add(name, bind="0.0.0.0",
                         extra_args=["--vip", f"{self.vip}/24", "--vip-dev", "eth0"])
        c = self.bed.cluster
        # every node a member (a fault before the last join leaves a cluster of 2 of 2)
        self.wait(lambda: len({(st.goose, len(st.members)) for n in self.names
                               if (st := c.status(n)) is not None}) == 1
                  and (st := c.status(self.names[0])) is not None and st.goose is not None
                  and len(st.members) == len(self.names),
                  "every node a member, all following one goose", 30)
        goose = c.wait_goose(timeout=30)
        self.wait(lambda: [n for n in self.names if self.held_by(n)] == [goose],
                  f"only {goose} to hold {self.vip}", 15)
        socks = {}
        for name in self.names:
            with self.bed.net.entered(self.bed.host_of(name)):
                socks[name] = vipkeeper.netlink()
        self._spawn(self._watch, socks)
        with self.bed.net.entered(CLIENT):  # the client's thread is born on the client host
            self._spawn(lambda: asyncio.run(self._probe()))
        self.wait(lambda: self._goose_through_vip_since(time.monotonic() - 1) is not None,
                  "an answer through the VIP", 15)

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def wait(self, cond: Callable[[], object], what: str, timeout: float) -> None:
        self.bed.cluster.wait_for(lambda: cond() or None, timeout=timeout, what=what)

    # ---- the watcher and the client ---------------------------------------------------------

    def _watch(self, socks: dict[str, object]) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            held = frozenset(n for n, s in socks.items()
                             if self.vip in vipkeeper.addresses(s))  # type: ignore[arg-type]
            now = time.monotonic()
            with self._lock:
                self.holders.append((now, held))
                self.report.samples += 1
                self.report.max_sample_gap_ms = max(self.report.max_sample_gap_ms,
                                                    (now - last) * 1000)
                if len(held) > 1:
                    self.report.two_holders.append((now, held))
            last = now
            time.sleep(max(0.0, WATCH_EVERY - (time.monotonic() - now)))
        for s in socks.values():
            s.close()  # type: ignore[attr-defined]

    async def _ask(self, target: str, host: str) -> None:
        sent = time.monotonic()
        body: str | None = None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, self.port)
                try:
                    writer.write(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
                    raw = await reader.read()
                finally:
                    writer.close()
            head, _, rest = raw.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 503") or head.startswith(b"HTTP/1.0 503"):
                body = MOVED  # a non-goose that held the address when the request came
            elif head.startswith(b"HTTP/1"):
                body = rest.decode(errors="replace").strip()
        except (OSError, TimeoutError):
            body = None
        answer = Answer(sent, time.monotonic(), target, body)
        with self._lock:
            self.answers.append(answer)
            if target == "vip":
                key = body or "none"
                self.report.vip_answers[key] = self.report.vip_answers.get(key, 0) + 1
                if body is not None and body not in ("goose", MOVED):
                    last = self.report.failovers[-1] if self.report.failovers else None
                    self.report.not_goose.append(
                        (sent, answer.done, body, "none yet" if last is None else
                         f"{last.fault} of {last.old} at {last.at:.3f}"))

    async def _probe(self) -> None:
        targets = {"vip": self.vip, **{n: self.bed.address(n) for n in self.names}}
        tasks: set[asyncio.Task[None]] = set()
        nxt = time.monotonic()
        while not self._stop.is_set():
            for target, host in targets.items():
                task = asyncio.create_task(self._ask(target, host))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            nxt += PROBE_EVERY
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)

    def _goose_through_vip_since(self, t: float) -> Answer | None:
        with self._lock:
            return next((a for a in self.answers if a.target == "vip" and a.sent >= t
                         and a.body == "goose"), None)

    def _direct_goose_since(self, t: float, other_than: str) -> Answer | None:
        with self._lock:
            return next((a for a in self.answers if a.target not in ("vip", other_than)
                         and a.sent >= t and a.body == "goose"), None)

    # ---- faults -------------------------------------------------------------------------------

    def fault(self, kind: Fault) -> Failover:
        """KIND on the goose; returns once traffic through the VIP is back on a new goose and
        the old one is back as a duck."""
        c = self.bed.cluster
        old = c.wait_goose(timeout=20)
        self.wait(lambda: self.holder_now() == {old}, f"{old} alone to hold the VIP", 10)
        with self._lock:  # the answers so far are judged already: keep memory flat
            self.answers = [a for a in self.answers if a.sent > time.monotonic() - 2]
        host = self.bed.host_of(old)
        if kind == "kill":
            c.kill(old)
        elif kind == "stop":
            c.terminate(old)
        elif kind == "cut":
            self.bed.net.link(host, False)
        else:
            c.pause(old)
        at = time.monotonic()  # the fault is done (a cut: `ip` has returned)
        self.wait(lambda: self._goose_through_vip_since(at) is not None
                  and self._direct_goose_since(at, old) is not None,
                  f"a goose through the VIP after {kind} of {old}", 20)
        vip = self._goose_through_vip_since(at)
        direct = self._direct_goose_since(at, old)
        assert vip is not None and direct is not None
        failover = Failover(kind, old, at, (vip.done - at) * 1000, (direct.done - at) * 1000,
                            direct.target)
        self.report.failovers.append(failover)
        # Whatever the fault, the old host has let the address go by now (a frozen or cut-off
        # goose's keeper at its lease's end, a dead or stopped one's at once).
        self.wait(lambda: old not in self.holder_now(),
                  f"{old} to have let {self.vip} go after the {kind}", 2)
        if kind in ("kill", "stop"):
            c.wait(old, 10)
            c.restart(old)
        elif kind == "cut":
            self.bed.net.link(host, True)
        else:
            c.resume(old)
        self.wait(lambda: (st := c.status(old)) is not None and st.goose not in (None, old)
                  and st.role.value == "duck", f"{old} back as a duck", 30)
        return failover

    def _read_logs(self) -> None:
        """The keepers' add and removal instants from every node's log (ddg.ops.vipkeeper)."""
        pattern = re.compile(r"(added|removed) (a stale )?\S+ (to|from) \S+(.*)\["
                             + vipkeeper.MONO + r" ([\d.]+)\]")
        held: list[tuple[float, float, str]] = []
        for name in self.names:
            since: float | None = None
            path = self.bed.cluster.log_path(name)
            text = path.read_text(errors="replace") if path.exists() else ""
            for m in pattern.finditer(text):
                at = float(m.group(5))
                if m.group(1) == "added":
                    since = at if since is None else since
                elif since is not None:
                    why = m.group(4).partition(": ")[2].strip() or "by the node"
                    self.report.removals[why] = self.report.removals.get(why, 0) + 1
                    held.append((since, at, name))
                    since = None
            if since is not None:
                held.append((since, float("inf"), name))
        held.sort()
        self.report.held = held
        for a, b in itertools.pairwise(held):
            if b[0] < a[1]:
                self.report.overlaps.append((a, b))
            elif a[2] != b[2]:
                self.report.handovers_ms.append((b[0] - a[1]) * 1000)

    def close(self) -> VipReport:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        try:
            if self.bed.cluster.names:
                self.bed.cluster.stop_all()  # each keeper removes the address, and logs it
                self._read_logs()
        finally:
            self.bed.close()
        return self.report
