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

import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import redis

from ddg_testkit.acl import documented_acl, sentinel_acl
from ddg_testkit.certs import Pki
from ddg_testkit.hosts import CLIENT, REDIS, REPLICA, Bed, BedConfig, Impairment

from .checker import Event, Topology, summarize
from .harness import Harness, HarnessConfig, ScenarioFailed
from .netns import CutMode
from .observer import Observer

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


def bed_of(h: Harness) -> BedHarness:
    """H as the bed's harness (a bed scenario run on the iptables harness fails clearly)."""
    if not isinstance(h, BedHarness):
        raise ScenarioFailed("a bed scenario needs the multi-host bed")
    return h
