"""The `/status` contract: one typed answer, written by the node and read by every tool.

The node builds a NodeStatus from one snapshot of its core; the CLI, the console, the fault
observer and the benchmark parse the JSON with the same `from_json`. Parsing is strict about
what a reader relies on (name, role, term, the goose, types of every field present) and
lenient about fields a node of another version may lack (they take their defaults), so a
mixed-version cluster stays readable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ddg.election.roles import Role
from ddg.errors import DdgError


class StatusFormatError(DdgError, ValueError):
    """A /status answer that does not fit the contract."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisInfo:
    connected: bool = True
    error: str | None = None
    problem: str | None = None  # registry data the node will not use
    url: str | None = None  # masked: never a password


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageInfo:
    fsync_last_ms: float | None = None  # the last term/vote write
    fsync_max_ms: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class TimingInfo:
    """The timing the node runs on now: during a change, the joint combination of every
    timing in force (docs/design.md, "Timing is cluster state")."""

    heartbeat_ms: int = 0
    election_timeout_ms: tuple[int, int] = (0, 0)
    lease_ms: float = 0.0
    lease_wait_ms: float | None = None
    # The longest lease the node may hold now: lease_ms, or an earlier timing's for a moment
    # after a change (the round behind a `goose` answer was sent up to this long before it).
    longest_lease_ms: float | None = None
    epoch: int | None = None  # of the cluster's timing record it runs; None: none (flags)
    target: str | None = None  # where the cluster goes: "fast", or the values
    timings: tuple[str, ...] = ()  # in force: more than one while a change is in progress
    confirmed: bool = False  # this node confirmed the epoch
    waiting_for: tuple[str, ...] = ()  # members that have not confirmed it (in a change)
    source: str | None = None  # "cluster" (the record) or "flags" (a cluster without one)
    problem: str | None = None  # the registry's record is unusable

    @property
    def changing(self) -> bool:
        return len(self.timings) > 1


@dataclass(frozen=True, kw_only=True, slots=True)
class ClockInfo:
    """What peers' messages say of this node's clock rate (ddg/election/clockrate.py)."""

    contradicted: bool = False  # by a majority of the cluster: the node does not lead
    rate_bound: float = 0.0  # the clock-rate error the lease argument assumes, e.g. 0.111
    rates: dict[str, float] = field(default_factory=dict)  # its rate / each peer's


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeStatus:
    name: str
    role: Role
    term: int
    goose: str | None = None  # the goose this node follows or is
    cluster: str = ""
    address: str = ""  # the advertised URL
    pid: int | None = None
    version: str = ""  # of ddg-node
    node_id: str = ""
    cluster_id: str | None = None
    security: str | None = None  # "hmac" or "insecure-loopback"
    state: str = ""  # the core's state (pre-candidate, ...), or joining/starting
    # How long it has answered `role`, on its own clock at the moment it answered: when a new
    # goose took over, without the poller's delay.
    role_since_ms: float | None = None
    joining: str | None = None  # why it has not joined yet
    voted_for: str | None = None
    members: tuple[str, ...] = ()
    quorum: int | None = None
    membership_version: int | None = None
    heartbeat_age_ms: float | None = None  # ducks: since the goose was last heard
    lease_remaining_ms: float | None = None  # the goose only
    uptime_s: float | None = None
    elections_started: int = 0
    pre_votes_started: int = 0
    elections_won: int = 0
    step_downs: int = 0
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    hint_streams: int = 0  # the goose: ducks holding a crash-hint stream to it (ddg/node/hold.py)
    # How this node's messages go to each peer it has sent to: "stream" (the peer stream is
    # open), "http" (POSTs: a peer of 0.2.0) or "closed" (the next message opens a stream);
    # and the peers with a stream into this node. Empty from nodes of 0.2.0.
    peer_links: dict[str, str] = field(default_factory=dict)
    streams_in: tuple[str, ...] = ()
    redis: RedisInfo = field(default_factory=RedisInfo)
    storage: StorageInfo = field(default_factory=StorageInfo)
    http: dict[str, int] | None = None  # connection counters of the node's listener
    isolated_from: tuple[str, ...] = ()
    timing: TimingInfo = field(default_factory=TimingInfo)
    clock: ClockInfo = field(default_factory=ClockInfo)

    @property
    def is_goose(self) -> bool:
        return self.role == Role.GOOSE

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "cluster": self.cluster, "address": self.address,
            "pid": self.pid, "version": self.version, "node_id": self.node_id,
            "cluster_id": self.cluster_id, "security": self.security, "state": self.state,
            "joining": self.joining, "role": self.role.value,
            "role_since_ms": self.role_since_ms, "term": self.term,
            "goose": self.goose, "voted_for": self.voted_for, "members": list(self.members),
            "quorum": self.quorum, "membership_version": self.membership_version,
            "heartbeat_age_ms": self.heartbeat_age_ms,
            "lease_remaining_ms": self.lease_remaining_ms, "uptime_s": self.uptime_s,
            "elections_started": self.elections_started,
            "pre_votes_started": self.pre_votes_started, "elections_won": self.elections_won,
            "step_downs": self.step_downs, "heartbeats_sent": self.heartbeats_sent,
            "heartbeats_received": self.heartbeats_received,
            "hint_streams": self.hint_streams,
            "peer_links": dict(self.peer_links), "streams_in": list(self.streams_in),
            "redis": {"connected": self.redis.connected, "error": self.redis.error,
                      "problem": self.redis.problem, "url": self.redis.url},
            "storage": {"fsync_last_ms": self.storage.fsync_last_ms,
                        "fsync_max_ms": self.storage.fsync_max_ms},
            "http": self.http,
            "isolated_from": list(self.isolated_from),
            "timing": {"heartbeat_ms": self.timing.heartbeat_ms,
                       "election_timeout_ms": list(self.timing.election_timeout_ms),
                       "lease_ms": self.timing.lease_ms,
                       "lease_wait_ms": self.timing.lease_wait_ms,
                       "longest_lease_ms": self.timing.longest_lease_ms,
                       "epoch": self.timing.epoch, "target": self.timing.target,
                       "timings": list(self.timing.timings),
                       "confirmed": self.timing.confirmed,
                       "waiting_for": list(self.timing.waiting_for),
                       "source": self.timing.source, "problem": self.timing.problem},
            "clock": {"contradicted": self.clock.contradicted,
                      "rate_bound": self.clock.rate_bound, "rates": dict(self.clock.rates)},
        }

    @classmethod
    def from_json(cls, data: Any) -> NodeStatus:
        if not isinstance(data, dict):
            raise StatusFormatError(f"status must be a JSON object, got {type(data).__name__}")
        r = FieldReader(data)
        name = r.text("name")
        if not name:
            raise StatusFormatError("status has an empty name")
        role = r.raw("role")
        try:
            role = Role(role)
        except ValueError:
            raise StatusFormatError(f"unknown role {role!r}") from None
        redis = FieldReader(r.obj("redis"), "redis.")
        storage = FieldReader(r.obj("storage"), "storage.")
        timing = FieldReader(r.obj("timing"), "timing.")
        clock = FieldReader(r.obj("clock"), "clock.")
        window = timing.integers("election_timeout_ms")
        http = r.obj("http", optional=True)
        if http is not None and not all(isinstance(v, int) and not isinstance(v, bool)
                                        for v in http.values()):
            raise StatusFormatError("http counters must be integers")
        return cls(
            name=name, role=role, term=r.integer("term"), goose=r.opt_text("goose"),
            cluster=r.text("cluster", ""), address=r.text("address", ""),
            pid=r.opt_integer("pid"), version=r.text("version", ""), node_id=r.text("node_id", ""),
            cluster_id=r.opt_text("cluster_id"), security=r.opt_text("security"),
            state=r.text("state", ""), joining=r.opt_text("joining"),
            role_since_ms=r.number("role_since_ms"),
            voted_for=r.opt_text("voted_for"), members=r.texts("members"),
            quorum=r.opt_integer("quorum"), membership_version=r.opt_integer("membership_version"),
            heartbeat_age_ms=r.number("heartbeat_age_ms"),
            lease_remaining_ms=r.number("lease_remaining_ms"),
            uptime_s=r.number("uptime_s"),
            elections_started=r.integer("elections_started", 0),
            pre_votes_started=r.integer("pre_votes_started", 0),
            elections_won=r.integer("elections_won", 0), step_downs=r.integer("step_downs", 0),
            heartbeats_sent=r.integer("heartbeats_sent", 0),
            heartbeats_received=r.integer("heartbeats_received", 0),
            hint_streams=r.integer("hint_streams", 0),
            peer_links=r.texts_by_name("peer_links"), streams_in=r.texts("streams_in"),
            redis=RedisInfo(connected=redis.flag("connected", True),
                            error=redis.opt_text("error"), problem=redis.opt_text("problem"),
                            url=redis.opt_text("url")),
            storage=StorageInfo(fsync_last_ms=storage.number("fsync_last_ms"),
                                fsync_max_ms=storage.number("fsync_max_ms") or 0.0),
            http=http, isolated_from=r.texts("isolated_from"),
            timing=TimingInfo(heartbeat_ms=timing.integer("heartbeat_ms", 0),
                              election_timeout_ms=(window[0], window[1]) if len(window) == 2
                              else (0, 0),
                              lease_ms=timing.number("lease_ms") or 0.0,
                              lease_wait_ms=timing.number("lease_wait_ms"),
                              longest_lease_ms=timing.number("longest_lease_ms"),
                              epoch=timing.opt_integer("epoch"),
                              target=timing.opt_text("target"),
                              timings=timing.texts("timings", keep_order=True),
                              confirmed=timing.flag("confirmed", False),
                              waiting_for=timing.texts("waiting_for"),
                              source=timing.opt_text("source"),
                              problem=timing.opt_text("problem")),
            clock=ClockInfo(contradicted=clock.flag("contradicted", False),
                            rate_bound=clock.number("rate_bound") or 0.0,
                            rates=clock.numbers("rates")),
        )


_MISSING = object()


class FieldReader:
    """Typed access to one JSON object, naming the field in every error."""

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self.data, self.prefix = data, prefix

    def _fail(self, key: str, want: str, value: Any) -> StatusFormatError:
        return StatusFormatError(f"{self.prefix}{key} must be {want}, got {value!r:.60}")

    def raw(self, key: str) -> Any:
        if key not in self.data:
            raise StatusFormatError(f"status has no {self.prefix}{key}")
        return self.data[key]

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise StatusFormatError(f"status has no {self.prefix}{key}")
            return default
        return value

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null", value)
        return value

    def integer(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer or null", value)
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise self._fail(key, "a number or null", value)
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "a boolean", value)
        return value

    def texts(self, key: str, *, keep_order: bool = False) -> tuple[str, ...]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings", value)
        return tuple(value) if keep_order else tuple(sorted(value))

    def numbers(self, key: str) -> dict[str, float]:
        """An object of finite numbers by name."""
        value = self.data.get(key) or {}
        if not isinstance(value, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in value.values()):
            raise self._fail(key, "an object of numbers", value)
        return {str(k): float(v) for k, v in value.items()}

    def texts_by_name(self, key: str) -> dict[str, str]:
        """An object of strings by name."""
        value = self.data.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._fail(key, "an object of strings", value)
        return {str(k): v for k, v in value.items()}

    def integers(self, key: str) -> list[int]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self._fail(key, "a list of integers", value)
        return value

    def obj(self, key: str, *, optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None:
            return None if optional else {}
        if not isinstance(value, dict):
            raise self._fail(key, "an object", value)
        return value
