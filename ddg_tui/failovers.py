"""Who the goose is, since when, and how long each failover took, as the console sees it.

Fed by the model after every poll and registry read; pure (no clock: every input carries its
times). Events go out through EMIT, the model's event log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .fmt import fmt_ms, summarize_durations

if TYPE_CHECKING:
    from .model import Event, Observation

Emit = Callable[..., "Event"]


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
class _Loss:
    at: float
    cause: str
    # Started by a console action (kill, stop, isolate, remove): only a goose change ends it,
    # since e.g. an isolated goose rightly keeps answering goose until its lease runs out.
    sticky: bool = False


class GooseTracker:
    def __init__(self, emit: Emit, cause: Callable[[str], str]) -> None:
        self._emit = emit  # (wall, kind, text, severity, node) -> Event
        self._cause = cause  # why NAME is no longer goose, from what it last answered
        self.failovers: list[Failover] = []
        self.timeline: list[GooseSpan] = []
        self.goose: str | None = None  # the last goose seen (kept while there is none)
        self.goose_term: int | None = None
        self.loss: _Loss | None = None
        self._leaderless_since: float | None = None
        self._two_geese = False

    def removed(self, name: str, *, at: float) -> None:
        if name == self.goose and self.loss is None:
            self.loss = _Loss(at=at, cause=f"{name} removed")

    def mark_loss(self, name: str, cause: str, *, at: float, live_goose: str | None) -> bool:
        """The console just did something (kill, stop, isolate, remove) to NAME.

        If NAME is the goose, the failover clock starts now. Returns whether it was the goose.
        """
        if name == self.goose and self.loss is None and live_goose == name:
            self.loss = _Loss(at=at, cause=cause, sticky=True)
            return True
        return False

    def update(self, geese: list[tuple[str, int]], at: float, wall: float,
               obs: Observation | None = None) -> list[Event]:
        """After a poll or a registry read: GEESE are the members whose latest answer says
        goose, highest term first."""
        out: list[Event] = []
        if len(geese) >= 2:
            if not self._two_geese:
                self._two_geese = True
                who = " and ".join(f"{n} (term {t})" for n, t in geese)
                out.append(self._emit(wall, "split", f"TWO GEESE: {who} both answer goose",
                                       "error"))
        elif self._two_geese:
            self._two_geese = False
            out.append(self._emit(wall, "split", "only one node answers goose again", "good"))

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
        if self.goose is None:
            waited = ""
            if self._leaderless_since is not None and at > self._leaderless_since:
                waited = f" after {fmt_ms((at - self._leaderless_since) * 1000)} without a goose"
            out.append(self._emit(wall, "goose", f"{name} is goose (term {term}){waited}",
                                   "good", name))
            self.timeline.append(GooseSpan(name=name, term=term, wall=wall))
        elif (name, term) != (self.goose, self.goose_term):
            start = self.loss.at if self.loss is not None else at
            cause = self.loss.cause if self.loss is not None \
                else self._cause(self.goose)
            ms = max(0.0, (at - start) * 1000)
            fo = Failover(old=self.goose, new=name, term=term, cause=cause, duration_ms=ms,
                          wall=wall)
            self.failovers.append(fo)
            self.timeline.append(GooseSpan(name=name, term=term, wall=wall))
            out.append(self._emit(wall, "failover",
                                   f"{cause} → {name} goose after {fmt_ms(ms)} (term {term})",
                                   "good", name))
        elif self.loss is not None:
            # Same goose, same term: it never lost the role. A reply to a request sent before
            # the console acted says nothing about afterwards, so it does not end the loss.
            if self.loss.sticky or obs is None or obs.name != name \
                    or obs.sent < self.loss.at:
                return out
            ms = (at - self.loss.at) * 1000
            out.append(self._emit(
                wall, "goose", f"{name} still goose in term {term} after {fmt_ms(ms)} "
                f"({self.loss.cause}); no failover", "info", name))
        self.goose, self.goose_term = name, term
        self.loss = None
        self._leaderless_since = None
        return out

    def leaderless_ms(self, now: float, *, has_goose: bool) -> float | None:
        if self._leaderless_since is None or has_goose:
            return None
        return (now - self._leaderless_since) * 1000

    def durations(self) -> list[float]:
        return [f.duration_ms for f in self.failovers]


def summarize_failovers(failovers: Iterable[Failover]) -> str:
    return summarize_durations(f.duration_ms for f in failovers)
