"""A deterministic discrete-event simulator for the pure election core (ddg.election.core.Election).

Everything is driven by one seeded Random and a global fake clock, so a seed (plus a fault plan)
replays exactly. The simulator plays the part of node.py for N nodes:

* every node has its own clock, local = rate * global + offset, with |rate - 1| <= drift;
* tick() runs at the node's next_deadline(), read on the node's own clock;
* a request is delivered to the peer, core.step() runs there, and Output.reply travels back to
  the requester as a message, subject to the same faults; a reply whose requester restarted in
  between is lost with the old process's connection;
* Output.persist is the only thing that survives a crash: a restart builds a new Election from
  the last persisted HardState, at the node's current clock reading;
* a paused node (SIGSTOP) processes nothing, its inbox fills up; on resume (SIGCONT) it ticks
  and drains the inbox with the clock reading of the resume time, in a random order;
* the network drops, duplicates and delays messages (uniform latency, sometimes a long one, so
  they also reorder) and can cut any set of directed links; a link cut while a message is in
  flight loses it (node.py checks the partition on send and on receipt);
* with a ClusterTiming, the registry's timing record is part of the world: nodes run its
  (joint) timing and follow online changes as ddg/node/clustertiming.py does (see the class);
  without one every node runs its own timing (Sim(timings=...) mismatches them).

Invariants, checked after every event (and at every lease boundary, where a goose's reported
role changes without any event):

(a) at most one node ever has role GOOSE in a given term, across all time;
(b) at no global instant do two nodes report is_goose(their local now). Checking at event instants
    is exact: between two events at a node its state is fixed and its clock only moves forward,
    so is_goose can only turn false between events. If two nodes were both goose at an instant s,
    both were already goose right after the later of their last events before s.
(c) every Output leaves the node's HardState on disk (persist is emitted for every change), so
    a vote or a term never leaves the node before it is durable.

Liveness (used by the tests): `elected_since(t0)` is the first global time >= t0 at which some
node reports goose.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ddg.election.core import Election, HardState, Output, State
from ddg.election.messages import Message, TimeoutNow, VoteResponse
from ddg.election.timing import JointTiming, Timing, TimingRecord, reconcile

EPS = 1e-9  # a tick is scheduled this much after its deadline, so float rounding cannot stall it


class NoClockCheck(Election):
    """A core as before the clock-rate check (ddg/election/clockrate.py): it never judges its
    clock and never stretches a wait. The negative control of the clock tests."""

    def _check_clock(self, now: float) -> None:
        pass

    def _clock_stretch(self, now: float) -> float:
        return 1.0


class InvariantViolation(AssertionError):
    pass


@dataclass(frozen=True)
class Net:
    drop: float = 0.0  # probability a message is lost
    dup: float = 0.0  # probability it is delivered twice
    lat_min: float = 0.001
    lat_max: float = 0.010
    slow: float = 0.0  # probability of a long delay instead of lat_min..lat_max
    slow_max: float = 0.400


GOOD_NET = Net()
BAD_NET = Net(drop=0.25, dup=0.2, lat_min=0.001, lat_max=0.040, slow=0.1, slow_max=0.6)


class Record(NamedTuple):
    t: float
    node: str
    role: str  # reported_role(local now), or "down"
    term: int


class Window(NamedTuple):
    """A global-time interval [start, end) during which `node` reported goose."""

    node: str
    term: int
    start: float
    end: float


@dataclass(frozen=True)
class Envelope:
    src: str
    dst: str
    msg: Message
    reply: bool  # a reply to an earlier request from dst
    src_inc: int  # the sender's incarnation when it sent this
    dst_inc: int  # for a reply: the requester's incarnation when it asked (else 0)
    version: int = 0  # the sender's membership version when it sent this (node.py sends it)


@dataclass
class SimNode:
    name: str
    rate: float
    offset: float
    rng: random.Random
    core: Election | None = None
    disk: HardState = field(default_factory=HardState)
    incarnation: int = 0
    paused: bool = False
    inbox: list[Envelope] = field(default_factory=list)
    tick_gen: int = 0
    timing: Timing | None = None  # its own timing: today's per-node flags (no ClusterTiming)
    # With ClusterTiming: the record it runs on, the one on its disk, and (in its process's
    # memory) the fingerprint it confirmed.
    record: TimingRecord | None = None
    disk_record: TimingRecord | None = None
    confirmed: str | None = None
    # With ClusterMembership: members.json (version, members), and the (version, members)
    # this process confirmed.
    disk_members: tuple[int, frozenset[str]] | None = None
    confirmed_members: tuple[int, frozenset[str]] | None = None

    def local(self, t: float) -> float:
        return self.rate * t + self.offset

    def to_global(self, local: float) -> float:
        return (local - self.offset) / self.rate


class Sim:
    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        timing: Timing | None = None,
        drift: float = 0.01,
        max_offset: float = 1000.0,
        net: Net = GOOD_NET,
        election_cls: type[Election] = Election,
        names: list[str] | None = None,
        rates: dict[str, float] | None = None,
        trust_transfers: bool = False,
        crash_hints: bool = True,
        timings: dict[str, Timing] | None = None,
        cluster_timing: ClusterTiming | None = None,
        membership: ClusterMembership | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        # A crashed process's kernel closes its connections: its ducks learn of it at once
        # (node.py's hold stream), unless the link to them is cut.
        self.crash_hints = crash_hints
        self.trust_transfers = trust_transfers
        self.timing = timing or Timing()
        self.election_cls = election_cls
        names = names or [f"n{i}" for i in range(1, n + 1)]
        self.names = names
        self.members = frozenset(names)
        self.net = net
        self._lossy = 0  # refcount of "bad network" periods
        self.cuts: Counter[tuple[str, str]] = Counter()  # directed links cut (refcounted)
        self.t = 0.0
        self._q: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.history: list[Record] = []
        self.windows: list[Window] = []
        self._open: dict[str, list[Any]] = {}  # name -> [start, est_end, term]
        self._last: dict[str, tuple[str, int]] = {}
        self.winners: dict[int, str] = {}
        self.anomalies: list[str] = []
        self.stats: Counter[str] = Counter()
        self.nodes: dict[str, SimNode] = {}
        for name in names:
            rate = 1.0 + self.rng.uniform(-drift, drift)
            if rates and name in rates:
                rate = rates[name]
            offset = self.rng.uniform(0.0, max_offset)
            self.nodes[name] = SimNode(name, rate, offset, random.Random(self.rng.getrandbits(64)),
                                       timing=(timings or {}).get(name))
        # The registry's timing record and the nodes' part in it (None: every node runs its
        # own timing, as before timing was cluster state).
        self.ct = cluster_timing
        if cluster_timing is not None:
            cluster_timing.attach(self)
        # The registry's membership and the nodes' part in it (None: every node is a member
        # from the start and stays one, unless a test calls set_membership).
        self.cm = membership
        if membership is not None:
            membership.attach(self)
        for name in names:
            if membership is None or name in membership.members:
                self._boot(self.nodes[name])
        self._check()

    # ---- scheduling ----------------------------------------------------------------------

    def _push(self, t: float, kind: str, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, kind, data))

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) at global time t (a fault action, say)."""
        self._push(max(t, self.t), "call", (fn, args))

    def run_until(self, t_end: float) -> None:
        while self._q and self._q[0][0] <= t_end:
            t, _, kind, data = heapq.heappop(self._q)
            self.t = max(self.t, t)
            self.stats["events"] += 1
            if kind == "tick":
                self._on_tick(*data)
            elif kind == "deliver":
                self._on_deliver(data)
            elif kind == "call":
                fn, args = data
                fn(*args)
            # "observe" only needs the check below: a lease ran out at this instant
            self._check()
        self.t = max(self.t, t_end)
        self._check()

    def run_for(self, dt: float) -> None:
        self.run_until(self.t + dt)

    # ---- node inputs ---------------------------------------------------------------------

    def _boot(self, node: SimNode) -> None:
        node.incarnation += 1
        node.paused = False
        node.inbox.clear()
        timing: Timing | JointTiming = node.timing or self.timing
        if self.ct is not None:
            timing = self.ct.boot(node)
        members, version, floor = self.members, 0, 0
        if self.cm is not None:
            members, version, floor = self.cm.boot(node)
        node.core = self.election_cls(
            name=node.name, timing=timing, rng=node.rng, now=node.local(self.t),
            members=members, version=version, hard=node.disk,
            trust_transfers=self.trust_transfers, term_floor=floor,
        )
        if self.ct is not None:
            self.ct.booted(node)
        if self.cm is not None:
            self.cm.booted(node)
        self._schedule_tick(node)

    def _schedule_tick(self, node: SimNode) -> None:
        node.tick_gen += 1
        if node.core is None or node.paused:
            return
        deadline = node.core.next_deadline()
        if math.isfinite(deadline):
            t = max(node.to_global(deadline), self.t) + EPS
            self._push(t, "tick", (node.name, node.tick_gen))

    def _on_tick(self, name: str, gen: int) -> None:
        node = self.nodes[name]
        if node.core is None or node.paused or gen != node.tick_gen:
            return
        self._tick(node)
        self._schedule_tick(node)

    def _tick(self, node: SimNode) -> None:
        assert node.core is not None
        now = node.local(self.t)
        self.stats["ticks"] += 1
        self._apply(node, node.core.tick(now), None)
        if node.core.next_deadline() <= now:
            # The shell would spin (sleep 0) until the deadline moves: fail fast, don't hang.
            self.anomalies.append(f"t={self.t:.6f} {node.name}: next_deadline() not after tick")
            self._violation(f"{node.name}: next_deadline() {node.core.next_deadline()!r} <= now "
                            f"{now!r} after tick (role {node.core.state}): a busy loop")

    def _on_deliver(self, env: Envelope) -> None:
        node = self.nodes[env.dst]
        if node.core is None or self.cuts[(env.src, env.dst)]:
            self.stats["lost"] += 1
            return
        if env.reply and env.dst_inc != node.incarnation:
            self.stats["lost"] += 1  # the connection died with the process that asked
            return
        if node.paused:
            node.inbox.append(env)
            return
        self._receive(node, env)
        self._schedule_tick(node)

    def _receive(self, node: SimNode, env: Envelope) -> None:
        assert node.core is not None
        self.stats["delivered"] += 1
        out = node.core.step(env.msg, node.local(self.t), version=env.version)
        self._apply(node, out, None if env.reply else env)

    def _apply(self, node: SimNode, out: Output, request: Envelope | None) -> None:
        """What node.py's _apply does: persist first, then send."""
        core = node.core
        assert core is not None
        if out.persist is not None:
            node.disk = out.persist
            core.persisted(out.persist)
        if node.disk != core.hard_state:
            self._violation(f"{node.name} sends with HardState {core.hard_state} not on disk "
                            f"({node.disk})")
        reply = out.reply
        if (isinstance(reply, VoteResponse) and reply.granted and not reply.pre_vote
                and request is not None
                and node.disk != HardState(reply.term, request.src)):
            self._violation(f"{node.name} grants {request.src} a vote in term {reply.term} "
                            f"with {node.disk} on disk")
        for send in out.sends:
            self._transmit(node, send.to, send.msg, reply=False, dst_inc=0)
        if reply is not None and request is not None:
            self._transmit(node, request.src, reply, reply=True, dst_inc=request.src_inc)

    # ---- network -------------------------------------------------------------------------

    def _transmit(self, node: SimNode, to: str, msg: Message, *, reply: bool,
                  dst_inc: int) -> None:
        self.stats["sent"] += 1
        if self.cuts[(node.name, to)]:
            self.stats["lost"] += 1
            return
        net = BAD_NET if self._lossy else self.net
        rng = self.rng
        if rng.random() < net.drop:
            self.stats["lost"] += 1
            return
        copies = 2 if rng.random() < net.dup else 1
        assert node.core is not None
        env = Envelope(node.name, to, msg, reply, node.incarnation, dst_inc, node.core.version)
        for _ in range(copies):
            if rng.random() < net.slow:
                latency = rng.uniform(net.lat_max, net.slow_max)
            else:
                latency = rng.uniform(net.lat_min, net.lat_max)
            self._push(self.t + latency, "deliver", env)

    # ---- faults --------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Cut the directed link a -> b (refcounted: heal with uncut)."""
        self.cuts[(a, b)] += 1

    def uncut(self, a: str, b: str) -> None:
        if self.cuts[(a, b)] > 0:
            self.cuts[(a, b)] -= 1

    def isolate(self, a: str) -> None:
        for b in self.names:
            if b != a:
                self.cut(a, b)
                self.cut(b, a)

    def unisolate(self, a: str) -> None:
        for b in self.names:
            if b != a:
                self.uncut(a, b)
                self.uncut(b, a)

    def partition(self, *groups: set[str] | frozenset[str] | list[str]) -> None:
        """Cut every link between different groups (nodes in no group are cut from all)."""
        where = {n: i for i, g in enumerate(groups) for n in g}
        side = {n: where.get(n, -1 - i) for i, n in enumerate(self.names)}
        for a in self.names:
            for b in self.names:
                if a != b and side[a] != side[b]:
                    self.cut(a, b)

    def heal_links(self) -> None:
        self.cuts.clear()

    def degrade(self) -> None:
        self._lossy += 1

    def undegrade(self) -> None:
        self._lossy = max(0, self._lossy - 1)

    def crash(self, a: str) -> None:
        node = self.nodes[a]
        if node.core is None:
            return
        paused = node.paused
        node.core = None
        node.paused = False
        node.inbox.clear()
        node.tick_gen += 1
        self.stats["crashes"] += 1
        self._check()  # its goose window (if any) ends now, not at the next event
        if not self.crash_hints or paused:  # a frozen process's sockets close too, but its
            return                          # ducks have long since timed out: keep it simple
        for other in self.nodes.values():
            if other.core is not None and other.core.leader == a and not self.cuts[(a, other.name)]:
                self._push(self.t + self.rng.uniform(0.0002, 0.002), "call",
                           (self.hint, (other.name, a)))

    def hint(self, a: str, goose: str | None = None) -> None:
        """Node a's connection to GOOSE (default: the goose it follows) drops without a
        goodbye. After a crash that is the truth; otherwise (a firewall's reset) a false hint."""
        node = self.nodes[a]
        core = node.core
        if core is None or node.paused:
            return
        goose = goose or core.leader
        if goose is None or goose == a:
            return
        self.stats["hints"] += 1
        self._apply(node, core.goose_lost(goose, node.local(self.t)), None)
        self._schedule_tick(node)

    def restart(self, a: str) -> None:
        node = self.nodes[a]
        if node.core is None and (self.cm is None or self.cm.may_boot(a)):
            self._boot(node)

    def pause(self, a: str) -> None:
        node = self.nodes[a]
        if node.core is not None and not node.paused:
            node.paused = True
            node.tick_gen += 1
            self.stats["pauses"] += 1

    def resume(self, a: str) -> None:
        node = self.nodes[a]
        if node.core is None or not node.paused:
            return
        node.paused = False
        inbox, node.inbox = node.inbox, []
        # The ticker and the socket reads race after SIGCONT; let the seed decide.
        tick_first = self.rng.random() < 0.5
        if tick_first:
            self._tick(node)
        for env in inbox:
            if node.core is None:
                break
            if env.reply and env.dst_inc != node.incarnation:
                continue
            self._receive(node, env)
            self._check()  # every message is an event of its own
        if not tick_first and node.core is not None:
            self._tick(node)
        self._schedule_tick(node)

    def transfer(self, a: str | None = None) -> str | None:
        """Graceful stop of the goose (or of node a if it is one): transfer_leadership()."""
        for node in self.nodes.values() if a is None else [self.nodes[a]]:
            if node.core is not None and not node.paused and node.core.state is State.GOOSE:
                self._apply(node, node.core.transfer_leadership(node.local(self.t)), None)
                self._schedule_tick(node)
                self.stats["transfers"] += 1
                return node.name
        return None

    def forge_timeout_now(self, a: str) -> None:
        """A stranger sends node a a TimeoutNow in the name of the goose it follows (the
        cluster has no secret): at most an unneeded election, never two geese."""
        node = self.nodes[a]
        core = node.core
        if core is None or node.paused or core.leader in (None, a):
            return
        self.stats["forged"] += 1
        env = Envelope(core.leader, a, TimeoutNow(term=core.term, sender=core.leader), False,
                       0, 0)
        self._receive(node, env)
        self._schedule_tick(node)

    def set_membership(self, a: str, members: frozenset[str], version: int,
                       term_floor: int = 0) -> None:
        node = self.nodes[a]
        if node.core is not None and not node.paused:
            self._apply(node, node.core.set_membership(members, version, node.local(self.t),
                                                       term_floor), None)
            self._schedule_tick(node)

    def kick(self, a: str) -> None:
        """Make node a's election timer fire now (a deterministic way to pick who runs)."""
        node = self.nodes[a]
        if node.core is not None:
            node.core.election_deadline = node.local(self.t)
            self._schedule_tick(node)

    def heal_all(self) -> None:
        """Faults stop: links heal, the network is good, paused nodes resume, crashed restart."""
        self.heal_links()
        self._lossy = 0
        for name in self.names:
            self.resume(name)
            self.restart(name)

    # ---- invariants ----------------------------------------------------------------------

    def _violation(self, what: str) -> None:
        tail = "\n".join(f"  {r.t:.6f} {r.node} {r.role} term {r.term}" for r in self.history[-20:])
        raise InvariantViolation(f"t={self.t:.6f}: {what}\nrecent history:\n{tail}")

    def _check(self) -> None:
        t = self.t
        gooses = []
        for name, node in self.nodes.items():
            core = node.core
            if core is None:
                role, term, goose = "down", -1, False
            else:
                now = node.local(t)
                goose = core.is_goose(now)
                role, term = core.reported_role(now), core.term
                if core.state is State.GOOSE:
                    winner = self.winners.setdefault(core.term, name)
                    if winner != name:
                        self._violation(f"two gooses in term {core.term}: {winner} and {name}")
            if self._last.get(name) != (role, term):
                self._last[name] = (role, term)
                self.history.append(Record(t, name, role, term))
            if goose:
                gooses.append(name)
                assert core is not None
                est_end = node.to_global(core.lease_until)
                win = self._open.get(name)
                if win is None:
                    self._open[name] = [t, est_end, core.term]
                    self._push(est_end + EPS, "observe", name)
                elif est_end != win[1]:
                    win[1] = est_end
                    self._push(est_end + EPS, "observe", name)
            elif name in self._open:
                start, est_end, wterm = self._open.pop(name)
                self.windows.append(Window(name, wterm, start, min(t, est_end)))
        if len(gooses) > 1:
            self._violation(f"two nodes report goose at once: {', '.join(gooses)}")

    # ---- queries -------------------------------------------------------------------------

    def all_windows(self) -> list[Window]:
        """Closed and still-open goose windows, by start time."""
        open_ = [Window(n, w[2], w[0], w[1]) for n, w in self._open.items()]
        return sorted(self.windows + open_, key=lambda w: w.start)

    def min_gap(self) -> float:
        """Smallest global time between one goose's window ending and another's starting."""
        gap = math.inf
        ws = self.all_windows()
        for i, w in enumerate(ws):
            for v in ws[i + 1:]:
                if v.node != w.node:
                    gap = min(gap, v.start - w.end)
        return gap

    def gooses(self) -> list[str]:
        return [n for n, node in self.nodes.items()
                if node.core is not None and node.core.is_goose(node.local(self.t))]

    def elected_since(self, t0: float) -> float | None:
        """First global time >= t0 at which some node reports goose (None: not yet)."""
        times = [max(w.start, t0) for w in self.all_windows() if w.end > t0]
        return min(times) if times else None

    def core(self, name: str) -> Election:
        core = self.nodes[name].core
        assert core is not None, f"{name} is down"
        return core


# ---- random fault plans --------------------------------------------------------------------

FAULT_KINDS = ("cut", "isolate", "partition", "crash", "pause", "transfer", "degrade", "forge",
               "hint")


class Fault(NamedTuple):
    at: float
    kind: str
    a: int  # node index (mod n)
    b: int  # another node index, or a bitmask for partition
    duration: float


def random_plan(rng: random.Random, n: int, span: float, count: int) -> list[Fault]:
    return sorted(
        Fault(rng.uniform(0.0, span), rng.choice(FAULT_KINDS), rng.randrange(n),
              rng.randrange(1 << n), rng.uniform(0.01, 1.2))
        for _ in range(count)
    )


def apply_plan(sim: Sim, plan: list[Fault]) -> None:
    """Schedule every fault, and its end `duration` later."""
    names = sim.names
    n = len(names)
    for f in plan:
        a, b = names[f.a % n], names[f.b % n]
        end = f.at + f.duration
        match f.kind:
            case "cut" if a != b:
                sim.at(f.at, sim.cut, a, b)
                sim.at(end, sim.uncut, a, b)
            case "isolate":
                sim.at(f.at, sim.isolate, a)
                sim.at(end, sim.unisolate, a)
            case "partition":
                side = {names[i] for i in range(n) if f.b >> i & 1}
                rest = set(names) - side
                sim.at(f.at, sim.partition, side, rest)
                sim.at(end, _unpartition, sim, side, rest)
            case "crash":
                sim.at(f.at, sim.crash, a)
                sim.at(end, sim.restart, a)
            case "pause":
                sim.at(f.at, sim.pause, a)
                sim.at(end, sim.resume, a)
            case "transfer":
                sim.at(f.at, sim.transfer)
            case "forge":
                sim.at(f.at, sim.forge_timeout_now, a)
            case "hint":  # a false one, unless its goose has just crashed
                sim.at(f.at, sim.hint, a)
            case "degrade":
                sim.at(f.at, sim.degrade)
                sim.at(end, sim.undegrade)


def _unpartition(sim: Sim, side: set[str], rest: set[str]) -> None:
    for a in side:
        for b in rest:
            sim.uncut(a, b)
            sim.uncut(b, a)


# ---- the registry in Redis, as the nodes reach it ------------------------------------------


class RegistryModel:
    """What the two registry models share: Redis state as one shared object that a node
    reaches in round trips (each request and reply delayed like one), reading it on a change
    notification and every REFRESH seconds; nothing reaches a node cut off from Redis (CUT,
    refcounted), frozen, or gone since it asked."""

    def __init__(self, refresh: float) -> None:
        self.refresh = refresh
        self.cut: Counter[str] = Counter()  # nodes cut off from Redis (refcounted)
        self.sim: Sim | None = None

    def _sim(self) -> Sim:
        assert self.sim is not None
        return self.sim

    def cut_off(self, a: str) -> None:
        self.cut[a] += 1

    def reconnect(self, a: str) -> None:
        if self.cut[a] > 0:
            self.cut[a] -= 1

    def _alive(self, name: str, inc: int) -> SimNode | None:
        node = self._sim().nodes[name]
        if node.core is None or node.paused or node.incarnation != inc or self.cut[name]:
            return None
        return node

    def _latency(self) -> float:
        rng = self._sim().rng
        return rng.uniform(0.02, 0.1) if rng.random() < 0.05 else rng.uniform(0.0003, 0.003)

    def _call(self, name: str, inc: int, script: Callable[[], Any],
              then: Callable[[Any], None] | None = None) -> None:
        """A round trip to Redis: the script runs when the request arrives, THEN when (and if)
        the reply does."""
        sim = self._sim()

        def run() -> None:
            if self._alive(name, inc) is None:
                return
            result = script()
            if then is not None:
                sim.at(sim.t + self._latency(), reply, result)

        def reply(result: Any) -> None:
            if self._alive(name, inc) is not None and then is not None:
                then(result)

        sim.at(sim.t + self._latency(), run)

    def _schedule_refresh(self, name: str, inc: int) -> None:
        sim = self._sim()
        sim.at(sim.t + sim.rng.uniform(0.5, 1.0) * self.refresh, self._periodic, name, inc)

    def _periodic(self, name: str, inc: int) -> None:
        node = self._sim().nodes[name]
        if node.core is None or node.incarnation != inc:
            return  # a new process has its own
        self._read(name, inc)
        self._schedule_refresh(name, inc)

    def _read(self, name: str, inc: int) -> None:
        raise NotImplementedError


# ---- timing as cluster state ---------------------------------------------------------------


class ClusterTiming(RegistryModel):
    """The registry's timing record (`ddg:C:timing`, `ddg:C:timing_seen`) as one shared object,
    and each node's part in it as ddg/node/clustertiming.py plays it: a node reads the record on a
    change notification (lost while it is cut off from Redis) and every REFRESH seconds, each
    request and reply delayed like a round trip to Redis; it decides with
    ddg.election.timing.reconcile, persists what it adopts before confirming, runs on the record's
    joint timing, confirms once its old leases have surely ended, and tries to finalize. A crash
    loses the process's memory, not its disk; a restarted node runs on its disk's record and
    confirms at once (a new process holds no lease). Redis can lose the record (flush) or go back in
    time.

    With a ClusterMembership beside it, the members are the registry's, a join or removal
    drops the member's confirmation, a node reads the timing after each membership read (as
    the node's watcher does), and a finalize also needs every member's confirmation of the
    current membership version (CONFIRM, ddg/registry/scripts.py).

    The flags make deliberately broken variants for negative controls: JOINT False switches
    a node straight to the target, CONFIRM_WAIT False confirms without waiting out the old
    leases, FINALIZE_ALL False finalizes once any member confirmed, VERSION_CHECK False
    finalizes without the members' confirmations of the current membership version (the
    build before review16 #1)."""

    def __init__(self, first: Timing, *, refresh: float = 0.5, joint: bool = True,
                 confirm_wait: bool = True, finalize_all: bool = True,
                 version_check: bool = True) -> None:
        super().__init__(refresh)
        self.record: TimingRecord | None = TimingRecord.first(first)
        self.seen: dict[str, str] = {}
        self.joint = joint
        self.confirm_wait = confirm_wait
        self.finalize_all = finalize_all
        self.version_check = version_check
        self.changes: list[Timing] = []  # the operator's that Redis took, in order
        self.lost_data = False  # a flush or rollback: a change may have been lost with it
        self.finalized = 0

    # ---- wiring ----------------------------------------------------------------------------

    def attach(self, sim: Sim) -> None:
        self.sim = sim
        for node in sim.nodes.values():
            node.disk_record = self.record  # bootstrapped and joined under the first record

    def timing_of(self, record: TimingRecord) -> Timing | JointTiming:
        return record.joint if self.joint else record.target

    def boot(self, node: SimNode) -> Timing | JointTiming:
        """A (re)started process: it runs on its disk's record."""
        assert node.disk_record is not None
        node.record = node.disk_record
        node.confirmed = None
        return self.timing_of(node.record)

    def booted(self, node: SimNode) -> None:
        self._confirm(node.name, node.incarnation)  # a new process holds no lease
        self._schedule_refresh(node.name, node.incarnation)

    # ---- faults and the operator ---------------------------------------------------------

    def change(self, target: Timing) -> None:
        """`ddg-node config set`: the new timing joins those in force (refused while Redis
        holds no record)."""
        rec = self.record
        if rec is None:
            return
        self.changes.append(target)
        if rec.target == target.resolved() and not rec.changing:
            return
        self.record = rec.changed_to(target)
        self._publish()

    def flush(self) -> None:
        """Redis lost its data (FLUSHALL, a restart with no RDB)."""
        self.record, self.seen = None, {}
        self.lost_data = True

    def snapshot(self) -> tuple[TimingRecord | None, dict[str, str]]:
        return self.record, dict(self.seen)

    def rollback(self, snap: tuple[TimingRecord | None, dict[str, str]]) -> None:
        """Redis back from an old RDB."""
        self.record, self.seen = snap[0], dict(snap[1])
        self.lost_data = True
        self._publish()

    # ---- the registry's side (each call is one atomic script) --------------------------------

    def _publish(self) -> None:
        sim = self._sim()
        for name, node in sim.nodes.items():
            if not self.cut[name]:
                sim.at(sim.t + sim.rng.uniform(0.0005, 0.02), self._read, name, node.incarnation)

    def _cas(self, expected: TimingRecord | None, new: TimingRecord) -> bool:
        if self.record != expected:
            return False
        self.record = new
        self._publish()
        return True

    def _confirm_and_finalize(self, name: str | None, fingerprint: str,
                              expected: TimingRecord) -> None:
        if name is not None:
            self.seen[name] = fingerprint
        rec = self.record
        if rec != expected or not rec.changing:
            return
        cm = self._sim().cm
        members = self._sim().members if cm is None else cm.members
        confirmed = [self.seen.get(m) == fingerprint for m in members]
        if cm is not None and self.version_check and set(cm._confirmed()) != members:
            return
        if all(confirmed) or (not self.finalize_all and any(confirmed)):
            self.record = rec.finalized()
            self.finalized += 1
            self._publish()

    # ---- the node's side ---------------------------------------------------------------------

    def _read(self, name: str, inc: int) -> None:
        if self._alive(name, inc) is None:
            return
        self._call(name, inc, lambda: (self.record, self.seen.get(name)),
                   lambda r: self._on_read(name, inc, *r))

    def _on_read(self, name: str, inc: int, theirs: TimingRecord | None,
                 seen: str | None) -> None:
        node = self._sim().nodes[name]
        assert node.record is not None and node.core is not None
        step = reconcile(node.record, theirs, node.record.timings)
        if step.write is not None:
            new = step.write
            self._call(name, inc, lambda: self._cas(theirs, new),
                       lambda ok: self._adopt(name, step.adopt) if ok and step.adopt else None)
        elif step.adopt is not None:
            self._adopt(name, step.adopt)
        elif theirs is not None and theirs == node.record:
            fp = theirs.fingerprint
            if node.confirmed == fp and seen != fp:
                self._confirm(name, inc)  # Redis lost it
            elif node.confirmed == fp and theirs.changing:
                self._call(name, inc, lambda: self._confirm_and_finalize(None, fp, theirs))
            elif node.confirmed != fp and node.core.timing_settled(node.local(self._sim().t)):
                self._confirm(name, inc)

    def _adopt(self, name: str, record: TimingRecord) -> None:
        sim = self._sim()
        node = sim.nodes[name]
        assert node.core is not None and node.record is not None
        if record == node.record or record.epoch < node.record.epoch:
            return
        node.disk_record = record  # persisted before it is confirmed
        node.record = record
        node.confirmed = None
        sim._apply(node, node.core.set_timing(self.timing_of(record), node.local(sim.t)), None)
        sim._schedule_tick(node)
        settles = node.to_global(node.core.timing_settles_at) if self.confirm_wait else sim.t
        sim.at(max(settles, sim.t) + EPS, self._confirm, name, node.incarnation)

    def _confirm(self, name: str, inc: int) -> None:
        node = self._alive(name, inc)
        if node is None or node.record is None:
            return
        assert node.core is not None
        if self.confirm_wait and not node.core.timing_settled(node.local(self._sim().t)):
            return  # a later adoption moved the wait on; its own confirm comes then
        record = node.record
        fp = record.fingerprint

        def done(_: object) -> None:
            if node.record == record:
                node.confirmed = fp

        self._call(name, inc, lambda: self._confirm_and_finalize(name, fp, record), done)

    # ---- queries -------------------------------------------------------------------------------

    def settled(self) -> bool:
        """Every node runs the registry's record, which names one timing: the last one asked
        for, unless Redis lost data since (it may have lost that change)."""
        rec = self.record
        if rec is None or rec.changing:
            return False
        if self.changes and not self.lost_data and rec.target != self.changes[-1].resolved():
            return False
        sim = self._sim()
        members = sim.names if sim.cm is None else sim.cm.members
        return all(sim.nodes[m].record == rec for m in members)


# ---- membership as registry state ------------------------------------------------------------

Confirmation = tuple[int, frozenset[str], int]  # a member's (version, members, term)


class OlderVersionsCounted(Election):
    """A core that answers a candidate or goose of an older membership version like any other
    (as before membership confirmations): the negative control of the version check."""

    def step(self, msg: Message, now: float, version: int | None = None) -> Output:
        return super().step(msg, now, None)


class ClusterMembership(RegistryModel):
    """The registry's membership (`ddg:C:members`, `:version`, `:version_seen`, `:term_floor`)
    as one shared object, and each node's part in it as ddg/node/membership.py plays it.

    The registry's side, one atomic script each: a join (the joining process tries to add
    itself until the registry lets it, then starts), an operator's remove (retried until the
    registry lets it, or given up), a member's confirmation, a restore (Redis lost data: a
    member puts back what it knew, merged, under a newer version; never held back), a read.
    A change to the set of names is written only when a majority of the current members have
    confirmed the current version (the gate); it raises the term floor to the highest term
    among those confirmations.

    A node's side: it reads the registry on a change notification (lost while it is cut off
    from Redis) and every REFRESH seconds, each request and reply delayed like a round trip.
    It adopts a newer version (core.set_membership with the floor), writes it to its disk
    (members.json) and confirms it once core.membership_settled(); it confirms again when
    Redis lost its confirmation, puts back its membership when Redis lost data, and adds
    itself back (through the gate) when a restore lost its entry. A restarted process starts
    on the registry's membership (its disk's while cut off from Redis).

    Negative controls: GATE False writes every change at once (the build before the fix);
    CONFIRM_WAIT False confirms on adoption; FLOOR False keeps no term floor."""

    def __init__(self, first: set[str] | frozenset[str] | list[str], *, refresh: float = 1.0,
                 lost: float = 0.0, gate: bool = True, confirm_wait: bool = True,
                 floor: bool = True) -> None:
        super().__init__(refresh)
        self.exists = True
        self.version = 1
        self.members = frozenset(first)
        self.floor = 0
        self.seen: dict[str, Confirmation] = {}
        self.tombstones: set[str] = set()
        self.lost = lost  # the chance that a node misses a change notification (a broken
        # subscription, a loaded host): it sees the change at its next refresh
        self.gate = gate
        self.confirm_wait = confirm_wait
        self.use_floor = floor
        self.gone: set[str] = set()  # removed on purpose: its operator stopped it
        self.joining: set[str] = set()
        self.history: list[tuple[int, frozenset[str]]] = [(1, self.members)]
        self.held_back = 0  # change attempts the gate refused
        self.given_up: list[str] = []  # removes that gave up waiting
        self.lost_data = False

    # ---- wiring ----------------------------------------------------------------------------

    def attach(self, sim: Sim) -> None:
        self.sim = sim
        for name in self.members:  # bootstrapped: their data dirs hold version 1
            sim.nodes[name].disk_members = (self.version, self.members)

    def may_boot(self, name: str) -> bool:
        """A crashed member may start again; a node that never joined, or was removed, not."""
        return name not in self.gone and self._sim().nodes[name].disk_members is not None

    def boot(self, node: SimNode) -> tuple[frozenset[str], int, int]:
        """A (re)started process: the registry's membership (put back first if Redis lost it),
        or its disk's while cut off from Redis."""
        disk = node.disk_members
        assert disk is not None
        if not self.cut[node.name]:
            self._restore(disk)
            if node.name in self.members:
                node.disk_members = (self.version, self.members)
                node.confirmed_members = None
                return self.members, self.version, self.floor if self.use_floor else 0
        node.confirmed_members = None
        return disk[1], disk[0], 0

    def booted(self, node: SimNode) -> None:
        assert node.core is not None
        self._confirm_at(node, node.core.membership_settles_at)
        self._schedule_refresh(node.name, node.incarnation)

    # ---- the operator and Redis --------------------------------------------------------------

    def join(self, name: str) -> None:
        """Start NAME's first process: it adds itself when the registry lets it, then runs."""
        node = self._sim().nodes[name]
        assert node.core is None and node.disk_members is None, name
        self.joining.add(name)
        self._try_join(name)

    def _try_join(self, name: str) -> None:
        sim = self._sim()
        if name not in self.joining:
            return
        if self.cut[name]:
            sim.at(sim.t + 0.1, self._try_join, name)
            return

        def added(result: str) -> None:
            if result != "ok" or name not in self.members:  # held back, or flushed since:
                sim.at(sim.t + sim.rng.uniform(0.05, 0.1), self._try_join, name)  # again
                return
            self.joining.discard(name)
            node = sim.nodes[name]
            node.disk_members = (self.version, self.members)
            if sim.ct is not None and sim.ct.record is not None:
                node.disk_record = sim.ct.record  # the add's reply carries the record
            sim._boot(node)
            sim._check()

        self._round_trip(lambda: self._add(name), added)

    def remove(self, name: str, timeout: float = 5.0, *, force: bool = False) -> None:
        """`ddg-node remove NAME`: retried while the registry holds it back, up to TIMEOUT;
        FORCE (`--force`, for a member down for good) skips the gate."""
        sim = self._sim()
        deadline = sim.t + timeout

        def attempt() -> None:
            self._round_trip(lambda: self._remove(name, force=force), done)

        def done(result: str) -> None:
            if result == "wait":
                if sim.t + 0.1 > deadline:
                    self.given_up.append(name)
                else:
                    sim.at(sim.t + 0.1, attempt)

        attempt()

    def reconnect(self, a: str) -> None:
        super().reconnect(a)
        if not self.cut[a]:
            sim = self._sim()
            node = sim.nodes[a]
            if node.core is not None:  # the watcher's resubscription reads at once
                self._read(a, node.incarnation)

    def flush(self) -> None:
        """FLUSHALL, or Redis restarted with no RDB."""
        self.exists, self.version, self.members, self.floor = False, 0, frozenset(), 0
        self.seen, self.tombstones = {}, set()
        self.lost_data = True

    def snapshot(self) -> tuple[Any, ...]:
        return (self.exists, self.version, self.members, self.floor, dict(self.seen),
                set(self.tombstones))

    def rollback(self, snap: tuple[Any, ...]) -> None:
        """Redis back from an old RDB."""
        self.exists, self.version, self.members, self.floor = snap[:4]
        self.seen, self.tombstones = dict(snap[4]), set(snap[5])
        self.lost_data = True
        self._publish()

    # ---- the registry's side (each call is one atomic script) --------------------------------

    def _publish(self) -> None:
        sim = self._sim()
        for name, node in sim.nodes.items():
            if not self.cut[name] and node.core is not None and sim.rng.random() >= self.lost:
                sim.at(sim.t + sim.rng.uniform(0.0005, 0.02), self._read, name, node.incarnation)

    def _confirmed(self) -> list[str]:
        want = (self.version, self.members)
        return [m for m in self.members if (c := self.seen.get(m)) is not None and c[:2] == want]

    def _may_change(self) -> bool:
        """The gate; when it opens, the term floor rises to the highest term among the
        confirmations it counted (before the change drops any of them, as GATE does)."""
        confirmed = self._confirmed()
        if not self.gate or not self.members or len(confirmed) >= len(self.members) // 2 + 1:
            self.floor = max([self.floor, *(self.seen[m][2] for m in confirmed)])
            return True
        self.held_back += 1
        return False

    def _change(self, members: frozenset[str]) -> None:
        self.version += 1
        self.members = members
        self.history.append((self.version, members))
        self._publish()

    def _add(self, name: str) -> str:
        if not self.exists:
            return "no-cluster"
        if name in self.members:
            return "ok"
        if not self._may_change():
            return "wait"
        self.tombstones.discard(name)
        self._forget(name)
        self._change(self.members | {name})
        return "ok"

    def _remove(self, name: str, *, force: bool = False) -> str:
        if name not in self.members:
            return "not-a-member"
        if not force and not self._may_change():
            return "wait"
        self._forget(name)
        self.tombstones.add(name)
        self.gone.add(name)
        self._change(self.members - {name})
        return "ok"

    def _forget(self, name: str) -> None:
        """A join or removal drops the name's confirmations, of membership and timing."""
        self.seen.pop(name, None)
        if (ct := self._sim().ct) is not None:
            ct.seen.pop(name, None)

    def _restore(self, snap: tuple[int, frozenset[str]]) -> None:
        version, members = snap
        if not members:
            return  # a node restores only a membership it was part of
        fork = self.exists and self.version == version and self.members != members
        if self.exists and (self.version > version or (self.version == version and not fork)):
            return
        self.members = (self.members | members) if self.exists else members
        self.version = max(self.version, version) + 1
        self.exists = True
        self.history.append((self.version, self.members))
        self._publish()

    def _confirm_script(self, name: str, c: Confirmation) -> None:
        if name in self.members:
            self.seen[name] = c

    # ---- the node's side ---------------------------------------------------------------------

    def _round_trip(self, script: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """An operator's or a joining process's call: the script runs when the request
        arrives, THEN when the reply does."""
        sim = self._sim()
        sim.at(sim.t + self._latency(),
               lambda: sim.at(sim.t + self._latency(), then, script()))

    def _read(self, name: str, inc: int) -> None:
        if self._alive(name, inc) is None:
            return
        self._call(name, inc, lambda: (self.exists, self.version, self.members, self.floor,
                                       self.seen.get(name), name in self.tombstones),
                   lambda r: self._on_read(name, inc, *r))

    def _on_read(self, name: str, inc: int, exists: bool, version: int,
                 members: frozenset[str], floor: int, seen: Confirmation | None,
                 tombstone: bool) -> None:
        self._on_read_membership(name, inc, exists, version, members, floor, seen, tombstone)
        sim = self._sim()
        if sim.ct is not None and sim.nodes[name].core is not None:
            sim.ct._read(name, inc)  # the watcher's timing.refresh_soon()

    def _on_read_membership(self, name: str, inc: int, exists: bool, version: int,
                            members: frozenset[str], floor: int, seen: Confirmation | None,
                            tombstone: bool) -> None:
        sim = self._sim()
        node = sim.nodes[name]
        core = node.core
        assert core is not None
        if core.state is State.REMOVED:
            return  # it exits
        mine = (core.version, core.members)
        if not exists or version < core.version or (version == core.version
                                                    and members != core.members):
            self._call(name, inc, lambda: self._restore(mine))
            return
        if name not in members and name in core.members and not tombstone:
            self._call(name, inc, lambda: self._add(name))  # a restore lost its entry
            return
        if (version, members) != mine:
            now = node.local(sim.t)
            sim._apply(node, core.set_membership(members, version, now,
                                                 floor if self.use_floor else 0), None)
            # Removed: it exits (0), its streams end with `bye`. (set_membership changed
            # core.state; mypy keeps its narrowing from above.)
            if core.state is State.REMOVED:  # type: ignore[comparison-overlap]
                node.core = None
                node.tick_gen += 1
                sim._check()
                return
            sim._schedule_tick(node)
            node.disk_members = (version, members)
            node.confirmed_members = None
            self._confirm_at(node, core.membership_settles_at)
            return
        if node.confirmed_members != mine:
            self._confirm(name, inc)
        elif seen is None or seen[:2] != mine:
            self._confirm(name, inc)  # Redis lost it

    def _confirm_at(self, node: SimNode, local: float) -> None:
        sim = self._sim()
        at = max(node.to_global(local), sim.t) if self.confirm_wait else sim.t
        sim.at(at + EPS, self._confirm, node.name, node.incarnation)

    def _confirm(self, name: str, inc: int) -> None:
        node = self._alive(name, inc)
        if node is None:
            return
        core = node.core
        assert core is not None
        now = node.local(self._sim().t)
        if core.state is State.REMOVED:
            return
        if self.confirm_wait and not core.membership_settled(now):
            return  # a later adoption moved the wait on; its own confirm comes then
        mine = (core.version, core.members)
        if node.disk_members != mine:
            return
        c = (core.version, core.members, core.term)

        def done(_: object) -> None:
            if node.core is core and (core.version, core.members) == mine:
                node.confirmed_members = mine

        self._call(name, inc, lambda: self._confirm_script(name, c), done)

    # ---- queries -------------------------------------------------------------------------------

    def settled(self) -> bool:
        """Every live member runs the registry's membership and nobody waits to join."""
        if self.joining or not self.exists:
            return False
        sim = self._sim()
        for name in self.members:
            core = sim.nodes[name].core
            if core is None or (core.version, core.members) != (self.version, self.members):
                return False
        return True
