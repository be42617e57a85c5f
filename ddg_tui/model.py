"""What the console knows, derived only from what nodes and Redis answered, and when.

Pure: no Textual, no I/O, no clock. Every input carries its own timestamps (monotonic `at` for
durations, wall-clock `wall` for display), so the logic is unit-testable and deterministic.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ddg.client import AdminResult, Reply
from ddg.core import quorum_of
from ddg.registry import Member, Membership
from ddg.status import NodeStatus, StatusFormatError

__all__ = ["AdminResult", "NodeStatus", "Reply", "StatusFormatError"]  # one contract, re-exported

GOOSE = "goose"
DUCK = "duck"
CANDIDATE = "candidate"
ROLES = (GOOSE, DUCK, CANDIDATE)

Severity = Literal["info", "good", "warning", "error"]
ProcState = Literal["running", "killed", "stopped", "exited", "removed"]




@dataclass(frozen=True, kw_only=True, slots=True)
class Observation:
    """A reply from node NAME: request sent at `sent`, answer received at `at` (monotonic)."""

    name: str
    reply: Reply
    sent: float
    at: float
    wall: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    seq: int
    wall: float
    kind: str
    text: str
    severity: Severity = "info"
    node: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Failover:
    """A goose change measured by the console: from the first sign of loss to the new goose."""

    old: str
    new: str
    term: int
    cause: str
    duration_ms: float
    wall: float


@dataclass(frozen=True, kw_only=True, slots=True)
class GooseSpan:
    """An entry of the goose timeline: NAME was goose in TERM from `wall` on."""

    name: str
    term: int
    wall: float


@dataclass(kw_only=True, slots=True)
class ProcInfo:
    """A process this console started."""

    pid: int | None
    state: ProcState = "running"
    since: float = 0.0
    code: int | None = None
    detail: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class RowView:
    """What one table row shows. `role` also takes the console-side states below."""

    name: str
    address: str
    role: str  # goose | duck | candidate | unreachable | killed | stopped | exited | pending
    term: int | None = None
    follows: str | None = None
    heartbeat_age_ms: float | None = None
    lease_remaining_ms: float | None = None
    latency_ms: float | None = None
    uptime_s: float | None = None
    pid: int | None = None
    pid_owned: bool = False
    state: str = ""
    level: Severity = "info"
    stale: bool = False  # term/follows are the last known values, not a current answer
    isolated_from: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class HeaderView:
    cluster: str
    redis_ok: bool | None
    redis_error: str | None
    members: int
    version: int | None
    quorum: int
    goose: str | None
    term: int | None
    max_term: int | None
    geese: tuple[tuple[str, int], ...]
    answering: int
    leaderless_ms: float | None
    last_goose: str | None
    banner: str | None = None
    banner_level: Severity = "error"
    security: str | None = None  # the nodes' mode: hmac, insecure-loopback or mixed


@dataclass(kw_only=True, slots=True)
class _Loss:
    at: float
    cause: str
    # Started by a console action (kill, stop, isolate, remove): only a goose change ends it,
    # since e.g. an isolated goose rightly keeps answering goose until its lease runs out.
    sticky: bool = False


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return fmt_uptime(ms / 1000)


def fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort n2 before n10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))




class ClusterModel:
    """Accumulates registry reads, poll observations and console actions into views and events."""

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
        self.procs: dict[str, ProcInfo] = {}
        self.events: deque[Event] = deque(maxlen=max_events)
        self.failovers: list[Failover] = []
        self.timeline: list[GooseSpan] = []
        self.goose: str | None = None  # the last goose seen (kept while there is none)
        self.goose_term: int | None = None
        self._seq = 0
        self._loss: _Loss | None = None
        self._leaderless_since: float | None = None
        self._two_geese = False

    # ---- events ---------------------------------------------------------------------------

    def _event(self, wall: float, kind: str, text: str, severity: Severity = "info",
               node: str | None = None) -> Event:
        self._seq += 1
        ev = Event(seq=self._seq, wall=wall, kind=kind, text=text, severity=severity, node=node)
        self.events.append(ev)
        return ev

    def events_after(self, seq: int) -> list[Event]:
        return [e for e in self.events if e.seq > seq]

    def note(self, wall: float, text: str, severity: Severity = "info", *, kind: str = "action",
             node: str | None = None) -> Event:
        """Log something the console did or saw that is not a poll result."""
        return self._event(wall, kind, text, severity, node)

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
            if name == self.goose and self._loss is None:
                self._loss = _Loss(at=at, cause=f"{name} removed")
        out += self._update_goose(at, wall)
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
        if st is not None:
            self.first_failure.pop(name, None)
            if prev is not None and not prev.reply.ok:
                out.append(self._event(obs.wall, "reach",
                                       f"{name} answers again ({st.role}, term {st.term})",
                                       "good", name))
            old = prev_ok.reply.status if prev_ok else None
            if old is None:
                # A new goose is announced by the goose tracking below.
                if (prev is None or prev.reply.ok) and st.role != GOOSE:
                    follows = f", follows {st.goose}" if st.goose and st.role != GOOSE else ""
                    out.append(self._event(obs.wall, "role",
                                           f"{name} is {st.role} (term {st.term}{follows})",
                                           "info", name))
            else:
                if old.role != st.role:
                    if st.role != GOOSE:  # a new goose is announced by the goose tracking
                        out.append(self._event(
                            obs.wall, "role",
                            f"{name}: {old.role} → {st.role} (term {st.term})", "info", name))
                elif old.term != st.term:
                    follows = f", follows {st.goose}" if st.goose else ""
                    out.append(self._event(
                        obs.wall, "term", f"{name}: term {old.term} → {st.term} "
                        f"({st.role}{follows})", "info", name))
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
                        out.append(self._event(obs.wall, "redis",
                                               f"{name} reaches Redis again", "good", name))
                    else:
                        out.append(self._event(
                            obs.wall, "redis",
                            f"{name} lost Redis: {st.redis.error or 'no detail'}", "warning",
                            name))
            self.last_ok[name] = obs
        else:
            self.first_failure.setdefault(name, obs.at)
            if (prev is None or prev.reply.ok) and not quiet:
                out.append(self._event(obs.wall, "reach",
                                       f"{name} does not answer: {obs.reply.error}",
                                       "warning", name))
        out += self._update_goose(obs.at, obs.wall, obs)
        return out

    # ---- console actions and processes ----------------------------------------------------

    def note_process(self, name: str, *, pid: int | None, state: ProcState, at: float,
                     code: int | None = None, detail: str = "") -> None:
        self.procs[name] = ProcInfo(pid=pid, state=state, since=at, code=code, detail=detail)

    def mark_goose_loss(self, name: str, cause: str, *, at: float) -> bool:
        """The console just did something (kill, stop, isolate, remove) to NAME.

        If NAME is the goose, the failover clock starts now. Returns whether it was the goose.
        """
        if name == self.goose and self._loss is None and self.live_goose() == name:
            self._loss = _Loss(at=at, cause=cause, sticky=True)
            return True
        return False

    # ---- goose tracking -------------------------------------------------------------------

    def geese(self) -> list[tuple[str, int]]:
        """Members whose latest answer says goose, highest term first."""
        out = []
        for name in self.members:
            obs = self.latest.get(name)
            if obs is not None and obs.reply.status is not None \
                    and obs.reply.status.role == GOOSE:
                out.append((name, obs.reply.status.term))
        out.sort(key=lambda g: (-g[1], g[0]))
        return out

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

    def _update_goose(self, at: float, wall: float,
                      obs: Observation | None = None) -> list[Event]:
        out: list[Event] = []
        geese = self.geese()
        if len(geese) >= 2:
            if not self._two_geese:
                self._two_geese = True
                who = " and ".join(f"{n} (term {t})" for n, t in geese)
                out.append(self._event(wall, "split", f"TWO GEESE: {who} both answer goose",
                                       "error"))
        elif self._two_geese:
            self._two_geese = False
            out.append(self._event(wall, "split", "only one node answers goose again", "good"))

        if not geese:
            if self._leaderless_since is None:
                self._leaderless_since = at
            if self.goose is not None and self._loss is None:
                self._loss = _Loss(at=at, cause=self._loss_cause(self.goose))
                out.append(self._event(wall, "goose",
                                       f"no goose: {self._loss.cause} (was goose in term "
                                       f"{self.goose_term})", "warning"))
            return out

        name, term = geese[0]
        if self.goose is None:
            waited = ""
            if self._leaderless_since is not None and at > self._leaderless_since:
                waited = f" after {fmt_ms((at - self._leaderless_since) * 1000)} without a goose"
            out.append(self._event(wall, "goose", f"{name} is goose (term {term}){waited}",
                                   "good", name))
            self.timeline.append(GooseSpan(name=name, term=term, wall=wall))
        elif (name, term) != (self.goose, self.goose_term):
            start = self._loss.at if self._loss is not None else at
            cause = self._loss.cause if self._loss is not None \
                else self._loss_cause(self.goose)
            ms = max(0.0, (at - start) * 1000)
            fo = Failover(old=self.goose, new=name, term=term, cause=cause, duration_ms=ms,
                          wall=wall)
            self.failovers.append(fo)
            self.timeline.append(GooseSpan(name=name, term=term, wall=wall))
            out.append(self._event(wall, "failover",
                                   f"{cause} → {name} goose after {fmt_ms(ms)} (term {term})",
                                   "good", name))
        elif self._loss is not None:
            # Same goose, same term: it never lost the role. A reply to a request sent before
            # the console acted says nothing about afterwards, so it does not end the loss.
            if self._loss.sticky or obs is None or obs.name != name \
                    or obs.sent < self._loss.at:
                return out
            ms = (at - self._loss.at) * 1000
            out.append(self._event(
                wall, "goose", f"{name} still goose in term {term} after {fmt_ms(ms)} "
                f"({self._loss.cause}); no failover", "info", name))
        self.goose, self.goose_term = name, term
        self._loss = None
        self._leaderless_since = None
        return out

    # ---- views ----------------------------------------------------------------------------

    def leaderless_ms(self, now: float) -> float | None:
        if self._leaderless_since is None or self.geese():
            return None
        return (now - self._leaderless_since) * 1000

    def header(self, now: float) -> HeaderView:
        geese = tuple(self.geese())
        answering = sum(1 for n in self.members
                        if (o := self.latest.get(n)) is not None and o.reply.ok)
        terms = [o.reply.status.term for o in self.last_ok.values()
                 if o.reply.status is not None]
        leaderless = self.leaderless_ms(now)
        banner: str | None = None
        level: Severity = "error"
        if len(geese) >= 2:
            who = ", ".join(f"{n} (term {t})" for n, t in geese)
            banner = f"TWO GEESE — {who} answer goose at once"
        elif not geese and self.members:
            since = f" for {fmt_ms(leaderless)}" if leaderless is not None else ""
            last = ""
            if self.goose is not None:
                cause = f"; {self._loss.cause}" if self._loss is not None else ""
                last = f" (last: {self.goose}, term {self.goose_term}{cause})"
            banner = f"NO GOOSE{since}{last} — election in progress or no quorum"
        election_trouble = banner is not None
        if self.redis_ok is False:
            redis_banner = (f"REDIS UNREACHABLE ({self.redis_error}) — polling the "
                            f"{len(self.members)} last known members")
            banner = f"{banner}   ·   {redis_banner}" if banner else redis_banner
            level = level if election_trouble else "warning"
        elif self.registry_problem is not None:
            redis_banner = (f"REGISTRY PROBLEM ({self.registry_problem}) — polling the "
                            f"{len(self.members)} last known members")
            banner = f"{banner}   ·   {redis_banner}" if banner else redis_banner
            # the nodes keep electing on what they know: a warning unless the election is hurt
            level = level if election_trouble else "warning"
        modes = {o.reply.status.security for o in self.last_ok.values()
                 if o.reply.status is not None and o.reply.status.security}
        return HeaderView(
            cluster=self.cluster,
            redis_ok=self.redis_ok,
            redis_error=self.redis_error,
            members=len(self.members),
            version=self.version,
            quorum=quorum_of(len(self.members)),
            goose=geese[0][0] if geese else None,
            term=geese[0][1] if geese else None,
            max_term=max(terms) if terms else None,
            geese=geese,
            answering=answering,
            leaderless_ms=leaderless,
            last_goose=self.goose,
            banner=banner,
            banner_level=level,
            security=("mixed" if len(modes) > 1 else next(iter(modes)) if modes else None),
        )

    def rows(self, now: float) -> list[RowView]:
        return [self.row(name, now) for name in sorted(self.members, key=natural_key)]

    def row(self, name: str, now: float) -> RowView:
        member = self.members[name]
        obs = self.latest.get(name)
        ok = self.last_ok.get(name)
        proc = self.procs.get(name)
        pid = proc.pid if proc is not None else None
        base: dict[str, Any] = {
            "name": name, "address": member.address, "pid": pid,
            "pid_owned": proc is not None,
        }
        if obs is not None and obs.reply.status is not None:
            st = obs.reply.status
            notes: list[str] = []
            level: Severity = "good"
            age = now - obs.at
            if age > self.stale_after:
                notes.append(f"answer is {fmt_ms(age * 1000)} old")
                level = "warning"
            if st.isolated_from:
                peers = "all peers" if set(st.isolated_from) >= (set(self.members) - {name}) \
                    else ", ".join(st.isolated_from)
                notes.append(f"ISOLATED from {peers}")
                level = "warning"
            if not st.redis.connected:
                notes.append("no Redis")
                level = "warning"
            if st.redis.problem:
                notes.append(f"registry: {st.redis.problem}")
                level = "warning"
            if self.version is not None and st.membership_version is not None \
                    and st.membership_version < self.version:
                notes.append(f"membership v{st.membership_version} < v{self.version}")
            if proc is None and st.pid is not None:
                base["pid"] = st.pid
            return RowView(
                **base, role=st.role, term=st.term,
                follows=None if st.role == GOOSE else st.goose,
                heartbeat_age_ms=st.heartbeat_age_ms,
                lease_remaining_ms=st.lease_remaining_ms,
                latency_ms=obs.reply.latency_ms, uptime_s=st.uptime_s,
                state="; ".join(notes) or "ok", level=level,
                isolated_from=st.isolated_from,
            )
        last = ok.reply.status if ok is not None else None
        known: dict[str, Any] = {}
        if last is not None:
            known = {"term": last.term, "stale": True,
                     "follows": None if last.role == GOOSE else last.goose}
            if proc is None and last.pid is not None:
                base["pid"] = last.pid
        if obs is None:
            return RowView(**base, **known, role="pending", state="waiting for a first answer",
                           level="info")
        silent_since = self.first_failure.get(name, obs.at)
        if ok is not None:
            silent_since = ok.at
        silent = fmt_ms((now - silent_since) * 1000)
        if proc is not None and proc.state in ("killed", "stopped", "exited"):
            ago = fmt_ms((now - proc.since) * 1000)
            what = {
                "killed": f"killed here {ago} ago",
                "stopped": f"stopped here {ago} ago",
                "exited": f"process exited{'' if proc.code is None else f' ({proc.code})'} "
                          f"{ago} ago{': ' + proc.detail if proc.detail else ''}",
            }[proc.state]
            return RowView(**base, **known, role=proc.state, state=what,
                           level="error" if proc.state == "exited" else "warning")
        return RowView(**base, **known, role="unreachable",
                       state=f"no answer {silent}: {obs.reply.error}", level="error")

    def failover_durations(self) -> list[float]:
        return [f.duration_ms for f in self.failovers]


def summarize_failovers(failovers: Iterable[Failover]) -> str:
    ms = sorted(f.duration_ms for f in failovers)
    if not ms:
        return "no failover yet"
    median = ms[len(ms) // 2] if len(ms) % 2 else (ms[len(ms) // 2 - 1] + ms[len(ms) // 2]) / 2
    return (f"{len(ms)} failover{'s' if len(ms) != 1 else ''} · median {fmt_ms(median)} · "
            f"max {fmt_ms(ms[-1])}")


