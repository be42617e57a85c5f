"""Who the goose is, since when, and how long each failover took, as the console can prove it.

A reply is an interval: the request left at `sent`, the answer came back at `at`, so the node
answered somewhere in between. A `goose` answer that carries the node's remaining lease proves
more: the node stays goose until at least `sent + lease remaining` (the lease is measured on
the node's clock from the moment it answered, which is after `sent`). TWO GEESE is raised only
when two such proven intervals overlap; anything weaker (a dead goose's last answer, say) is a
neutral note. Failover times come from the nodes: a goose reports how long it has held the
role (`role_since_ms`), so the console dates the takeover to within half the round trip,
whatever its polling interval.

Pure: no clock. Events go out through EMIT, the model's event log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ddg.client import Role

from .events import Event, Observation
from .fmt import fmt_ms, summarize_durations

Emit = Callable[..., Event]


@dataclass(frozen=True, kw_only=True, slots=True)
class Failover:
    """A goose change: from the loss (the console's action, or the old goose's last proven
    goose instant) to the new goose's takeover as the new goose dates it."""

    old: str
    new: str
    term: int
    cause: str
    duration_ms: float | None  # None: it could not be timed
    uncertainty_ms: float | None
    wall: float
    took_over_wall: float | None = None  # the takeover on the wall clock, for comparisons


@dataclass(frozen=True, kw_only=True, slots=True)
class GooseSpan:
    """An entry of the goose timeline: NAME was goose in TERM from `wall` on."""

    name: str
    term: int
    wall: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """A goose answer: NAME was goose when it answered (within [sent, at]) and stays goose
    at least until `until` (None: the answer carried no lease)."""

    name: str
    term: int
    sent: float
    at: float
    until: float | None
    took_over: float | None  # when it became goose, from its role_since_ms
    took_over_error: float | None  # ± half the round trip
    wall_offset: float = 0.0  # wall clock minus monotonic, at the reply

    def proven(self, cut: float | None) -> tuple[float, float] | None:
        """The interval in which NAME was certainly goose, ended early at CUT (the console
        killed or stopped it then)."""
        if self.until is None:
            return None
        end = self.until if cut is None else min(self.until, cut)
        return (self.at, end) if self.at < end else None


@dataclass(kw_only=True, slots=True)
class _Loss:
    at: float
    cause: str
    # Started by a console action (kill, stop, isolate, remove): only a goose change ends it,
    # since e.g. an isolated goose rightly keeps answering goose until its lease runs out.
    sticky: bool = False


def claim_of(obs: Observation) -> Claim | None:
    st = obs.reply.status
    if st is None or st.role != Role.GOOSE:
        return None
    until = None if st.lease_remaining_ms is None else obs.sent + st.lease_remaining_ms / 1000
    took = err = None
    if st.role_since_ms is not None:
        half = (obs.at - obs.sent) / 2
        took, err = obs.sent + half - st.role_since_ms / 1000, half
    return Claim(name=obs.name, term=st.term, sent=obs.sent, at=obs.at, until=until,
                 took_over=took, took_over_error=err, wall_offset=obs.wall - obs.at)


class GooseTracker:
    def __init__(self, emit: Emit, cause: Callable[[str], str]) -> None:
        self._emit = emit  # (wall, kind, text, severity, node) -> Event
        self._cause = cause  # why NAME is no longer goose, from what it last answered
        self.failovers: list[Failover] = []
        self.timeline: list[GooseSpan] = []
        self.goose: str | None = None  # the last goose seen (kept while there is none)
        self.goose_term: int | None = None
        self.loss: _Loss | None = None
        self.split: tuple[tuple[str, int], ...] = ()  # two geese, proven
        self.current: dict[str, Claim] = {}  # nodes whose latest answer is goose
        self.last_claim: dict[str, Claim] = {}  # each node's latest goose answer, kept
        self.cut: dict[str, float] = {}  # the console ended NAME's role at this time
        self._leaderless_since: float | None = None
        self._noted: frozenset[str] = frozenset()

    # ---- console actions ------------------------------------------------------------------

    def removed(self, name: str, *, at: float) -> None:
        self.cut[name] = at
        self.current.pop(name, None)
        if name == self.goose and self.loss is None:
            self.loss = _Loss(at=at, cause=f"{name} removed")

    def mark_loss(self, name: str, cause: str, *, at: float, ends_role: bool) -> bool:
        """The console just did something (kill, stop, isolate, remove) to NAME. ENDS_ROLE:
        the process is gone or going, so it is no goose after AT (an isolated goose still is
        until its lease ends). If NAME is the goose, the failover clock starts now; returns
        whether it was."""
        if ends_role:
            self.cut[name] = at
            self.current.pop(name, None)
        was = name == self.goose and self.loss is None
        if was:
            self.loss = _Loss(at=at, cause=cause, sticky=True)
        return was

    # ---- replies --------------------------------------------------------------------------

    def geese(self) -> list[tuple[str, int]]:
        """Nodes whose latest answer says goose, highest term first."""
        return [(c.name, c.term) for c in sorted(self.current.values(),
                                                  key=lambda c: (-c.term, -c.at, c.name))]

    def update(self, obs: Observation | None, *, at: float, wall: float,
               members: Iterable[str]) -> list[Event]:
        """After a poll (OBS) or a registry read (OBS None)."""
        out: list[Event] = []
        names = set(members)
        for gone in [n for n in self.current if n not in names]:
            del self.current[gone]
        if obs is not None:
            claim = claim_of(obs)
            cut = self.cut.get(obs.name)
            if claim is None:
                # Not goose, or no answer: no longer counted as goose. (A failed poll proves
                # nothing about the lease: no alarm either way.)
                self.current.pop(obs.name, None)
            else:
                if cut is not None and obs.sent >= cut:  # asked after the kill: a new process
                    del self.cut[obs.name]
                    cut = None
                self.last_claim[obs.name] = claim
                if cut is None:  # a reply in flight at the kill is no goose after it
                    self.current[obs.name] = claim
                out += self._check_split(claim, wall)
        out += self._follow(at, wall, obs)
        return out

    def _check_split(self, claim: Claim, wall: float) -> list[Event]:
        mine = claim.proven(self.cut.get(claim.name))
        if mine is None:
            return []
        for other in self.last_claim.values():
            if other.name == claim.name:
                continue
            theirs = other.proven(self.cut.get(other.name))
            if theirs is None:
                continue
            start, end = max(mine[0], theirs[0]), min(mine[1], theirs[1])
            if start < end:
                pair = tuple(sorted(((claim.name, claim.term), (other.name, other.term)),
                                    key=lambda g: (-g[1], g[0])))
                if pair != self.split:
                    self.split = pair
                    who = " and ".join(f"{n} (term {t})" for n, t in pair)
                    return [self._emit(
                        wall, "split", f"TWO GEESE: {who} were both goose for "
                        f"{fmt_ms((end - start) * 1000)} (proven by their leases)", "error")]
                return []
        return []

    def _follow(self, at: float, wall: float, obs: Observation | None) -> list[Event]:
        out: list[Event] = []
        geese = self.geese()
        if self.split and (len(geese) < 2 or not self._still_split()):
            self.split = ()
            out.append(self._emit(wall, "split", "only one node answers goose again", "good"))
        if len(geese) >= 2 and frozenset(n for n, _ in geese) != self._noted and not self.split:
            self._noted = frozenset(n for n, _ in geese)
            (new, term), *rest = geese
            others = ", ".join(f"{n}'s last answer was goose (term {t})" for n, t in rest)
            out.append(self._emit(wall, "goose", f"{others}; {new} answers goose in term "
                                  f"{term} (no overlap proven)", "info", new))
        elif len(geese) < 2:
            self._noted = frozenset()

        if not geese:
            if self._leaderless_since is None:
                self._leaderless_since = at
            if self.goose is not None and self.loss is None:
                self.loss = _Loss(at=at, cause=self._cause(self.goose))
                out.append(self._emit(wall, "goose",
                                      f"no goose: {self.loss.cause} (was goose in term "
                                      f"{self.goose_term})", "warning"))
            return out

        name, term = geese[0]
        claim = self.current[name]
        if self.goose is None:
            waited = ""
            if self._leaderless_since is not None and at > self._leaderless_since:
                waited = f" after {fmt_ms((at - self._leaderless_since) * 1000)} without a goose"
            out.append(self._emit(wall, "goose", f"{name} is goose (term {term}){waited}",
                                  "good", name))
            self.timeline.append(GooseSpan(name=name, term=term, wall=wall))
        elif (name, term) != (self.goose, self.goose_term):
            out.append(self._failover(name, term, claim, wall))
        elif self.loss is not None:
            # Same goose, same term: it never lost the role. A reply to a request sent before
            # the console acted says nothing about afterwards, so it does not end the loss.
            if self.loss.sticky or obs is None or obs.name != name or obs.sent < self.loss.at:
                return out
            out.append(self._emit(
                wall, "goose", f"{name} still goose in term {term} after "
                f"{fmt_ms((at - self.loss.at) * 1000)} ({self.loss.cause}); no failover",
                "info", name))
        self.goose, self.goose_term = name, term
        self.loss = None
        self._leaderless_since = None
        return out

    def _still_split(self) -> bool:
        claims = [self.current[n] for n, _ in self.split if n in self.current]
        return len(claims) == 2

    def _failover(self, name: str, term: int, claim: Claim, wall: float) -> Event:
        old = self.goose
        assert old is not None
        cause = self.loss.cause if self.loss is not None else self._cause(old)
        start: float | None
        if self.loss is not None and self.loss.sticky:
            start = self.loss.at  # the console's own action
        else:
            # Not caused here (attach mode, a crash, a step-down): from the old goose's last
            # proven goose instant. (A failed poll only says when the console noticed.)
            last = self.last_claim.get(old)
            start = last.until if last is not None else None
        duration = error = None
        if start is not None and claim.took_over is not None:
            duration = max(0.0, (claim.took_over - start) * 1000)
            error = (claim.took_over_error or 0.0) * 1000
        fo = Failover(old=old, new=name, term=term, cause=cause, duration_ms=duration,
                      uncertainty_ms=error, wall=wall,
                      took_over_wall=None if claim.took_over is None
                      else claim.took_over + claim.wall_offset)
        self.failovers.append(fo)
        self.timeline.append(GooseSpan(name=name, term=term, wall=wall))
        if duration is None:
            why = ("it does not report when it took over" if claim.took_over is None
                   else f"no proven last instant of {old} as goose")
            text = f"{cause} → {name} goose (term {term}); not timed: {why}"
        else:
            text = (f"{cause} → {name} goose after {fmt_ms(duration)} ± "
                    f"{fmt_ms(error)} (term {term})")
        return self._emit(wall, "failover", text, "good", name)

    # ---- views ----------------------------------------------------------------------------

    def leaderless_ms(self, now: float) -> float | None:
        if self._leaderless_since is None or self.current:
            return None
        return (now - self._leaderless_since) * 1000

    def durations(self) -> list[float]:
        return [f.duration_ms for f in self.failovers if f.duration_ms is not None]


def summarize_failovers(failovers: Iterable[Failover]) -> str:
    return summarize_durations(f.duration_ms for f in failovers if f.duration_ms is not None)
