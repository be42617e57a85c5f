"""A pure checker over a recorded history: observations of every node plus the faults injected.

All times are seconds on one monotonic clock (CLOCK_MONOTONIC is system-wide, so the observer's
clock and every node's clock are the same clock). An observation is one `GET /status` sent at
`sent` and answered at `received`: the node computed its role at some unknown instant inside
[sent, received]. The rules (docs/faults.md explains them):

same-term     two different nodes answer `goose` with the same term.
span-overlap  two nodes' goose spans must overlap. A node's goose run is a maximal sequence of
              its own consecutive answers `goose` with one term and one pid (answers that failed
              do not break a run; any other answer does). Within a term a node is goose for one
              contiguous stretch, so a run whose first and last answers came at instants a1 <= ak
              was goose all through [a1, ak]. Runs A and B can be disjoint only if A could have
              ended before B started (A.last.sent < B.first.received) or the reverse; if neither
              is possible the overlap is certain.
lease-overlap a goose answer at instant t with lease_remaining L promises that no other node is
              goose until t + L (ducks that acked refuse votes for longer than the lease). A
              goose answer from another node that certainly falls inside that promise
              (A.received <= B.sent and B.received <= A.sent + L) is a violation. The promise ends
              early when the goose is stopped gracefully (it steps down and hands over), so
              answers near a SIGTERM of the promising node are exempt from this rule.
no-quorum     a goose answer with lease L (of a full lease Lf) rests on a heartbeat round sent
              no earlier than sent + L - Lf and acked by a quorum before the answer. If during
              all of [sent + L - Lf, received] the node could not reach a quorum (itself plus
              live peers with the link up both ways), the answer is a violation.
settle        after a fault heals completely (every node running, no cut, Redis up), within
              `settle_bound` every node must name the same goose, which answers `goose`.
recovery      from the moment a connected majority (a clique of live nodes, pairwise linked
              both ways, of at least a quorum) exists again after none did, a node must answer
              `goose` within `recovery_bound`.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ddg.election.core import quorum_of


@dataclass(frozen=True, kw_only=True, slots=True)
class Observation:
    node: str
    sent: float
    received: float
    role: str | None  # goose | duck | candidate | None when the node did not answer
    term: int | None = None
    goose: str | None = None  # the goose this node names
    lease_ms: float | None = None  # lease_remaining_ms
    lease_total_ms: float | None = None  # timing.longest_lease_ms (or lease_ms: older nodes)
    pid: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.role is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class Topology:
    """What the harness believes about the cluster's processes and links after an event."""

    nodes: frozenset[str]
    live: frozenset[str]  # running and not paused
    cut: frozenset[tuple[str, str]] = frozenset()  # directed (from, to) pairs dropped
    redis: str = "up"  # up | frozen | down
    redis_cut: frozenset[str] = frozenset()

    @property
    def quorum(self) -> int:
        return quorum_of(len(self.nodes))

    def linked(self, a: str, b: str) -> bool:
        """A request/reply link works only if packets pass both ways."""
        return (a, b) not in self.cut and (b, a) not in self.cut

    def reach(self, node: str) -> int:
        """How many nodes (itself included) NODE can exchange messages with."""
        if node not in self.live:
            return 0
        return 1 + sum(1 for p in self.live if p != node and self.linked(node, p))

    def majority(self) -> frozenset[str] | None:
        """A largest clique of live, pairwise linked nodes of at least a quorum, if any."""
        live = sorted(self.live)
        for size in range(len(live), self.quorum - 1, -1):
            for group in itertools.combinations(live, size):
                if all(self.linked(a, b) for a, b in itertools.combinations(group, 2)):
                    return frozenset(group)
        return None

    @property
    def healthy(self) -> bool:
        return (self.live == self.nodes and not self.cut and self.redis == "up"
                and not self.redis_cut)

    def describe(self) -> str:
        parts = [f"live={','.join(sorted(self.live)) or '-'}"]
        down = sorted(self.nodes - self.live)
        if down:
            parts.append(f"down={','.join(down)}")
        if self.cut:
            parts.append("cut=" + ",".join(f"{a}>{b}" for a, b in sorted(self.cut)))
        if self.redis != "up":
            parts.append(f"redis={self.redis}")
        if self.redis_cut:
            parts.append(f"redis_cut={','.join(sorted(self.redis_cut))}")
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Something the harness did. The new topology holds from `end` for certain, maybe earlier."""

    start: float
    end: float
    kind: str
    detail: str = ""
    targets: tuple[str, ...] = ()
    topology: Topology
    fault: bool = False  # counts as an injected fault


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckConfig:
    recovery_bound: float = 0.6
    settle_bound: float = 2.0
    failover_bound: float | None = None  # report only, unless set
    context: float = 0.4  # seconds of timeline printed either side of a violation
    graceful_exempt: float = 2.0  # seconds before a SIGTERM in which lease promises are void


@dataclass(frozen=True, kw_only=True, slots=True)
class Violation:
    rule: str
    at: float
    message: str
    nodes: tuple[str, ...] = ()


@dataclass(kw_only=True, slots=True)
class Figures:
    faults: int = 0
    fault_kinds: dict[str, int] = field(default_factory=dict)
    observations: int = 0
    failovers: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    initial_elections: list[float] = field(default_factory=list)  # from every node answering
    settles: list[float] = field(default_factory=list)
    gooseless_with_majority: float = 0.0  # seconds
    majority_time: float = 0.0  # seconds a connected majority existed
    elections: int = 0
    elections_per_fault: list[int] = field(default_factory=list)
    # the same, summed by the kind of fault (the window runs to the next fault)
    elections_by_kind: dict[str, int] = field(default_factory=dict)
    unsettled: int = 0  # heals not checked because the next fault came first


@dataclass(kw_only=True, slots=True)
class Report:
    violations: list[Violation]
    figures: Figures
    timelines: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """A node's goose run: consecutive goose answers in one term from one process."""

    node: str
    term: int | None
    first: Observation
    last: Observation


# ---- helpers ------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[idx]


def summarize(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    ms = [v * 1000 for v in values]
    return (f"n={len(ms)} median={statistics.median(ms):.0f} ms p95={quantile(ms, 0.95):.0f} ms "
            f"max={max(ms):.0f} ms")


def goose_runs(observations: Iterable[Observation]) -> list[Run]:
    by_node: dict[str, list[Observation]] = {}
    for o in observations:
        by_node.setdefault(o.node, []).append(o)
    runs: list[Run] = []
    for node, obs in by_node.items():
        obs.sort(key=lambda o: o.sent)
        first: Observation | None = None
        last: Observation | None = None
        for o in obs:
            if not o.ok:
                continue
            same = (first is not None and last is not None and o.role == "goose"
                    and o.term == first.term and o.pid == first.pid)
            if same:
                last = o
                continue
            if first is not None and last is not None:
                runs.append(Run(node=node, term=first.term, first=first, last=last))
                first = last = None
            if o.role == "goose":
                first = last = o
        if first is not None and last is not None:
            runs.append(Run(node=node, term=first.term, first=first, last=last))
    runs.sort(key=lambda r: r.first.sent)
    return runs


def topologies_during(events: Sequence[Event], initial: Topology, a: float,
                      b: float) -> list[Topology]:
    """Every topology that may have been in force at some instant of [a, b]."""
    current = initial
    out: list[Topology] = []
    for ev in events:
        if ev.end < a:
            current = ev.topology
            continue
        if ev.start > b:
            break
        out.append(current)  # in force until ev.end, which is >= a
        current = ev.topology
    out.append(current)
    return out


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    intervals.sort()
    merged: list[tuple[float, float]] = []
    for s, e in intervals:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def majority_windows(events: Sequence[Event], initial: Topology,
                     until: float) -> list[tuple[float, float]]:
    """Stretches in which a connected majority certainly existed.

    A stretch starts at the end of the event that created it (when a heal is certainly in
    force) and ends at the start of the event that broke it.
    """
    windows: list[tuple[float, float]] = []
    start: float | None = -float("inf") if initial.majority() is not None else None
    for ev in events:
        has = ev.topology.majority() is not None
        if start is not None and not has:
            windows.append((start, ev.start))
            start = None
        elif start is None and has:
            start = ev.end
    if start is not None:
        windows.append((start, until))
    return windows


def timeline(observations: Sequence[Observation], events: Sequence[Event], a: float, b: float,
             *, origin: float, mark: float | None = None) -> str:
    """Every observation and event in [a, b], one line each, times in ms from ORIGIN."""
    rows: list[tuple[float, str]] = []
    for ev in events:
        if a <= ev.start <= b or a <= ev.end <= b:
            rows.append((ev.start, f"{(ev.start - origin) * 1000:10.1f} .. "
                                   f"{(ev.end - origin) * 1000:10.1f}  EVENT {ev.kind} "
                                   f"{ev.detail}  => {ev.topology.describe()}"))
    for o in observations:
        if o.received >= a and o.sent <= b:
            if o.ok:
                lease = "" if o.lease_ms is None else f" lease={o.lease_ms:.1f}ms"
                what = f"{o.role:9} term={o.term} goose={o.goose}{lease} pid={o.pid}"
            else:
                what = f"no answer: {o.error}"
            rows.append((o.sent, f"{(o.sent - origin) * 1000:10.1f} .. "
                                 f"{(o.received - origin) * 1000:10.1f}  {o.node:6} {what}"))
    rows.sort(key=lambda r: r[0])
    lines = [text for _, text in rows]
    if mark is not None:
        lines.insert(bisect.bisect_left([t for t, _ in rows], mark),
                     f"{(mark - origin) * 1000:10.1f}  ---- violation here ----")
    return "\n".join(lines)


# ---- the rules ----------------------------------------------------------------------------


def check_same_term(runs: Sequence[Run]) -> list[Violation]:
    out: list[Violation] = []
    first_of: dict[int, Run] = {}
    for run in runs:
        if run.term is None:
            continue
        seen = first_of.setdefault(run.term, run)
        if seen.node != run.node:
            out.append(Violation(
                rule="same-term", at=run.first.sent, nodes=(seen.node, run.node),
                message=f"{seen.node} and {run.node} both answered goose in term {run.term}"))
    return out


def check_span_overlap(runs: Sequence[Run]) -> list[Violation]:
    out: list[Violation] = []
    by_first = sorted(runs, key=lambda r: r.first.received)
    for i, a in enumerate(by_first):
        for b in by_first[i + 1:]:
            if b.first.received > a.last.sent:
                break
            if b.node != a.node and a.first.received <= b.last.sent:
                at = max(a.first.received, b.first.received)
                out.append(Violation(
                    rule="span-overlap", at=at, nodes=(a.node, b.node),
                    message=(f"{a.node} (term {a.term}) was goose certainly from its answer at "
                             f"{a.first.received:.4f} to one sent at {a.last.sent:.4f}, and "
                             f"{b.node} (term {b.term}) from {b.first.received:.4f} to "
                             f"{b.last.sent:.4f}: the spans must overlap")))
    return out


def check_lease_overlap(observations: Sequence[Observation], events: Sequence[Event],
                        config: CheckConfig) -> list[Violation]:
    geese = sorted((o for o in observations if o.role == "goose"), key=lambda o: o.sent)
    sent = [o.sent for o in geese]
    graceful: dict[str, list[float]] = {}
    for ev in events:
        if ev.kind == "terminate":
            for t in ev.targets:
                graceful.setdefault(t, []).append(ev.start)
    out: list[Violation] = []
    reported: set[tuple[str, str]] = set()
    for a in geese:
        if a.lease_ms is None:
            continue
        promise = a.sent + a.lease_ms / 1000
        if any(a.sent - config.graceful_exempt <= t <= promise
               for t in graceful.get(a.node, ())):
            continue
        lo = bisect.bisect_left(sent, a.received)
        hi = bisect.bisect_right(sent, promise)
        for b in geese[lo:hi]:
            if b.node == a.node or b.received > promise:
                continue
            key = (a.node, b.node)
            if key in reported:
                continue
            reported.add(key)
            out.append(Violation(
                rule="lease-overlap", at=b.sent, nodes=(a.node, b.node),
                message=(f"{a.node} answered goose (term {a.term}) with {a.lease_ms:.1f} ms of "
                         f"lease left, promising no other goose until {promise:.4f}; "
                         f"{b.node} answered goose (term {b.term}) within "
                         f"[{b.sent:.4f}, {b.received:.4f}]")))
    return out


def check_no_quorum(observations: Sequence[Observation], events: Sequence[Event],
                    initial: Topology) -> list[Violation]:
    out: list[Violation] = []
    last_reported: dict[str, float] = {}
    for o in observations:
        if o.role != "goose" or o.lease_ms is None or o.lease_total_ms is None:
            continue
        earliest_round = o.sent + (o.lease_ms - o.lease_total_ms) / 1000
        tops = topologies_during(events, initial, earliest_round, o.received)
        if any(t.reach(o.node) >= t.quorum for t in tops):
            continue
        if last_reported.get(o.node, -1.0) >= earliest_round:
            continue  # one report per stretch
        last_reported[o.node] = o.received
        out.append(Violation(
            rule="no-quorum", at=o.sent, nodes=(o.node,),
            message=(f"{o.node} answered goose (term {o.term}, lease {o.lease_ms:.1f} ms) "
                     f"but from {earliest_round:.4f} to {o.received:.4f} it could reach no "
                     f"quorum: {tops[-1].describe()}")))
    return out


def coverage(runs: Sequence[Run]) -> list[tuple[float, float]]:
    """When some node was seen as goose: each run covers [first.sent, last.received]."""
    return _merge([(r.first.sent, r.last.received) for r in runs])


def goose_gaps(runs: Sequence[Run], windows: Sequence[tuple[float, float]]
               ) -> list[tuple[float, float, bool, bool]]:
    """(start, end, starts_with_window, ended_by_a_goose) for goose-less stretches in WINDOWS."""
    cover = coverage(runs)
    gaps: list[tuple[float, float, bool, bool]] = []
    for w0, w1 in windows:
        t = w0
        at_start = True
        for c0, c1 in cover:
            if c1 <= t:
                continue
            if c0 >= w1:
                break
            if c0 > t:
                gaps.append((t, c0, at_start, True))
            at_start = False
            t = max(t, c1)
            if t >= w1:
                break
        if t < w1:
            gaps.append((t, w1, at_start, False))
    return gaps


def check_settle(observations: Sequence[Observation], events: Sequence[Event],
                 initial: Topology, config: CheckConfig, figures: Figures) -> list[Violation]:
    by_received = sorted((o for o in observations if o.ok), key=lambda o: o.received)
    received = [o.received for o in by_received]
    horizon = received[-1] if received else -float("inf")
    out: list[Violation] = []
    prev = initial
    for i, ev in enumerate(events):
        was, prev = prev, ev.topology
        if not ev.topology.healthy or was.healthy:
            continue
        nxt = events[i + 1].start if i + 1 < len(events) else float("inf")
        deadline = ev.end + config.settle_bound
        latest: dict[str, Observation] = {}
        agreed: float | None = None
        for o in by_received[bisect.bisect_left(received, ev.end):]:
            if o.received > min(deadline, nxt):
                break
            if o.sent < ev.end:
                continue
            latest[o.node] = o
            if set(latest) >= ev.topology.nodes:
                geese = [n for n, x in latest.items() if x.role == "goose"]
                if len(geese) == 1 and all(x.goose == geese[0] for x in latest.values()):
                    agreed = o.received
                    break
        if agreed is not None:
            figures.settles.append(agreed - ev.end)
        elif nxt < deadline or horizon < deadline:
            figures.unsettled += 1
        else:
            out.append(Violation(
                rule="settle", at=ev.end,
                message=(f"after '{ev.kind} {ev.detail}' healed everything, the nodes did not "
                         f"agree on one goose within {config.settle_bound:.1f} s")))
    return out


def check(observations: Sequence[Observation], events: Sequence[Event], initial: Topology,
          config: CheckConfig | None = None) -> Report:
    """Run every rule; figures are computed from the same history."""
    config = config or CheckConfig()
    observations = sorted(observations, key=lambda o: o.sent)
    events = sorted(events, key=lambda e: e.start)
    runs = goose_runs(observations)
    figures = Figures(faults=sum(1 for e in events if e.fault), observations=len(observations))
    for e in events:
        if e.fault:
            figures.fault_kinds[e.kind] = figures.fault_kinds.get(e.kind, 0) + 1
    violations = (check_same_term(runs) + check_span_overlap(runs)
                  + check_lease_overlap(observations, events, config)
                  + check_no_quorum(observations, events, initial))
    violations += check_settle(observations, events, initial, config, figures)

    until = max((o.received for o in observations), default=0.0)
    start = min((o.sent for o in observations), default=0.0)
    windows = [(max(a, start), b) for a, b in majority_windows(events, initial, until)
               if b > max(a, start)]
    figures.majority_time = sum(b - a for a, b in windows)
    started = {e.end for e in events if e.kind == "start"}
    for g0, g1, at_start, ended in goose_gaps(runs, windows):
        figures.gooseless_with_majority += g1 - g0
        if not ended:
            continue
        if at_start and g0 in started:
            figures.initial_elections.append(g1 - g0)
        elif at_start and g0 > start:
            figures.recoveries.append(g1 - g0)
            if g1 - g0 > config.recovery_bound:
                violations.append(Violation(
                    rule="recovery", at=g0,
                    message=(f"a connected majority existed from {g0:.4f} but no node answered "
                             f"goose until {g1:.4f} ({(g1 - g0) * 1000:.0f} ms > "
                             f"{config.recovery_bound * 1000:.0f} ms)")))
        elif not at_start:
            figures.failovers.append(g1 - g0)
            if config.failover_bound is not None and g1 - g0 > config.failover_bound:
                violations.append(Violation(
                    rule="failover", at=g0,
                    message=(f"the goose was lost at {g0:.4f} while a majority was connected; "
                             f"the next goose answered at {g1:.4f} ({(g1 - g0) * 1000:.0f} ms)")))

    # elections: new highest terms seen after each fault, until the next one
    terms = sorted((o.received, o.term) for o in observations if o.ok and o.term is not None)
    faults = [e for e in events if e.fault]
    high = 0
    idx = 0
    bounds = [f.start for f in faults] + [float("inf")]
    counts = [0] * len(faults)
    first_term: int | None = None
    for t, term in terms:
        if first_term is None:
            first_term = high = term
        while idx < len(faults) and t >= bounds[idx + 1]:
            idx += 1
        if term > high:
            if faults and t >= bounds[0]:
                counts[idx] += term - high
            high = term
    figures.elections = high - (first_term or 0)
    figures.elections_per_fault = counts
    for f, n in zip(faults, counts, strict=True):
        figures.elections_by_kind[f.kind] = figures.elections_by_kind.get(f.kind, 0) + n

    violations.sort(key=lambda v: v.at)
    timelines = [timeline(observations, events, v.at - config.context, v.at + config.context,
                          origin=start, mark=v.at) for v in violations]
    return Report(violations=violations, figures=figures, timelines=timelines)
