"""Election timing as cluster state: a node's Timing, the joint timing of a set (a change in
progress), the cluster's timing record and `reconcile`, which says what a running node does
with the record it reads (docs/design.md, "Timing is cluster state"). Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ddg.errors import ConfigError, RegistryDataError


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    """Election timing in milliseconds (docs/design.md, "Protocol").

    The lease is how long after sending a round that a quorum acknowledged the goose may answer
    `goose`; a node that heard a goose waits lease / drift margin before it may take over
    (the drift margin absorbs clock-rate differences). The goose steps down (check-quorum) only
    after election_min x drift margin without an acknowledged round, so a slow round makes it
    stop answering `goose` for a moment, never starts an election.
    """

    heartbeat_ms: int = 50
    election_timeout_min_ms: int = 150
    election_timeout_max_ms: int = 300
    # Default: a heartbeat plus a fifth of the minimum election timeout (80 ms by default),
    # at most election_min x drift_margin (the step-down time). A cluster's timing record
    # holds it resolved (resolved()), which may be a fraction of a millisecond.
    lease_ms: float | None = None
    drift_margin: float = 0.8

    def __post_init__(self) -> None:
        if not 1 <= self.heartbeat_ms <= 60_000:
            raise ConfigError(f"heartbeat must be 1-60000 ms, got {self.heartbeat_ms}")
        if not 1 <= self.election_timeout_min_ms <= self.election_timeout_max_ms <= 600_000:
            raise ConfigError(
                "election timeout must be MIN-MAX ms with 1 <= MIN <= MAX <= 600000, got "
                f"{self.election_timeout_min_ms}-{self.election_timeout_max_ms}"
            )
        if self.election_timeout_min_ms < 2 * self.heartbeat_ms:
            raise ConfigError(
                f"minimum election timeout ({self.election_timeout_min_ms} ms) must be at least "
                f"twice the heartbeat ({self.heartbeat_ms} ms), or ducks time out between beats"
            )
        if not math.isfinite(self.drift_margin) or not 0.1 <= self.drift_margin < 1.0:
            raise ConfigError(f"drift margin must be in [0.1, 1.0), got {self.drift_margin}")
        longest = self.election_timeout_min_ms * self.drift_margin
        if self.lease_ms is not None and not (math.isfinite(self.lease_ms)
                                              and self.heartbeat_ms < self.lease_ms <= longest):
            raise ConfigError(
                f"lease must be longer than the heartbeat ({self.heartbeat_ms} ms) and at most "
                f"the minimum election timeout x {self.drift_margin} ({longest:g} ms), got "
                f"{self.lease_ms}"
            )

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_ms / 1000

    @property
    def election_min(self) -> float:
        return self.election_timeout_min_ms / 1000

    @property
    def election_max(self) -> float:
        return self.election_timeout_max_ms / 1000

    @property
    def lease(self) -> float:
        if self.lease_ms is not None:
            return self.lease_ms / 1000
        return min(self.quorum_timeout, self.heartbeat + self.election_min / 5)

    @property
    def lease_wait(self) -> float:
        """How long after hearing a goose its lease may still run, on another node's clock."""
        return self.lease / self.drift_margin

    @property
    def quorum_timeout(self) -> float:
        """A goose with no round acknowledged this long after sending it steps down."""
        return self.election_min * self.drift_margin

    @property
    def hint_step(self) -> float:
        """Ducks that see their goose's connection drop campaign this far apart, in turn: more
        than a pre-vote round trip, so the next in turn has heard of the first's campaign."""
        return max(self.heartbeat / 5, 0.005)

    def resolved(self) -> Timing:
        """The same timing with its lease written out (in ms), as a cluster's record holds it:
        a node of another version that derived the lease otherwise still runs this one."""
        if self.lease_ms is not None:
            return self
        derived = min(self.election_timeout_min_ms * self.drift_margin,
                      self.heartbeat_ms + self.election_timeout_min_ms / 5)
        return replace(self, lease_ms=round(derived, 3))

    @property
    def label(self) -> str:
        """Its --timing name, or its values: 'heartbeat 15 ms, election 60-120 ms, lease 30 ms'."""
        mine = self.resolved()
        for name, preset in TIMINGS.items():
            if preset.resolved() == mine:
                return name
        margin = "" if self.drift_margin == 0.8 else f", margin {self.drift_margin:g}"
        return (f"heartbeat {self.heartbeat_ms} ms, election {self.election_timeout_min_ms}-"
                f"{self.election_timeout_max_ms} ms, lease {_ms(self.lease * 1000)} ms{margin}")

    def to_json(self) -> dict[str, Any]:
        """The record's form: every value the safety argument compares, the lease resolved."""
        t = self.resolved()
        assert t.lease_ms is not None
        return {"heartbeat_ms": t.heartbeat_ms,
                "election_timeout_ms": [t.election_timeout_min_ms, t.election_timeout_max_ms],
                "lease_ms": _number(t.lease_ms), "drift_margin": t.drift_margin}

    @classmethod
    def from_json(cls, data: Any) -> Timing:
        """Strictly: RegistryDataError for anything a node did not write."""
        if not isinstance(data, dict) or set(data) != {"heartbeat_ms", "election_timeout_ms",
                                                       "lease_ms", "drift_margin"}:
            raise RegistryDataError(f"timing {str(data)[:80]!r} is not a timing object")
        window = data["election_timeout_ms"]
        if not (isinstance(window, list) and len(window) == 2 and all(_is_int(v) for v in window)
                and _is_int(data["heartbeat_ms"]) and _is_number(data["lease_ms"])
                and _is_number(data["drift_margin"])):
            raise RegistryDataError(f"timing {str(data)[:80]!r} has a value of the wrong type")
        try:
            return cls(heartbeat_ms=data["heartbeat_ms"], election_timeout_min_ms=window[0],
                       election_timeout_max_ms=window[1], lease_ms=data["lease_ms"],
                       drift_margin=data["drift_margin"])
        except ConfigError as exc:
            raise RegistryDataError(f"timing {str(data)[:80]!r}: {exc}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _number(x: float) -> float | int:
    """80.0 as 80 (one JSON form for one value)."""
    return int(x) if float(x).is_integer() else x


def _ms(x: float) -> str:
    return f"{round(x, 3):g}"


# Named timings for --timing. "fast" is for a small cluster on a LAN whose round trips stay
# well under 10 ms: crash failover in tens of ms, for 3.3x the heartbeats (README figures; 25
# nodes sharing 2 cores could not elect with it).
TIMINGS: dict[str, Timing] = {
    "default": Timing(),
    "fast": Timing(heartbeat_ms=15, election_timeout_min_ms=60, election_timeout_max_ms=120,
                   lease_ms=30),
}


@dataclass(frozen=True, slots=True)
class JointTiming:
    """What a node runs on while its cluster's record names more than one timing (a change in
    progress): the conservative combination, safe beside a node on any of them
    (docs/design.md, "Timing is cluster state"). The names are Timing's, in seconds."""

    timings: tuple[Timing, ...]
    heartbeat: float
    election_min: float  # also the stickiness: the longest of the set
    election_max: float
    lease: float  # the shortest a goose may hold
    lease_wait: float  # the longest any of them may need waiting out
    quorum_timeout: float
    hint_step: float
    drift_margin: float

    @classmethod
    def of(cls, timings: Iterable[Timing]) -> JointTiming:
        ts = tuple(sorted({t.resolved() for t in timings}, key=_canonical))
        if not ts:
            raise ConfigError("a joint timing needs at least one timing")
        return cls(
            timings=ts,
            heartbeat=min(t.heartbeat for t in ts),
            election_min=max(t.election_min for t in ts),
            election_max=max(t.election_max for t in ts),
            lease=min(t.lease for t in ts),
            lease_wait=max(t.lease_wait for t in ts),
            quorum_timeout=max(t.quorum_timeout for t in ts),
            hint_step=min(t.hint_step for t in ts),
            drift_margin=min(t.drift_margin for t in ts),
        )

    @property
    def label(self) -> str:
        return " + ".join(t.label for t in self.timings)


def _canonical(t: Timing) -> str:
    return json.dumps(t.to_json(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TimingRecord:
    """A cluster's timing (`ddg:C:timing`): TIMINGS in force, TARGET where a change goes.

    One timing: the cluster runs it. More: a change is in progress and nodes run their joint
    combination until every member has confirmed this EPOCH, then the record becomes
    [TARGET] alone (finalized()). The epoch is never reused; see docs/design.md."""

    epoch: int
    timings: tuple[Timing, ...]
    target: Timing

    def __post_init__(self) -> None:
        ts = tuple(sorted({t.resolved() for t in self.timings}, key=_canonical))
        object.__setattr__(self, "timings", ts)
        object.__setattr__(self, "target", self.target.resolved())
        if not 1 <= self.epoch <= 2**53 - 1 or isinstance(self.epoch, bool):
            raise RegistryDataError(f"timing epoch {self.epoch!r} is not in 1..2^53-1")
        if self.target not in ts:
            raise RegistryDataError("the timing record's target is not among its timings")
        if len(ts) > MAX_JOINT:
            raise RegistryDataError(f"the timing record holds {len(ts)} timings; at most "
                                    f"{MAX_JOINT} are allowed")

    @classmethod
    def first(cls, timing: Timing) -> TimingRecord:
        return cls(1, (timing,), timing)

    @property
    def joint(self) -> JointTiming:
        return JointTiming.of(self.timings)

    @property
    def changing(self) -> bool:
        return len(self.timings) > 1

    def to_json(self) -> str:
        """Canonical: the same record is always the same string (confirmations compare it)."""
        return json.dumps({"epoch": self.epoch, "timings": [t.to_json() for t in self.timings],
                           "target": self.target.to_json()},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TimingRecord:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise RegistryDataError(f"timing record {text[:60]!r} is not JSON") from None
        if not isinstance(data, dict) or set(data) != {"epoch", "timings", "target"} \
                or not _is_int(data["epoch"]) or not isinstance(data["timings"], list):
            raise RegistryDataError(f"timing record {text[:60]!r} is not a timing record")
        if len(data["timings"]) > MAX_JOINT:
            raise RegistryDataError(f"the timing record holds {len(data['timings'])} timings; "
                                    f"at most {MAX_JOINT} are allowed")
        return cls(data["epoch"], tuple(Timing.from_json(t) for t in data["timings"]),
                   Timing.from_json(data["target"]))

    @property
    def fingerprint(self) -> str:
        """What a member writes to confirm this record: its epoch and a hash of the rest, so
        that a record of the same epoch with other timings (a history forked by a Redis that
        lost data) is not confirmed by mistake."""
        digest = hashlib.sha1(self.to_json().encode()).hexdigest()[:16]
        return f"{self.epoch}:{digest}"

    def shares(self, timings: Iterable[Timing]) -> bool:
        """Whether a node running TIMINGS is safe beside one running this record."""
        return not {t.resolved() for t in timings}.isdisjoint(self.timings)

    def changed_to(self, target: Timing) -> TimingRecord:
        """An operator's change: the new timing joins those in force (a change during a change
        still shares a timing with everything in use)."""
        return TimingRecord(self.epoch + 1, (*self.timings, target), target)

    def finalized(self) -> TimingRecord:
        """Every member runs the joint timing and confirmed it: the target alone."""
        return TimingRecord(self.epoch + 1, (self.target,), self.target)

    def merged(self, timings: Iterable[Timing], epoch: int) -> TimingRecord:
        """This record and TIMINGS (another history's, or a node's own) as one change in
        progress toward this record's target, newer than EPOCH."""
        return TimingRecord(max(self.epoch, epoch) + 1, (*self.timings, *timings), self.target)

    def describe(self) -> str:
        if not self.changing:
            return f"{self.target.label} (epoch {self.epoch})"
        others = [t.label for t in self.timings if t != self.target]
        return (f"changing to {self.target.label} from {', '.join(others)} "
                f"(epoch {self.epoch})")


MAX_JOINT = 8  # timings in one record: a change during a change during a change...


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What a node does with the record it read: run ADOPT, write WRITE (over what it read)."""

    adopt: TimingRecord | None = None
    write: TimingRecord | None = None
    why: str = ""


def reconcile(mine: TimingRecord | None, theirs: TimingRecord | None,
              running: Iterable[Timing]) -> Reconciled:
    """A running node's step, from its record (MINE; None: it runs on its flags, RUNNING),
    the registry's (THEIRS) and the timings it runs on. A newer record always shares a timing
    with the one a member runs (docs/design.md); one that does not, or another record of the
    same epoch, is a history forked by a Redis that lost data: the node writes both as one
    change, never runs a record disjoint from its own. An older record (or none) is Redis
    having lost data: the node puts its own back."""
    running = tuple(running)
    if theirs is None:
        return Reconciled(write=mine, why="the registry has no timing record") if mine \
            else Reconciled()
    if mine is not None and theirs.epoch < mine.epoch:
        return Reconciled(write=mine, why=f"the registry holds epoch {theirs.epoch}, older "
                                          f"than this node's {mine.epoch}")
    if mine is not None and theirs.epoch == mine.epoch:
        if theirs == mine:
            return Reconciled()
        merged = theirs.merged(mine.timings, mine.epoch)
        return Reconciled(adopt=merged, write=merged,
                          why=f"the registry holds another epoch {theirs.epoch}")
    if theirs.shares(running):
        return Reconciled(adopt=theirs)
    merged = theirs.merged(running, theirs.epoch)
    return Reconciled(adopt=merged, write=merged,
                      why=f"epoch {theirs.epoch} shares no timing with this node's")


def parse_timeout_range(text: str) -> tuple[int, int]:
    """Parse '150-300' (or a single '200') into a (min, max) pair of milliseconds."""
    parts = text.split("-")
    try:
        if len(parts) == 1:
            lo = hi = int(parts[0])
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"election timeout {text!r} must look like MIN-MAX in ms, e.g. 150-300"
        ) from None
    return lo, hi
