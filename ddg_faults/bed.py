"""Host-level faults on the multi-host bed (ddg_testkit.hosts): the same Harness, observer and
checker as the loopback scenarios, with a network namespace per node instead of iptables cuts.

A host whose link is down is recorded as cut from every node and from Redis, which is what it
is. The observer polls from the switch namespace, through the same links, so it cannot see a
host whose link is down: like any outside client, it judges only the answers it gets (an old
goose still answering `goose` in its old term once its link is back is caught all the same).

With Redis Sentinel on the bed (BedConfig.sentinels), the master's host is a fault of its own:
master_fault() SIGKILLs its redis-server, freezes it (SIGSTOP) or unplugs its link;
failed_over() waits for the replica's promotion and every node on it; replica_back() undoes
the fault (a restart, empty; SIGCONT; the link back) and waits until the sentinels have made
the old master the new one's replica, in sync.
"""

from __future__ import annotations

import random
import signal
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import redis
from prometheus_client.parser import text_string_to_metric_families

from ddg_testkit.acl import documented_acl, sentinel_acl
from ddg_testkit.certs import Pki
from ddg_testkit.hosts import CLIENT, REDIS, REPLICA, Bed, BedConfig, Impairment

from .checker import Event, Observation, Topology, summarize
from .harness import MAX_LAPSED, Harness, HarnessConfig, ScenarioFailed
from .netns import CutMode
from .observer import Observer

if TYPE_CHECKING:
    from .scenarios import RunConfig

# The link impairment: well under the 150-300 ms election timeout.
IMPAIRED = Impairment(delay_ms=5, jitter_ms=2, loss_pct=1)
ACL_USER, ACL_PASSWORD = "ddg", "bed-acl-pw"
DATA_HOSTS = {"a": REDIS, "b": REPLICA}  # SentinelSet's data servers on the bed
MasterFault = Literal["kill", "freeze", "link"]


def secured(base: Path, config: BedConfig) -> BedConfig:
    """CONFIG as an operator runs it across hosts: HTTPS with mutual TLS (a certificate per
    node for its name and its host's address, from a CA made in BASE; the observer's names no
    node) and the cluster secret, and Redis as the documented least-ACL user (on the sentinels
    too, allowed only to find the master)."""
    pki = Pki(base / "pki")
    bed = Bed(config)
    return replace(config, tls=pki.client("observer"),
                   node_tls=lambda name: pki.tls(name, bed.address(name)),
                   redis_args=("--user", ACL_USER, *documented_acl("*", ACL_PASSWORD)),
                   sentinel_args=("--user", ACL_USER, *sentinel_acl(ACL_PASSWORD)),
                   redis_userinfo=f"{ACL_USER}:{ACL_PASSWORD}")


class BedHarness(Harness):
    """A Harness whose nodes each live on a host of their own."""

    def __init__(self, config: HarnessConfig, bed: BedConfig | None = None) -> None:
        super().__init__(config)
        self.bed = Bed(bed or BedConfig(nodes=config.nodes, base_dir=config.base_dir))
        if self.bed.names != self.names:
            raise ValueError("the bed and the harness must have the same nodes")
        self.master_faults: dict[str, MasterFault] = {}  # data servers faulted, not yet back

    def start(self) -> None:
        first = [n for n in self.names if n not in self.late]
        self.bed.start(nodes=[])
        self._cluster = self.bed.cluster
        self.observer = Observer({n: self.bed.url(n) for n in self.names},
                                 interval=self.config.poll_interval, tls=self.bed.config.tls)
        self.observer.start()
        t0 = time.monotonic()
        for n in first:
            self.bed.add(n)
        self.wait_for(lambda: set(self.obs().since(t0)) >= set(first),
                      what="every node to answer /status", timeout=30)
        self._record("start", f"{len(first)} hosts", (), False, t0,
                     replace(self.topology, live=frozenset(first)))

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
        self.bed.close()

    def join(self, *nodes: str) -> Event:
        """Start late nodes on their hosts for the first time, all at once."""
        start = time.monotonic()
        for node in nodes:
            assert node in self.late and not self.cluster.owns(node), node
            self.bed.add(node)
        self.wait_for(lambda: set(nodes) <= set(self.obs().since(start)),
                      what=f"{','.join(nodes)} to answer after starting", timeout=20)
        return self._record("join", ",".join(nodes), nodes, False, start,
                            replace(self.topology, nodes=self.topology.nodes | set(nodes),
                                    live=self.topology.live | set(nodes)))

    def remove(self, node: str) -> Event:
        """`ddg-node remove NODE` from the client host; NODE sees it and exits 0 by itself.
        The cluster is one member smaller from then on."""
        start = time.monotonic()
        proc = self.bed.run(CLIENT, [sys.executable, "-m", "ddg", "remove", node,
                                     "--redis-url", self.bed.redis_url,
                                     "--cluster", self.cluster.cluster])
        if proc.returncode != 0:
            raise ScenarioFailed(f"ddg-node remove {node} failed: {proc.stderr.strip()}")
        code = self.cluster.wait(node, 15)
        if code != 0:
            raise ScenarioFailed(f"{node} did not exit 0 after its removal (exit {code})")
        self.cluster.forget(node)
        top = self.topology
        return self._record("remove", node, (node,), False, start,
                            replace(top, nodes=top.nodes - {node}, live=top.live - {node},
                                    cut=frozenset(p for p in top.cut if node not in p),
                                    redis_cut=top.redis_cut - {node}))

    def _net(self, kind: str, detail: str, targets: Sequence[str], topology: Topology,
             *, fault: bool = True, mode: CutMode = "drop",
             new: Iterable[tuple[str, str]] = ()) -> Event:
        raise ScenarioFailed(f"{kind}: cuts between node pairs need the iptables harness; "
                             "the bed's faults are whole links (link_down, impair)")

    # ---- host faults -------------------------------------------------------------------------

    def link_down(self, node: str) -> Event:
        start = time.monotonic()
        self.bed.net.link(self.bed.host_of(node), up=False)
        cut = {(node, m) for m in self.names if m != node}
        top = self.topology
        return self._record("link-down", node, (node,), True, start,
                            replace(top, cut=top.cut | cut | {(b, a) for a, b in cut},
                                    redis_cut=top.redis_cut | {node}))

    def link_up(self, node: str) -> Event:
        start = time.monotonic()
        self.bed.net.link(self.bed.host_of(node), up=True)
        down = {n for n in self.names if self.bed.host_of(n) in self.bed.net.down}
        top = self.topology
        cut = frozenset(p for p in top.cut if node not in p or (set(p) - {node}) <= down)
        return self._record("link-up", node, (node,), False, start,
                            replace(top, cut=cut, redis_cut=top.redis_cut - {node}))

    def impair(self, nodes: list[str], imp: Impairment) -> Event:
        start = time.monotonic()
        self.bed.net.impair_hosts([self.bed.host_of(n) for n in nodes], imp)
        return self._record("impair", f"{','.join(nodes)}: {imp.describe()}", nodes, True,
                            start, self.topology)

    def clear_impairments(self) -> Event:
        start = time.monotonic()
        hosts = sorted(self.bed.net.impaired)
        self.bed.net.impair_hosts(hosts, None)
        return self._record("clear-impair", ",".join(hosts), (), False, start, self.topology)

    def heal_network(self) -> Event:
        start = time.monotonic()
        for host in sorted(self.bed.net.down):
            self.bed.net.link(host, up=True)
        self.isolated.clear()
        return self._record("heal", "links", (), False, start,
                            replace(self.topology, cut=frozenset(), redis_cut=frozenset()))

    # ---- Sentinel faults -------------------------------------------------------------------

    def master_fault(self, how: MasterFault = "kill") -> Event:
        """SIGKILL the Redis master's process, SIGSTOP it, or unplug its host's link."""
        start = time.monotonic()
        sentinel = self.bed.sentinel
        master = sentinel.master()
        if master is None:
            raise ScenarioFailed("no sentinel names a master")
        if how == "kill":
            master.kill()
        elif how == "freeze":
            master.proc.send_signal(signal.SIGSTOP)
        else:
            self.bed.net.link(DATA_HOSTS[master.name], up=False)
        self.master_faults[master.name] = how
        return self._record(f"{how}-master", f"{master.name} at {master.host}", (), True,
                            start, replace(self.topology,
                                           redis="frozen" if how == "freeze" else "down"))

    def kill_master(self) -> Event:
        return self.master_fault("kill")

    def _on(self, server_host: str, port: int, nodes: Iterable[str]) -> bool:
        """Every one of NODES has a connection open on the Redis at SERVER_HOST:PORT (its
        CLIENT LIST, by the nodes' host addresses) and says on /status that it is connected."""
        try:
            with redis.Redis(host=server_host, port=port, socket_timeout=1.0,
                             socket_connect_timeout=1.0) as admin:
                clients = admin.client_list()
        except redis.RedisError:
            return False
        seen = {str(c.get("addr", "")).rsplit(":", 1)[0] for c in clients}
        names = list(nodes)
        if not {self.bed.address(n) for n in names} <= seen:
            return False
        return all(st is not None and st.redis.connected and st.redis.error is None
                   for st in self.cluster.statuses(names).values())

    def failed_over(self, killed: Event, *, timeout: float = 30.0) -> Event:
        """Wait until the sentinels name the replica master and every live node is on it;
        records the promotion and reconnection times (from KILLED's SIGKILL)."""
        sentinel = self.bed.sentinel
        old = killed.detail.split()[0]
        promoted: list[float] = []

        def named() -> bool:
            m = sentinel.master()
            if m is not None and m.name != old:
                promoted.append(time.monotonic())
                return True
            return False
        self.wait_for(named, what="the sentinels to promote the replica", timeout=timeout)
        master = sentinel.master()
        assert master is not None
        live = sorted(self.topology.live)
        self.wait_for(lambda: self._on(master.host, master.port, live),
                      what=f"every live node on the new master {master.name}", timeout=timeout)
        done = time.monotonic()
        self.redis_failovers.append((promoted[0] - killed.start, done - killed.start))
        return self._record("failover", f"{master.name} promoted; nodes on it after "
                            f"{(done - killed.start) * 1000:.0f} ms", (), False, killed.end,
                            replace(self.topology, redis="up"))

    def replica_back(self, *, timeout: float = 30.0) -> Event:
        """Undo the old master's fault: restart it (empty, on its host), SIGCONT it or plug
        its link back; the sentinels make it the new master's replica. Ends when it is in sync
        and a failover could happen again."""
        start = time.monotonic()
        sentinel = self.bed.sentinel
        back = sorted(self.master_faults.items())
        for name, how in back:
            server = sentinel.servers[name]
            if how == "kill":
                server.restart()
            elif how == "freeze":
                server.proc.send_signal(signal.SIGCONT)
            else:
                self.bed.net.link(DATA_HOSTS[name], up=True)
        self.master_faults.clear()
        self.wait_for(sentinel.ready, what="the old master back as a replica in sync",
                      timeout=timeout)
        return self._record("replica-back", ",".join(f"{n} ({h})" for n, h in back), (), False,
                            start, replace(self.topology, redis="up"))

    def failover_figures(self) -> str:
        promoted = [p for p, _ in self.redis_failovers]
        on_it = [r for _, r in self.redis_failovers]
        return (f"{len(on_it)} Sentinel failovers: master fault -> replica promoted "
                f"{summarize(promoted)}; -> every live node on it {summarize(on_it)}")

    def heal_all(self) -> None:
        if self.bed.net.impaired:
            self.clear_impairments()
        if self.master_faults:
            self.replica_back()
        super().heal_all()


def _bed(h: Harness) -> BedHarness:
    if not isinstance(h, BedHarness):
        raise ScenarioFailed("a bed scenario needs the multi-host bed")
    return h


# ---- scenarios ----------------------------------------------------------------------------


def link_failover(h: Harness, cfg: RunConfig) -> None:
    """The goose's host loses its link: the others elect; back, it rejoins as a duck."""
    b = _bed(h)
    old = b.settle()
    b.link_down(old)
    new = b.goose([n for n in b.names if n != old])
    b.link_up(old)
    b.settle()
    t0 = time.monotonic()

    def follows() -> Observation | None:
        o = b.obs().since(t0).get(old)
        return o if o is not None and o.role == "duck" and o.goose == new else None

    seen = b.wait_for(follows, what=f"{old} to answer duck, following {new}")
    b.notes.append(f"{old} lost its link, {new} took over; {old} rejoined as a duck "
                   f"(term {seen.term})")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scrape:
    """What one node's /metrics said: its heartbeat round trips and its CPU time so far."""

    rtt: dict[float, float]  # bucket upper bound (s) -> round trips at most that long
    failures: float  # election messages that got no usable answer
    cpu: float  # seconds


def scrape(url: str) -> Scrape | None:
    """URL's /metrics (plain HTTP only; None when unreadable)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    rtt: dict[float, float] = {}
    failures = cpu = 0.0
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "ddg_heartbeat_round_trip_seconds_bucket":
                le = float(smp.labels["le"])
                rtt[le] = rtt.get(le, 0.0) + smp.value
            elif smp.name == "ddg_peer_message_failures_total":
                failures += smp.value
            elif smp.name == "ddg_process_cpu_seconds_total":
                cpu = smp.value
    return Scrape(rtt=rtt, failures=failures, cpu=cpu)


def window_figures(b: BedHarness, goose: str, before: dict[str, Scrape | None],
                   seconds: float) -> str:
    """The goose's heartbeat round trips and every node's CPU over the window, from /metrics."""
    after = {n: scrape(b.bed.url(n)) for n in b.names}
    parts = []
    if (was := before.get(goose)) is not None and (now := after.get(goose)) is not None:
        hist = {le: n - was.rtt.get(le, 0.0) for le, n in sorted(now.rtt.items())}
        total = hist.get(float("inf"), 0.0)

        def within(q: float) -> str:
            le = next((le for le, n in hist.items() if n >= q * total), float("inf"))
            return f"<= {le * 1000:g} ms" if le != float("inf") else "> 1 s"

        slow = {le: total - n for le, n in hist.items() if le in (0.025, 0.05, 0.1, 0.25)}
        parts.append(f"{goose}'s heartbeat round trips: {total:.0f}, median {within(0.5)}, "
                     f"p99 {within(0.99)}, max {within(1.0)}; over 25/50/100/250 ms: "
                     + "/".join(f"{n:.0f}" for n in slow.values())
                     + f"; {now.failures - was.failures:.0f} messages unanswered")
    cpu = [f"{n} {100 * (a.cpu - w.cpu) / seconds:.0f}%" for n in b.names
           if (w := before.get(n)) is not None and (a := after.get(n)) is not None]
    if cpu:
        parts.append("node CPU " + ", ".join(cpu))
    return "; ".join(parts)


def impaired_quiet(h: Harness, cfg: RunConfig) -> None:
    """Every link delays and drops packets; for the window, nobody starts an election: no
    answer in a later term, no other node answering goose, the goose answering goose (but for
    its lease's brief lapses, at most MAX_LAPSED of its answers)."""
    b = _bed(h)
    goose = b.settle()
    b.impair(list(b.names), IMPAIRED)
    before = {n: scrape(b.bed.url(n)) for n in b.names}
    t0 = time.monotonic()
    seconds = cfg.seconds if cfg.seconds is not None else 60.0
    first = b.term_of(goose)
    b.hold(seconds)
    b.notes.append(window_figures(b, goose, before, time.monotonic() - t0))
    seen = [o for o in b.obs().history() if o.ok and o.sent >= t0]
    later = [o for o in seen if o.term != first]
    rivals = [o for o in seen if o.role == "goose" and o.node != goose]
    mine = [o for o in seen if o.node == goose]
    lapsed = [o for o in mine if o.role != "goose" and o.term == first]
    for what, o in (("spurious election", next(iter(later), None)),
                    ("another goose", next(iter(rivals), None))):
        if o is not None:
            b.fail(f"{what} under {IMPAIRED.describe()}: {o.node} answered {o.role} in term "
                   f"{o.term} (goose {goose} in term {first}) at +{o.sent - t0:.1f} s")
    if len(lapsed) > MAX_LAPSED * len(mine) or any(o.role != "duck" for o in lapsed):
        b.fail(f"goose {goose} answered otherwise in {len(lapsed)} of {len(mine)} answers: "
               + ", ".join(sorted({str(o.role) for o in lapsed})))
    b.notes.append(f"{seconds:g} s with every link at {IMPAIRED.describe()}: goose {goose} "
                   f"held term {first}; it answered duck (its lease lapsed) in {len(lapsed)} of "
                   f"{len(mine)} answers" + (f"; {len(later)} answers in a later term"
                                              if later else ""))
    b.clear_impairments()
    b.notes += b.bed.net.delayer_reports
    b.settle()


def sentinel_failover(h: Harness, cfg: RunConfig) -> None:
    """The Redis master SIGKILLed: Sentinel promotes the replica, every node reconnects to it
    by itself, the goose and the term do not move; then a join and a removal through it."""
    b = _bed(h)
    goose = b.settle()
    term = b.term_of(goose)
    t0 = time.monotonic()
    b.failed_over(b.kill_master())
    b.notes.append(b.failover_figures())
    t1 = time.monotonic()
    b.join(*b.late)
    b.members_converged()
    duck = next(n for n in sorted(b.topology.live) if n != goose and n not in b.late)
    b.remove(duck)
    b.members_converged()
    b.notes.append(f"after the promotion: {','.join(b.late)} joined and {duck} was removed "
                   f"(ddg-node remove) in {time.monotonic() - t1:.1f} s")
    b.settle()
    moved, lapses, _ = b.moved(goose, term, t0)
    if moved is not None:
        b.fail(f"the Redis failover or the membership change moved the election: {moved}")
    b.notes.append(f"{goose} stayed goose in term {term} throughout"
                   + (f" ({lapses} of its answers with its lease lapsed)" if lapses else ""))


def soak(h: Harness, cfg: RunConfig) -> None:
    """Random host-level faults, one at a time, each held and healed, until cfg.faults. With
    Sentinel on the bed, Redis master kills (failovers) are among them."""
    b = _bed(h)
    rng = random.Random(cfg.seed)
    target = cfg.faults or 300
    deadline = None if cfg.seconds is None else time.monotonic() + cfg.seconds
    kinds = ["link-goose", "link-duck", "impair-all", "impair-one", "freeze-goose",
             "freeze-duck", "kill-goose"]
    if b.bed.config.sentinels:
        kinds.append("master")
    masters = moves = lapses = 0
    # new terms from one step's fault to the next step's settled cluster, by the step's kind:
    # a baseline (faults of a duck or a link should cost none) for the Redis failovers
    runs: dict[str, list[int]] = {}  # kind -> [steps, new terms]

    def high() -> int:
        return max((o.term or 0 for o in b.obs().latest().values() if o.ok), default=0)
    last: tuple[str, int] | None = None
    while sum(e.fault for e in b.events) < target:
        if deadline is not None and time.monotonic() > deadline:
            break
        goose = b.settle()
        if last is not None:
            tally = runs.setdefault(last[0], [0, 0])
            tally[0] += 1
            tally[1] += high() - last[1]
        kind = rng.choice(kinds)
        last = (kind, high())
        duck = rng.choice([n for n in b.names if n != goose])
        victim = goose if kind.endswith("goose") else duck
        if kind.startswith("link"):
            b.link_down(victim)
            b.hold(rng.uniform(0.3, 1.5))
            b.link_up(victim)
        elif kind.startswith("impair"):
            imp = Impairment(delay_ms=rng.choice([2, 5, 10, 20]), jitter_ms=rng.choice([0, 2]),
                             loss_pct=rng.choice([0.5, 1, 2, 5]))
            b.impair(list(b.names) if kind == "impair-all" else [duck], imp)
            b.hold(rng.uniform(1.0, 3.0))
            b.clear_impairments()
        elif kind.startswith("freeze"):
            b.pause(victim)
            b.hold(rng.uniform(0.3, 1.2))
            b.resume(victim)
        elif kind == "master":
            term = b.term_of(goose)
            t0 = time.monotonic()
            how: MasterFault = rng.choice(["kill", "freeze", "link"])
            b.failed_over(b.master_fault(how))
            b.replica_back()
            moved, lapsed, _ = b.moved(goose, term, t0)
            masters, lapses = masters + 1, lapses + lapsed
            if moved is not None:  # a soak on a busy machine: noted, judged by the checker
                moves += 1
                b.notes.append(f"during a Redis failover ({how}-master): {moved}")
        else:
            b.kill(victim)
            b.hold(rng.uniform(0.1, 0.5))
            b.restart(victim)
    b.heal_all()
    if last is not None:
        tally = runs.setdefault(last[0], [0, 0])
        tally[0] += 1
        tally[1] += high() - last[1]
    b.notes.append("new terms per step, by kind (terms/steps): " + ", ".join(
        f"{k} {t}/{n}" for k, (n, t) in sorted(runs.items())))
    if b.redis_failovers:
        b.notes.append(b.failover_figures())
        b.notes.append(f"of {masters} Redis failovers, {moves} saw the term or the goose move "
                       f"(until the old master was back as a replica); {lapses} answers of the "
                       "goose with its lease lapsed")
