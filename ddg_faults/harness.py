"""One scenario's world: a LocalCluster in the private namespace, its firewall, the observer
and the log of every fault injected (with the topology it leaves), for the checker.

Two faults leave the topology as it was, on purpose: a closed listener (the node's own fault
hook, /admin/fault/close-listener: new connections to it are refused, its own connections and
those already open go on, so every link can still carry messages) and the way a link is cut
(drop, reset or icmp: the checker only needs to know that it is cut)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import redis

from ddg.election.timing import TIMINGS, TimingRecord
from ddg.registry.records import TimingState
from ddg.registry.redisconn import RedisOptions, sync_client
from ddg.registry.registry import Registry
from ddg_testkit import LocalCluster, faketime, wait_until

from .checker import CheckConfig, Event, Observation, Report, Topology, check
from .netns import CutMode, Firewall, PortPool, abort_connections_to, reserve_fixed_ports
from .observer import Observer

T = TypeVar("T")


# The goose's lease (80 ms by default) outlasts its next round (50 ms later) by 30 ms: a round
# whose quorum of acks takes longer (slow links, a busy machine) leaves it answering `duck` for
# a moment, in its term, with no one else answering `goose` (the safe answer, by design:
# docs/design.md). Above this share of its answers it is no longer "a moment".
MAX_LAPSED = 0.05


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """What a scenario is asked to do beyond its fixed shape (python -m ddg_faults flags)."""

    seconds: float | None = None  # chaos duration
    steps: int | None = None  # chaos step count (wins over seconds)
    seed: int = 1
    nodes: int | None = None  # override the scenario's cluster size
    faults: int | None = None  # bed-soak: stop after this many faults


class ScenarioFailed(AssertionError):
    """An expectation of the scenario itself did not hold (not a checker violation)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HarnessConfig:
    nodes: int = 5
    # The last LATE names are not started with the others: a scenario join()s them later,
    # with fresh data dirs (nodes that never saw the cluster being created).
    late: int = 0
    poll_interval: float = 0.02
    wait_timeout: float = 5.0  # for conditions a healthy cluster meets in well under a second
    base_dir: Path | None = None
    # Self-test only: every node in a cluster of its own, so each is goose of term 1: a real
    # split brain that the checker must report.
    split_brain: bool = False
    node_args: tuple[str, ...] = ()  # more ddg-node flags, e.g. ("--timing", "fast")
    # Nodes run on a clock at this rate x real time (libfaketime), e.g. (("n1", 0.5),).
    clock_rates: tuple[tuple[str, float], ...] = ()
    check: CheckConfig = field(default_factory=CheckConfig)


@dataclass(kw_only=True, slots=True)
class Outcome:
    scenario: str
    report: Report
    failures: list[str]
    crashes: list[str]
    seconds: float
    # fast kill-restarts: (SIGKILL -> new process spawned, SIGKILL -> new process answering)
    respawns: list[tuple[float, float]] = field(default_factory=list)
    # Redis master SIGKILLs under Sentinel: (-> replica promoted, -> every live node on it)
    redis_failovers: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the scenario measured
    timing_changes: int = 0  # `ddg-node config set` changes the scenario made
    timing_finalized: int = 0  # of those, completed (every member ran the target alone)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.failures and not self.crashes


class Harness:
    def __init__(self, config: HarnessConfig) -> None:
        self.config = config
        self._cluster: LocalCluster | None = None  # made by start(), on a port of the namespace
        self.names = [f"n{i}" for i in range(1, config.nodes + 1)]
        unknown = {n for n, _ in config.clock_rates} - set(self.names)
        if unknown:
            raise ValueError(f"clock rates for {', '.join(sorted(unknown))}, which are not "
                             f"nodes here ({self.names[0]}-{self.names[-1]})")
        self.late = self.names[len(self.names) - config.late:] if config.late else []
        self.ports: dict[str, int] = {}
        self.events: list[Event] = []
        self.failures: list[str] = []
        self.crashes: list[str] = []
        self.notes: list[str] = []
        self.isolated: set[str] = set()  # cut off from everyone by isolate()
        self.cut_modes: dict[tuple[str, str], CutMode] = {}  # how each cut pair is cut
        # close_listener(): node -> when its listener is due to reopen (monotonic)
        self.closed_listeners: dict[str, float] = {}
        self.respawns: list[tuple[float, float]] = []
        self.redis_failovers: list[tuple[float, float]] = []  # see Outcome
        self.timing_changes = 0
        self.timing_finalized = 0
        # The members: the late nodes only once they join (a quorum is of the members).
        self.initial = Topology(nodes=frozenset(n for n in self.names if n not in self.late),
                                live=frozenset())
        self.topology = self.initial
        self.firewall: Firewall | None = None
        self.observer: Observer | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def cluster(self) -> LocalCluster:
        if self._cluster is None:
            raise RuntimeError("the harness has not started")
        return self._cluster

    def start(self) -> None:
        reserve_fixed_ports()
        pool = PortPool()
        redis_port = pool.take()
        self._cluster = LocalCluster(base_dir=self.config.base_dir, log_level="INFO",
                                     redis_port=redis_port, allow_fault_injection=True)
        self._cluster.start_redis()
        self.firewall = Firewall(redis_port=redis_port)
        ports = self.ports = {n: pool.take() for n in self.names}
        for n in self.names:
            self.firewall.add(n, ports[n])
        self.firewall.install()
        rates = dict(self.config.clock_rates)
        self.observer = Observer({n: f"http://127.0.0.1:{ports[n]}" for n in self.names},
                                 interval=self.config.poll_interval, clock_rates=rates)
        self.observer.start()
        t0 = time.monotonic()
        first = [n for n in self.names if n not in self.late]
        split = self.config.split_brain
        for n in first:
            self.cluster.add(n, port=ports[n], preexec_fn=self.firewall.preexec(n),
                             extra_args=self.config.node_args,
                             cluster=f"split-{n}" if split else None,
                             bootstrap=True if split else None,
                             env=faketime.env(rates[n]) if n in rates else None)
        self.wait_for(lambda: set(self.obs().since(t0)) >= set(first),
                      what="every node to answer /status", timeout=30)
        self._record("start", f"{len(first)} nodes", (), False, t0,
                     replace(self.topology, live=frozenset(first)))

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
        if self._cluster is not None:
            self._cluster.close()

    def obs(self) -> Observer:
        assert self.observer is not None
        return self.observer

    def fw(self) -> Firewall:
        assert self.firewall is not None
        return self.firewall

    def _record(self, kind: str, detail: str, targets: Sequence[str], fault: bool,
                start: float, topology: Topology) -> Event:
        ev = Event(start=start, end=time.monotonic(), kind=kind, detail=detail,
                   targets=tuple(targets), topology=topology, fault=fault)
        self.events.append(ev)
        self.topology = topology
        return ev

    def _net(self, kind: str, detail: str, targets: Sequence[str], topology: Topology,
             *, fault: bool = True, mode: CutMode = "drop",
             new: Iterable[tuple[str, str]] = ()) -> Event:
        """Apply TOPOLOGY's cuts; the pairs NEW are cut the MODE way (the kind says which when
        it is not drop), the others stay as they were cut."""
        start = time.monotonic()
        modes = {p: m for p, m in self.cut_modes.items() if p in topology.cut}
        modes.update((p, mode) for p in new)
        self.fw().apply(cut=topology.cut, redis_cut=topology.redis_cut, modes=modes)
        self.cut_modes = modes
        if mode != "drop":
            kind = f"{kind}-{mode}"
        return self._record(kind, detail, targets, fault, start, topology)

    # ---- network faults ----------------------------------------------------------------------

    def cut(self, pairs: Iterable[tuple[str, str]], *, both_ways: bool = True,
            kind: str = "cut", mode: CutMode = "drop") -> Event:
        pairs = list(pairs)
        new = set(pairs) | ({(b, a) for a, b in pairs} if both_ways else set())
        arrow = "<>" if both_ways else ">"
        detail = ",".join(f"{a}{arrow}{b}" for a, b in pairs)
        return self._net(kind, detail, sorted({x for p in pairs for x in p}),
                         replace(self.topology, cut=self.topology.cut | frozenset(new)),
                         mode=mode, new=new)

    def isolate(self, *nodes: str, mode: CutMode = "drop") -> Event:
        self.isolated |= set(nodes)
        pairs = {(a, b) for a in nodes for b in self.names if b != a}
        new = pairs | {(b, a) for a, b in pairs}
        return self._net("isolate", ",".join(nodes), nodes,
                         replace(self.topology, cut=self.topology.cut | frozenset(new)),
                         mode=mode, new=new)

    def hinted_cut(self, node: str) -> Event:
        """NODE (the goose) cut off from everyone by TCP resets, and every connection to it
        aborted, its ducks' crash-hint streams among them: they read an end without a goodbye,
        as if its process had died, and campaign at once. A false hint: it runs on."""
        event = self.isolate(node, mode="reset")
        abort_connections_to(self.ports[node])
        return event

    def partition(self, groups: Sequence[Iterable[str]], *, mode: CutMode = "drop") -> Event:
        sets = [set(g) for g in groups]
        rest = set(self.names) - set().union(*sets)
        if rest:
            sets.append(rest)
        cut = {(a, b) for i, g in enumerate(sets) for j, h in enumerate(sets) if i != j
               for a in g for b in h}
        detail = " | ".join(",".join(sorted(g)) for g in sets)
        return self._net("partition", detail, self.names,
                         replace(self.topology, cut=self.topology.cut | frozenset(cut)),
                         mode=mode, new=cut)

    def cut_redis(self, *nodes: str) -> Event:
        return self._net("cut-redis", ",".join(nodes), nodes,
                         replace(self.topology,
                                 redis_cut=self.topology.redis_cut | frozenset(nodes)))

    def reconnect(self, node: str) -> Event:
        """MIT's connect(i): NODE's links come back, except to nodes still isolated."""
        self.isolated.discard(node)
        new = frozenset(p for p in self.topology.cut
                        if node not in p or (set(p) - {node}) <= self.isolated)
        return self._net("reconnect", node, (node,), replace(self.topology, cut=new),
                         fault=False)

    def heal_network(self) -> Event:
        self.isolated.clear()
        return self._net("heal", "network", (), replace(self.topology, cut=frozenset(),
                                                        redis_cut=frozenset()), fault=False)

    # ---- process faults ----------------------------------------------------------------------

    def kill(self, node: str) -> Event:
        start = time.monotonic()
        self.closed_listeners.pop(node, None)
        self.cluster.kill(node)
        self.cluster.wait(node, 10)
        return self._record("kill", node, (node,), True, start,
                            replace(self.topology, live=self.topology.live - {node}))

    def terminate(self, node: str) -> Event:
        """SIGTERM: a goose hands over first. Waits for the exit."""
        start = time.monotonic()
        self.closed_listeners.pop(node, None)
        self.cluster.terminate(node)
        code = self.cluster.wait(node, 10)
        if code is None:
            self.fail(f"{node} did not exit within 10 s of SIGTERM")
            self.cluster.kill(node)
            self.cluster.wait(node, 5)
        elif code != 0:
            self.fail(f"{node} exited with code {code} after SIGTERM")
        return self._record("terminate", node, (node,), True, start,
                            replace(self.topology, live=self.topology.live - {node}))

    def join(self, *nodes: str) -> Event:
        """Start late nodes for the first time (fresh data dirs), all at once."""
        start = time.monotonic()
        for node in nodes:
            assert node in self.late and not self.cluster.owns(node), node
            self.cluster.add(node, port=self.ports[node], preexec_fn=self.fw().preexec(node),
                             extra_args=self.config.node_args)
        self.wait_for(lambda: set(nodes) <= set(self.obs().since(start)),
                      what=f"{','.join(nodes)} to answer after starting", timeout=20)
        return self._record("join", ",".join(nodes), nodes, False, start,
                            replace(self.topology, nodes=self.topology.nodes | set(nodes),
                                    live=self.topology.live | set(nodes)))

    def members_converged(self, nodes: Iterable[str] | None = None) -> None:
        """Wait until every live node's membership is exactly NODES (default: the live ones)."""
        want = sorted(self.topology.live if nodes is None else nodes)

        def done() -> bool:
            sts = self.cluster.statuses(self.topology.live)
            return all(s is not None and list(s.members) == want for s in sts.values())
        self.wait_for(done, what=f"every node to see members {','.join(want)}", timeout=15)

    def restart(self, node: str) -> Event:
        """Same name, port and data dir; the event ends when the new process answers."""
        start = time.monotonic()
        self.cluster.restart(node)
        self.wait_for(lambda: node in self.obs().since(start),
                      what=f"{node} to answer after its restart", timeout=20)
        return self._record("restart", node, (node,), False, start,
                            replace(self.topology, live=self.topology.live | {node}))

    def kill_restart(self, node: str) -> Event:
        """SIGKILL NODE and start it again at once (same name, port, data dir), as fast as the
        supervisor can: a "kill" fault, then a "restart" from the spawn until it answers."""
        start = time.monotonic()
        self.closed_listeners.pop(node, None)
        self.cluster.kill_restart(node)
        spawned = time.monotonic()
        self._record("kill-restart", f"{node}: SIGKILL, restarted at once", (node,), True, start,
                     replace(self.topology, live=self.topology.live - {node}))
        self.wait_for(lambda: node in self.obs().since(spawned),
                      what=f"{node} to answer after its restart", timeout=20)
        first = self.obs().since(spawned)[node]
        self.respawns.append((spawned - start, first.received - start))
        return self._record("restart", node, (node,), False, spawned,
                            replace(self.topology, live=self.topology.live | {node}))

    def close_listener(self, node: str, seconds: float) -> Event:
        """NODE closes its listening socket for SECONDS (its own fault hook), running on:
        new connections to it are refused, its own and those already open go on."""
        start = time.monotonic()
        result = self.cluster.admin(node, "/admin/fault/close-listener",
                                    {"reopen_after_s": seconds})
        if not result.ok:
            raise ScenarioFailed(f"{node} refused to close its listener: {result.message}")
        self.closed_listeners[node] = time.monotonic() + seconds
        return self._record("close-listener", f"{node} for {seconds:g} s", (node,), True, start,
                            self.topology)

    def _accepts(self, node: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ports[node]), timeout=0.5):
                return True
        except OSError:
            return False

    def listener_reopened(self, node: str) -> Event:
        """Wait until NODE accepts new connections again (its reopen timer ran)."""
        start = time.monotonic()
        due = self.closed_listeners.get(node, start)
        self.wait_for(lambda: self._accepts(node), what=f"{node} to listen again",
                      timeout=max(0.0, due - start) + self.config.wait_timeout)
        self.closed_listeners.pop(node, None)
        return self._record("reopen-listener", node, (node,), False, start, self.topology)

    def pause(self, node: str) -> Event:
        start = time.monotonic()
        self.cluster.pause(node)
        return self._record("pause", node, (node,), True, start,
                            replace(self.topology, live=self.topology.live - {node}))

    def resume(self, node: str) -> Event:
        start = time.monotonic()
        self.cluster.resume(node)
        return self._record("resume", node, (node,), False, start,
                            replace(self.topology, live=self.topology.live | {node}))

    # ---- Redis faults ------------------------------------------------------------------------

    def freeze_redis(self) -> Event:
        start = time.monotonic()
        self.cluster.pause_redis()
        return self._record("freeze-redis", "SIGSTOP", (), True, start,
                            replace(self.topology, redis="frozen"))

    def thaw_redis(self) -> Event:
        start = time.monotonic()
        self.cluster.resume_redis()
        return self._record("thaw-redis", "SIGCONT", (), False, start,
                            replace(self.topology, redis="up"))

    def kill_redis(self) -> Event:
        start = time.monotonic()
        self.cluster.kill_redis()
        return self._record("kill-redis", "SIGKILL", (), True, start,
                            replace(self.topology, redis="down"))

    def _redis_client(self) -> redis.Redis:
        assert self.cluster.redis_url is not None
        return sync_client(RedisOptions(url=self.cluster.redis_url), timeout=2.0)

    def flush_redis(self) -> Event:
        """FLUSHALL: Redis up, its data gone."""
        start = time.monotonic()
        with self._redis_client() as client:
            client.flushall()
        return self._record("flush-redis", "FLUSHALL", (), True, start, self.topology)

    def snapshot_redis(self) -> dict[bytes, bytes]:
        """The cluster's keys as DUMPs: an "RDB" to go back to with rollback_redis()."""
        with self._redis_client() as client:
            return {k: client.dump(k) for k in client.keys("ddg:*")}

    def rollback_redis(self, snapshot: dict[bytes, bytes]) -> Event:
        """Redis restored from an old RDB: older membership, older version."""
        start = time.monotonic()
        with self._redis_client() as client:
            pipe = client.pipeline(transaction=True)
            pipe.flushall()
            for key, dumped in snapshot.items():
                pipe.restore(key, 0, dumped)
            pipe.execute()
        return self._record("rollback-redis", f"{len(snapshot)} keys", (), True, start,
                            self.topology)

    def start_redis_empty(self) -> Event:
        start = time.monotonic()
        self.cluster.start_redis()
        return self._record("start-redis", f"empty, port {self.cluster.redis_port}", (), False,
                            start, replace(self.topology, redis="up"))

    # ---- the operator: the cluster's timing ------------------------------------------------

    def _registry(self) -> Registry:
        return Registry(RedisOptions(url=self.cluster.redis_url or ""),
                        self.cluster.config.cluster, timeout=2.0)

    def timing(self) -> TimingState:
        async def read() -> TimingState:
            registry = self._registry()
            try:
                return await registry.read_timing()
            finally:
                await registry.close()
        return asyncio.run(read())

    def set_timing(self, name: str) -> Event:
        """`ddg-node config set --timing NAME`, as the command does it (not a fault)."""
        start = time.monotonic()
        target = TIMINGS[name]

        async def change() -> tuple[TimingRecord, TimingRecord | None]:
            registry = self._registry()
            try:
                return await registry.change_timing(lambda _: target)
            finally:
                await registry.close()
        before, changed = asyncio.run(change())
        if changed is None:
            detail = f"{name}: the target already (epoch {before.epoch})"
        else:
            self.timing_changes += 1
            detail = f"-> {name} as epoch {changed.epoch}"
        return self._record("timing", detail, (), False, start, self.topology)

    def timing_done(self, name: str, timeout: float = 15.0) -> tuple[TimingRecord, float]:
        """Wait until the record names NAME alone and every live node runs it, confirmed.
        Returns the record and when every live node was first seen running it."""
        want = TIMINGS[name].resolved()
        adopted: list[float] = []

        def done() -> TimingRecord | None:
            rec = self.timing().record
            if rec is None or rec.changing or rec.target != want:
                return None
            sts = self.cluster.statuses(self.topology.live)
            if not adopted and all(s is not None and s.timing.epoch == rec.epoch
                                   for s in sts.values()):
                adopted.append(time.monotonic())
            if all(s is not None and s.timing.epoch == rec.epoch and s.timing.confirmed
                   for s in sts.values()):
                return rec
            return None
        rec = self.wait_for(done, what=f"every live node to run timing {name} alone",
                            timeout=timeout)
        self.timing_finalized += 1
        return rec, adopted[0] if adopted else time.monotonic()

    def goose_answering(self, at: float) -> bool:
        """Whether some node's latest answer sent before AT said goose (a busy machine may
        have let the lease lapse, or the goose step down, just before)."""
        latest: dict[str, str | None] = {}
        for o in self.obs().history():
            if o.ok and o.sent < at:
                latest[o.node] = o.role
        return "goose" in latest.values()

    def elections_between(self, start: float, end: float) -> str | None:
        """The first answer sent in [START, END] in a term above any answered before START,
        described (None: no election began in between)."""
        hist = [o for o in self.obs().history() if o.ok and o.term is not None]
        before = max((o.term or 0 for o in hist if o.received < start), default=0)
        for o in hist:
            if start <= o.sent <= end and (o.term or 0) > before:
                return (f"{o.node} answered {o.role} in term {o.term} (term {before} before) at "
                        f"+{(o.sent - start) * 1000:.0f} ms")
        return None

    # ---- heal everything -----------------------------------------------------------------

    def heal_all(self) -> None:
        """Undo every fault in force: links, pauses, dead nodes, Redis. Then wait to settle."""
        top = self.topology
        for node in sorted(self.closed_listeners):
            self.listener_reopened(node)
        if top.cut or top.redis_cut:
            self.heal_network()
        for node in sorted(top.nodes - top.live):
            if self.cluster.running(node):
                self.resume(node)
            else:
                self.restart(node)
        if top.redis == "frozen":
            self.thaw_redis()
        elif top.redis == "down":
            self.start_redis_empty()
        self.settle()

    # ---- observations ----------------------------------------------------------------------

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def wait_for(self, cond: Callable[[], T | None], *, what: str,
                 timeout: float | None = None) -> T:
        try:
            return wait_until(cond, timeout=timeout or self.config.wait_timeout, what=what,
                              interval=0.01)
        except TimeoutError as exc:
            raise ScenarioFailed(str(exc)) from None

    def geese(self, since: float, among: Iterable[str] | None = None) -> dict[str, Observation]:
        names = set(self.names if among is None else among)
        return {n: o for n, o in self.obs().since(since).items()
                if n in names and o.role == "goose"}

    def goose(self, among: Iterable[str] | None = None, *, timeout: float | None = None,
              exclude: Iterable[str] = ()) -> str:
        """Wait until exactly one node of AMONG answers goose (answers sent from now on)."""
        names = set(self.names if among is None else among) - set(exclude)
        t0 = time.monotonic()

        def one() -> str | None:
            latest = self.obs().since(t0)
            geese = [n for n in names if n in latest and latest[n].role == "goose"]
            return geese[0] if len(geese) == 1 else None

        return self.wait_for(one, what=f"one goose among {','.join(sorted(names))}",
                             timeout=timeout)

    def current_goose(self) -> str:
        return self.goose(self.topology.live)

    def settle(self, timeout: float | None = None) -> str:
        """Every live node answers, one says goose and all name it."""
        t0 = time.monotonic()
        live = set(self.topology.live)

        def agreed() -> str | None:
            latest = self.obs().since(t0)
            if not live <= set(latest):
                return None
            geese = [n for n in live if latest[n].role == "goose"]
            if len(geese) == 1 and all(latest[n].goose == geese[0] for n in live):
                return geese[0]
            return None

        return self.wait_for(agreed, what="the cluster to agree on one goose", timeout=timeout)

    def expect_no_goose(self, among: Iterable[str], seconds: float) -> None:
        """MIT's checkNoLeader: for SECONDS (after a lease of grace) nobody in AMONG is goose."""
        t0 = time.monotonic()
        time.sleep(seconds)
        grace = t0 + 0.3
        names = set(among)
        bad = [o for o in self.obs().history()
               if o.node in names and o.role == "goose" and o.sent >= grace]
        if bad:
            self.fail(f"{bad[0].node} answered goose (term {bad[0].term}) at "
                      f"+{(bad[0].sent - t0) * 1000:.0f} ms without a quorum")

    def expect_goose_unchanged(self, goose: str, seconds: float) -> None:
        """For SECONDS, no election: no answer in another term or naming another goose, the
        goose answering goose but for its lease's brief lapses (at most MAX_LAPSED of its
        answers; a loaded machine, not the fault, causes those)."""
        term = self.term_of(goose)
        t0 = time.monotonic()
        time.sleep(seconds)
        moved, lapses, answers = self.moved(goose, term, t0)
        if moved is not None:
            self.fail(f"expected {goose} to stay goose: {moved}")
        if lapses > MAX_LAPSED * answers:
            self.fail(f"expected {goose} to stay goose: its lease lapsed in {lapses} of its "
                      f"{answers} answers")
        if lapses:
            self.notes.append(f"{goose} stayed goose; its lease lapsed in {lapses} of its "
                              f"{answers} answers")

    def term_of(self, node: str) -> int | None:
        """NODE's term in its latest answer (a failed poll has none)."""
        return next((o.term for o in reversed(self.obs().history()) if o.node == node and o.ok),
                    None)

    def moved(self, goose: str, term: int | None, since: float
              ) -> tuple[str | None, int, int]:
        """Since SINCE, did an answer name another term than TERM or another goose than GOOSE?
        Returns the first such answer, described (None: none did); how many answers of GOOSE
        said it had no goose: its lease lapsed (a stall of a lease or more), which moves
        neither the goose nor the term; and how many answers GOOSE gave. A late node's answers
        in an older term (it has not heard from the goose yet) move nothing either."""
        hist = [o for o in self.obs().history() if o.ok and o.sent >= since
                and not (o.node in self.late and (o.term or 0) < (term or 0))]
        moved = [o for o in hist if o.term != term or o.goose not in (goose, None)
                 or (o.role == "goose" and o.node != goose)]
        lapses = sum(1 for o in hist if o.node == goose and o.goose is None)
        answers = sum(1 for o in hist if o.node == goose)
        if not moved:
            return None, lapses, answers
        o = moved[0]
        return (f"{o.node} answered {o.role} in term {o.term} naming goose {o.goose} (was "
                f"{goose} in term {term}) at +{(o.sent - since) * 1000:.0f} ms"), lapses, answers

    def hold(self, seconds: float) -> None:
        """Let a fault last: sleeping here is the fault's duration, not synchronisation."""
        time.sleep(seconds)

    def check_processes(self) -> None:
        """Every node exit the harness did not cause (kill, terminate) is a crash."""
        if self._cluster is None:
            return
        for ex in self._cluster.reap():
            if not ex.expected:
                self.crashes.append(f"{ex.name} exited with code {ex.code} unexpectedly\n"
                                    + self._cluster.log_tail(ex.name, 25))

    def log_problems(self) -> list[str]:
        found: list[str] = []
        if self._cluster is None:
            return found
        for node in self.names:
            path = self._cluster.log_path(node)
            if not path.exists():
                continue
            text = path.read_text(errors="replace")
            for marker in ("Traceback", "CRITICAL", "unexpected error"):
                if marker in text:
                    idx = text.index(marker)
                    found.append(f"{node}: {marker} in log:\n{text[max(0, idx - 400):idx + 1200]}")
                    break
        return found

    def finish(self, scenario: str, started: float) -> Outcome:
        self.check_processes()
        self.obs().stop()
        history = self.obs().history()
        report = check(history, self.events, self.initial, self.config.check)
        crashes = self.crashes + self.log_problems()
        return Outcome(scenario=scenario, report=report, failures=list(self.failures),
                       crashes=crashes, seconds=time.monotonic() - started,
                       respawns=list(self.respawns),
                       redis_failovers=list(self.redis_failovers), notes=list(self.notes),
                       timing_changes=self.timing_changes,
                       timing_finalized=self.timing_finalized)
