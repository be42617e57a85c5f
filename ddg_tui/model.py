"""What the console knows, derived only from what nodes and Redis answered, and when.

Pure: no Textual, no I/O, no clock. Every input carries its own timestamps (monotonic `at` for
durations, wall-clock `wall` for display), so the logic is unit-testable and deterministic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from ddg.client import NodeStatus, Role
from ddg.registry.records import Member, Membership

from .events import Event, Observation, Severity
from .failovers import Failover, GooseSpan, GooseTracker
from .fmt import natural_key

GOOSE, DUCK, CANDIDATE = Role.GOOSE, Role.DUCK, Role.CANDIDATE

ProcState = Literal["running", "killed", "stopped", "exited", "removed"]

# The term changes of several nodes within this long (a failover's ducks catching up) are one
# event.
TERM_FOLD_S = 0.5
ORDER_SLACK_S = 1.0  # s: see _event


@dataclass(kw_only=True, slots=True)
class _TermFold:
    """Term changes to TERM not yet logged: name -> (old term, role, goose it follows)."""

    term: int
    at: float
    wall: float
    nodes: dict[str, tuple[int, str, str | None]]


@dataclass(kw_only=True, slots=True)
class ProcInfo:
    """A process this console started."""

    pid: int | None
    state: ProcState = "running"
    since: float = 0.0
    code: int | None = None
    detail: str = ""





class ClusterModel:
    """Accumulates registry reads, poll observations and console actions into events and the
    state views.py shows."""

    def __init__(self, *, cluster: str, stale_after: float = 2.0, max_events: int = 2000) -> None:
        self.cluster = cluster
        self.stale_after = stale_after
        self.members: dict[str, Member] = {}
        self.version: int | None = None
        self.redis_ok: bool | None = None
        self.redis_error: str | None = None
        self.registry_problem: str | None = None
        self.latest: dict[str, Observation] = {}
        self.last_ok: dict[str, Observation] = {}
        self.first_failure: dict[str, float] = {}
        # Nodes whose loss of Redis was logged: only those are logged reaching it again (a node
        # just started answers before its first connection, which is no recovery).
        self.lost_redis: set[str] = set()
        self.procs: dict[str, ProcInfo] = {}
        self.events: deque[Event] = deque(maxlen=max_events)
        self.tracker = GooseTracker(self._event, self._loss_cause)
        self._seq = 0
        self._fold: _TermFold | None = None

    # ---- events ---------------------------------------------------------------------------

    def _event(self, wall: float, kind: str, text: str, severity: Severity = "info",
               node: str | None = None, nodes: tuple[str, ...] = ()) -> Event:
        if kind in ("goose", "failover") and self._fold is not None and self._fold.wall <= wall:
            # Term changes seen before a goose change go before its line, to keep the log in
            # time order; those seen after it fold on their own.
            self._flush_terms()
        self._seq += 1
        if self.events and 0 < self.events[-1].wall - wall <= ORDER_SLACK_S:
            # Seen just before the line above, logged just after it (an answer applied after
            # the operator's action, term changes folded for up to TERM_FOLD_S): the log keeps
            # time order, this line as of the one above. A larger step back is the wall clock
            # being set: shown as it is, not hidden until the clock catches up.
            wall = self.events[-1].wall
        ev = Event(seq=self._seq, wall=wall, kind=kind, text=text, severity=severity, node=node,
                   nodes=nodes)
        self.events.append(ev)
        return ev

    def events_after(self, seq: int) -> list[Event]:
        return [e for e in self.events if e.seq > seq]

    def note(self, wall: float, text: str, severity: Severity = "info", *, kind: str = "action",
             node: str | None = None) -> Event:
        """Log something the console did or saw that is not a poll result."""
        return self._event(wall, kind, text, severity, node)

    @property
    def last_seq(self) -> int:
        return self._seq

    def tick(self, at: float) -> list[Event]:
        """Log the folded term changes that waited long enough (call it now and then)."""
        if self._fold is not None and at - self._fold.at >= TERM_FOLD_S:
            return self._flush_terms()
        return []

    def _term_change(self, name: str, old: int, st: NodeStatus, obs: Observation) -> list[Event]:
        out: list[Event] = []
        if self._fold is not None and (self._fold.term != st.term
                                       or obs.at - self._fold.at >= TERM_FOLD_S):
            out += self._flush_terms()
        if self._fold is None:
            self._fold = _TermFold(term=st.term, at=obs.at, wall=obs.wall, nodes={})
        self._fold.wall = obs.wall
        first = self._fold.nodes.get(name)
        self._fold.nodes[name] = (old if first is None else first[0], str(st.role), st.goose)
        return out

    def _flush_terms(self) -> list[Event]:
        fold, self._fold = self._fold, None
        if fold is None:
            return []
        nodes = {n: v for n, v in fold.nodes.items() if v[0] != fold.term}
        if not nodes:
            return []
        olds = "/".join(str(t) for t in sorted({v[0] for v in nodes.values()}))
        if len(nodes) == 1:
            [(name, (old, role, goose))] = nodes.items()
            follows = f", follows {goose}" if goose else ""
            return [self._event(fold.wall, "term", f"{name}: term {old} → {fold.term} "
                                f"({role}{follows})", "info", name)]
        groups: dict[tuple[str, str | None], list[str]] = {}
        for name in sorted(nodes, key=natural_key):
            _, role, goose = nodes[name]
            groups.setdefault((role, goose if role != GOOSE else None), []).append(name)
        parts = []
        for (role, goose), names in groups.items():
            who = ", ".join(names)
            if role == DUCK and goose:
                parts.append(f"{who} follow{'s' if len(names) == 1 else ''} {goose}")
            else:
                parts.append(f"{who} {role}")
        return [self._event(fold.wall, "term",
                            f"term {olds} → {fold.term}: {'; '.join(parts)}", "info",
                            nodes=tuple(sorted(nodes, key=natural_key)))]

    # ---- registry -------------------------------------------------------------------------

    def apply_membership(self, m: Membership, *, at: float, wall: float) -> list[Event]:
        out: list[Event] = []
        if self.redis_ok is False:
            out.append(self._event(wall, "redis", "Redis reachable again", "good"))
        if self.registry_problem is not None:
            out.append(self._event(wall, "redis", "registry readable again", "good"))
        self.redis_ok, self.redis_error, self.registry_problem = True, None, None
        first = self.version is None
        old = self.members
        self.members = dict(m.members)
        self.version = m.version
        if first:
            names = ", ".join(sorted(m.members)) or "none"
            out.append(self._event(
                wall, "registry",
                f"registry of cluster {self.cluster}: {len(m.members)} members ({names}), "
                f"version {m.version}"))
        else:
            for name in sorted(m.members.keys() - old.keys()):
                out.append(self._event(
                    wall, "join", f"{name} joined at {m.members[name].address} "
                    f"(version {m.version})", "good", name))
            for name in sorted(old.keys() - m.members.keys()):
                out.append(self._event(
                    wall, "remove", f"{name} left the registry (version {m.version})",
                    "warning", name))
        for name in old.keys() - m.members.keys():
            self.latest.pop(name, None)
            self.last_ok.pop(name, None)
            self.first_failure.pop(name, None)
            self.lost_redis.discard(name)
            self.tracker.removed(name, at=at)
        out += self.tracker.update(None, at=at, wall=wall, members=self.members)
        return out

    def apply_registry_error(self, error: str, *, wall: float,
                             unreachable: bool = True) -> list[Event]:
        """UNREACHABLE: Redis does not answer; else it answers with data no node wrote."""
        if not unreachable:
            if self.registry_problem == error:
                return []
            self.registry_problem = error
            return [self._event(wall, "redis", f"registry problem: {error}; still polling the "
                                f"{len(self.members)} last known members", "error")]
        self.redis_error = error
        if self.redis_ok is False:
            return []
        self.redis_ok = False
        return [self._event(
            wall, "redis", f"Redis unreachable ({error}); still polling the "
            f"{len(self.members)} last known members", "error")]

    # ---- polls ----------------------------------------------------------------------------

    def apply_observation(self, obs: Observation) -> list[Event]:
        name = obs.name
        if name not in self.members:
            return []
        out: list[Event] = []
        prev = self.latest.get(name)
        prev_ok = self.last_ok.get(name)
        self.latest[name] = obs
        st = obs.reply.status
        proc = self.procs.get(name)
        quiet = proc is not None and proc.state in ("killed", "stopped", "removed")
        # Started here and not answered since: a failed poll is the start, not an outage.
        starting = proc is not None and proc.state == "running" and (
            prev_ok is None or prev_ok.at < proc.since)
        if st is not None:
            self.first_failure.pop(name, None)
            old = prev_ok.reply.status if prev_ok else None
            restarted = old is not None and _new_process(old, st, obs.at - prev_ok.at
                                                         if prev_ok else 0.0)
            if old is None or restarted:
                # A new goose is announced by the goose tracking below.
                if st.role != GOOSE and (restarted or starting):
                    out.append(self._event(obs.wall, "role", f"{name} started as {st.role} "
                                           f"(term {st.term}{_follows(st)})", "good", name))
                elif st.role != GOOSE and (prev is None or prev.reply.ok):
                    out.append(self._event(obs.wall, "role",
                                           f"{name} is {st.role} (term {st.term}"
                                           f"{_follows(st)})", "info", name))
                elif restarted or starting:
                    out.append(self._event(obs.wall, "role", f"{name} started (term "
                                           f"{st.term})", "good", name))
                elif prev is not None and not prev.reply.ok:
                    out.append(self._event(obs.wall, "reach",
                                           f"{name} answers again ({st.role}, term {st.term})",
                                           "good", name))
            else:
                if prev is not None and not prev.reply.ok:
                    out.append(self._event(obs.wall, "reach",
                                           f"{name} answers again ({st.role}, term {st.term})",
                                           "good", name))
                if old.role != st.role:
                    if st.role != GOOSE:  # a new goose is announced by the goose tracking
                        out.append(self._event(
                            obs.wall, "role",
                            f"{name}: {old.role} → {st.role} (term {st.term})", "info", name))
                elif old.term != st.term:
                    out += self._term_change(name, old.term, st, obs)
                if old.isolated_from != st.isolated_from:
                    if st.isolated_from:
                        out.append(self._event(
                            obs.wall, "partition",
                            f"{name} isolated from {', '.join(st.isolated_from)}",
                            "warning", name))
                    else:
                        out.append(self._event(obs.wall, "partition",
                                               f"{name} is no longer isolated", "good", name))
                if old.redis.connected != st.redis.connected:
                    if st.redis.connected:
                        if name in self.lost_redis:
                            self.lost_redis.discard(name)
                            out.append(self._event(obs.wall, "redis",
                                                   f"{name} reaches Redis again", "good", name))
                    else:
                        self.lost_redis.add(name)
                        out.append(self._event(
                            obs.wall, "redis",
                            f"{name} lost Redis: {st.redis.error or 'no detail'}", "warning",
                            name))
            self.last_ok[name] = obs
        else:
            self.first_failure.setdefault(name, obs.at)
            if (prev is None or prev.reply.ok) and not quiet and not starting:
                out.append(self._event(obs.wall, "reach",
                                       f"{name} does not answer: {obs.reply.error}",
                                       "warning", name))
        out += self.tracker.update(obs, at=obs.at, wall=obs.wall, members=self.members)
        return out

    # ---- console actions and processes ----------------------------------------------------

    def note_process(self, name: str, *, pid: int | None, state: ProcState, at: float,
                     code: int | None = None, detail: str = "") -> None:
        self.procs[name] = ProcInfo(pid=pid, state=state, since=at, code=code, detail=detail)

    # ---- goose tracking -------------------------------------------------------------------

    def geese(self) -> list[tuple[str, int]]:
        """Members whose latest answer says goose (and that this console has not killed or
        stopped since), highest term first. Two of them is a note; TWO GEESE needs proof
        (tracker.split)."""
        return self.tracker.geese()

    def live_goose(self) -> str | None:
        g = self.geese()
        return g[0][0] if g else None

    def _loss_cause(self, name: str) -> str:
        if name not in self.members:
            return f"{name} removed"
        obs = self.latest.get(name)
        if obs is None or obs.reply.status is None:
            return f"{name} unreachable"
        return f"{name} stepped down ({obs.reply.status.role})"

    # ---- goose tracking (failovers.py); what the header and rows show: views.py -----------

    @property
    def failovers(self) -> list[Failover]:
        return self.tracker.failovers

    @property
    def timeline(self) -> list[GooseSpan]:
        return self.tracker.timeline

    @property
    def goose(self) -> str | None:
        return self.tracker.goose

    @property
    def goose_term(self) -> int | None:
        return self.tracker.goose_term

    def mark_goose_loss(self, name: str, cause: str, *, at: float,
                        ends_role: bool = True) -> bool:
        """The console just did something (kill, stop, isolate, remove) to NAME: if NAME is
        the goose, the failover clock starts now. Returns whether it was the goose. ENDS_ROLE
        is False for an isolation: that goose keeps its role until its lease runs out."""
        return self.tracker.mark_loss(name, cause, at=at, ends_role=ends_role)

    def leaderless_ms(self, now: float) -> float | None:
        return self.tracker.leaderless_ms(now)

    def failover_durations(self) -> list[float]:
        return self.tracker.durations()



def _follows(st: NodeStatus) -> str:
    return f", follows {st.goose}" if st.goose and st.role != GOOSE else ""


def _new_process(old: NodeStatus, new: NodeStatus, between: float) -> bool:
    """NEW comes from another process than OLD (a restart), by its pid or its uptime."""
    if old.pid is not None and new.pid is not None and old.pid != new.pid:
        return True
    return (old.uptime_s is not None and new.uptime_s is not None
            and new.uptime_s + 1.0 < old.uptime_s + between)
