"""A node's Prometheus metrics, served on `GET /metrics` (docs/operations.md lists them).

What the node already knows (role, term, membership, lease, the core's counters, Redis) is read
at scrape time by a Collector, so it can never drift from /status. What only the shell sees
(peer message failures, heartbeat round trips, registry errors, fsync times) is counted as it
happens with prometheus_client's Counter and Histogram. Everything lives in this node's own
CollectorRegistry, not the global one: several nodes may share a process (the in-process tests)
and an application that embeds a node keeps its own metrics apart.

Label cardinality is bounded by the membership: a peer's series are made when it joins and
dropped when it leaves, and nothing is counted for a name that is not a member.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from ddg import __version__
from ddg.client.nodestatus import NodeStatus
from ddg.election.core import Counters, StepDown
from ddg.election.roles import Role
from ddg.errors import ClusterMismatch, RegistryAuthError, RegistryError, RegistryUnavailable
from ddg.ops.changes import Change

PEER_FAILURE_REASONS = ("timeout", "refused", "tls", "http_4xx", "http_5xx", "other")
REGISTRY_ERROR_KINDS = ("unavailable", "data", "auth", "mismatch")
# A heartbeat crosses a LAN in well under a millisecond; past the election timeout
# (150-300 ms by default) a round trip no longer keeps a lease.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A local SSD fsyncs in about a millisecond; more than a heartbeat (50 ms) delays votes.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def registry_error_kind(exc: RegistryError) -> str:
    """The `kind` label of ddg_registry_errors_total: what an operator has to fix."""
    if isinstance(exc, RegistryUnavailable):
        return "unavailable"
    if isinstance(exc, RegistryAuthError):
        return "auth"
    if isinstance(exc, ClusterMismatch):
        return "mismatch"
    return "data"


class NodeMetrics:
    """The metrics of the node called NAME. STATUS and COUNTERS are read at every scrape;
    `observe` listens to the node's change feed (ddg/ops/changes.py)."""

    def __init__(self, *, name: str, status: Callable[[], NodeStatus],
                 counters: Callable[[], Counters | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        # `_created` series double the series count for a timestamp nobody alerts on. (The
        # switch is process-wide; a process runs one node outside the tests.)
        disable_created_metrics()
        self.name = name
        self._status = status
        self._counters = counters
        self._clock = clock
        self._peers: frozenset[str] = frozenset()
        self._rtt: dict[str, Histogram] = {}  # each peer's heartbeat_rtt child
        # monotonic: a node starts without a goose (waiting to join counts: a cluster that
        # was never created must not look healthy)
        self._no_goose_since: float | None = clock()
        self._no_goose_total = 0.0
        self.registry = CollectorRegistry()
        self.peer_failures = Counter(
            "ddg_peer_message_failures", "Election messages to a peer that got no usable "
            "answer, by peer and reason.", ["peer", "reason"], registry=self.registry)
        self.heartbeat_rtt = Histogram(
            "ddg_heartbeat_round_trip_seconds", "From sending a heartbeat to a peer to reading "
            "its answer.", ["peer"], buckets=RTT_BUCKETS, registry=self.registry)
        self.registry_errors = Counter(
            "ddg_registry_errors", "Failed reads or changes of the Redis registry, by kind: "
            "unavailable (Redis down), data (keys no node wrote), auth (login refused), "
            "mismatch (another cluster's registry).", ["kind"], registry=self.registry)
        for kind in REGISTRY_ERROR_KINDS:
            self.registry_errors.labels(kind)
        self.fsync = Histogram(
            "ddg_fsync_duration_seconds", "Writing and fsyncing the term and vote, which "
            "must be on disk before a vote or a new term leaves the node.",
            buckets=FSYNC_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(self))
        ProcessCollector(namespace="ddg", registry=self.registry)  # ddg_process_start_time_...

    # ---- events, from the shell ----------------------------------------------------------

    def peer_failed(self, peer: str, reason: str) -> None:
        if peer in self._peers and reason in PEER_FAILURE_REASONS:
            self.peer_failures.labels(peer, reason).inc()

    def heartbeat_round_trip(self, peer: str, seconds: float) -> None:
        rtt = self._rtt.get(peer)  # (labels() per acknowledgement was a goose's hot path)
        if rtt is not None:
            rtt.observe(seconds)

    def registry_error(self, exc: RegistryError) -> None:
        self.registry_errors.labels(registry_error_kind(exc)).inc()

    def fsync_took(self, seconds: float) -> None:
        self.fsync.observe(seconds)

    def observe(self, change: Change) -> None:
        """A listener of the change feed: keeps the peer labels to the members, and times the
        stretches without a goose."""
        view = change.view
        peers = frozenset(view.members) - {self.name}
        for gone in self._peers - peers:
            for reason in PEER_FAILURE_REASONS:
                with contextlib.suppress(KeyError):
                    self.peer_failures.remove(gone, reason)
            with contextlib.suppress(KeyError):
                self.heartbeat_rtt.remove(gone)
            self._rtt.pop(gone, None)
        for new in peers - self._peers:  # zeros from the start, so rate() sees the first one
            for reason in PEER_FAILURE_REASONS:
                self.peer_failures.labels(new, reason)
            self._rtt[new] = self.heartbeat_rtt.labels(new)
        self._peers = peers
        if view.goose is None and self._no_goose_since is None:
            self._no_goose_since = change.at
        elif view.goose is not None and self._no_goose_since is not None:
            self._no_goose_total += change.at - self._no_goose_since
            self._no_goose_since = None

    # ---- exposition ----------------------------------------------------------------------

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and content type for a scrape with this Accept header (text or
        OpenMetrics)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def goose_gap(self, now: float) -> float:
        """How long this node has been without a goose (0 while it has one)."""
        return self._no_goose(now)[0]

    def _no_goose(self, now: float) -> tuple[float, float]:
        """(the current stretch without a goose, all of them) in seconds."""
        gap = 0.0 if self._no_goose_since is None else max(0.0, now - self._no_goose_since)
        return gap, self._no_goose_total + gap


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _StateCollector:
    """Reads the node at scrape time: gauges and the core's own counters."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        st = self.m._status()
        c = self.m._counters() or Counters()
        gap, no_goose_total = self.m._no_goose(self.m._clock())

        def seconds(ms: float | None) -> float | None:
            return None if ms is None else ms / 1000

        yield InfoMetricFamily("ddg_build", "The ddg-node build.", value={
            "version": __version__, "python": platform.python_version()})
        yield InfoMetricFamily("ddg_node", "Who this node is: join on it for the cluster label.",
                               value={"node": st.name, "cluster": st.cluster,
                                      "node_id": st.node_id, "security": st.security or ""})
        yield _gauge("ddg_is_goose", "1 while this node is the goose (a lease acked by a "
                     "quorum), else 0.", 1 if st.role is Role.GOOSE else 0)
        yield _gauge("ddg_term", "The election term this node is in.", st.term)
        yield _gauge("ddg_members", "Members in the membership this node elects on.",
                     len(st.members))
        yield _gauge("ddg_quorum", "Votes (or heartbeat acks) that make a majority.",
                     st.quorum or 0)
        yield _gauge("ddg_membership_version", "Version of the membership this node elects on.",
                     st.membership_version or 0)
        yield _gauge("ddg_lease_remaining_seconds", "How long the goose's lease still runs "
                     "(0 on any other node).", seconds(st.lease_remaining_ms) or 0.0)
        yield _gauge("ddg_goose_heartbeat_age_seconds", "Since a duck last heard its goose "
                     "(no sample while it follows none).", seconds(st.heartbeat_age_ms))
        yield _gauge("ddg_goose_gap_seconds", "How long this node has been neither the goose "
                     "nor following one (0 while it is or does).", gap)
        yield _counter("ddg_no_goose_seconds", "All the time this node was neither the goose "
                       "nor following one.", no_goose_total)
        yield _gauge("ddg_redis_connected", "1 while the Redis registry answers, else 0.",
                     1 if st.redis is not None and st.redis.connected else 0)
        yield _gauge("ddg_registry_problem", "1 while the registry answers with data this node "
                     "will not use (see /status), else 0.",
                     1 if st.redis is not None and st.redis.problem else 0)
        yield _counter("ddg_pre_votes_started", "Pre-votes this node started (its election "
                       "timer ran out).", c.pre_votes_started)
        yield _counter("ddg_pre_votes_won", "Pre-votes a quorum granted.", c.pre_votes_won)
        yield _counter("ddg_elections_started", "Elections (term increases) this node started.",
                       c.elections_started)
        yield _counter("ddg_elections_won", "Elections this node won.", c.elections_won)
        yield _gauge("ddg_clock_contradicted", "1 while a majority of the cluster's clocks "
                     "contradict this node's clock rate beyond the bound the lease assumes "
                     "(it does not lead), else 0.", 1 if st.clock.contradicted else 0)
        rate = GaugeMetricFamily("ddg_clock_rate_ratio", "This node's clock rate relative to "
                                 "a peer's, measured from their messages (1: the same rate).",
                                 labels=["peer"])
        for peer, value in sorted(st.clock.rates.items()):
            rate.add_metric([peer], value)
        yield rate
        steps = CounterMetricFamily("ddg_step_downs", "Times this node stopped being the goose, "
                                    "by reason.", labels=["reason"])
        for reason in StepDown:
            steps.add_metric([reason.value], c.step_downs_by.get(reason, 0))
        yield steps
        yield _counter("ddg_heartbeats_sent", "Heartbeat rounds this node sent as the goose.",
                       c.heartbeats_sent)
        yield _counter("ddg_heartbeats_received", "Heartbeats this node accepted from a goose.",
                       c.heartbeats_received)
