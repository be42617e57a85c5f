"""Clock-rate evidence: does this node's monotonic clock run at the rate its peers' clocks say?

The lease argument (docs/design.md, "Why there are never two geese at once") holds while every
node's clock runs within `max_rate_error(drift_margin)` of real time (11 % with the default
margin 0.8). Nothing inside one node can see its own clock run slow or fast; its peers' clocks
can. A heartbeat carries the goose's clock when it sent the round, and the duck's ack the
duck's clock when it received it. Each such reading of a peer's clock happened at some moment
that this node can place between two readings of its own (lo, hi):

- an ack: between sending the round and reading the ack (exact bounds: a goose that sends late
  only widens them, it never shifts them), and
- a heartbeat: before it arrived, by at most the one-way delay (assumed at most a heartbeat
  interval, for the least delayed heartbeat of a quarter second).

Two readings of one peer's clock some seconds apart then bound this node's rate relative to
that peer's: own elapsed / peer elapsed lies in [(b.lo - a.hi), (b.hi - a.lo)] / (b.peer -
a.peer). A peer *contradicts* this node when that whole interval lies outside [1 - bound,
1 + bound]: if the peer's clock is right, this one's is not. It *agrees* when the interval lies
inside. A node is contradicted when a majority of its cluster's members contradict it; it then
does not lead (core.py) until, a WINDOW later at the earliest, a peer agrees and no majority
contradicts it. And a duck whose clock runs fast against its goose's beyond the bound (its
ducks could tell only once it leads) stretches its waits for that goose's lease by as much.

Pure: readings in, verdicts out; no I/O and no clock of its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

WINDOW = 4.0  # seconds of own clock over which a peer's readings are compared
ROUNDS = 32  # a goose's last rounds whose send times are kept for the acks that come late
BUCKETS = 16  # the window is kept as this many slots, the tightest reading of each
US = 1e-6  # the resolution of a clock on the wire (integer microseconds)


def to_us(t: float) -> int | None:
    """A clock reading for the wire (None if it does not fit a message's integer field)."""
    us = round(t / US)
    return us if 0 <= us < 2**53 else None


def max_rate_error(drift_margin: float) -> float:
    """The clock-rate error the lease argument tolerates: a goose's lease L on its clock ends
    before any rival's wait L / margin on another's as long as margin <= (1 - e) / (1 + e)."""
    return (1 - drift_margin) / (1 + drift_margin)


class Verdict(StrEnum):
    AGREES = "agrees"
    CONTRADICTS = "contradicts"
    UNDECIDED = "undecided"  # no evidence yet, or not enough to say either


@dataclass(frozen=True, slots=True)
class Reading:
    """A peer's clock read PEER at a moment that this node's clock places in [LO, HI]."""

    lo: float
    hi: float
    peer: float
    exact: bool = True  # both bounds observed (an ack); else lo is assumed (a heartbeat)

    def key(self) -> tuple[float, float]:
        """Smaller is better: the tighter bounds, then the shorter delay."""
        return (self.hi - self.lo, self.hi - self.peer)

    @property
    def likely(self) -> float:
        """The likeliest moment of the peer's reading on this clock: the middle of an ack's
        round trip; a heartbeat's arrival (a LAN's delay is far below the bound assumed)."""
        return (self.lo + self.hi) / 2 if self.exact else self.hi


def rate_bounds(a: Reading, b: Reading) -> tuple[float, float] | None:
    """Own elapsed / peer elapsed between readings A and B (B later), as (low, high)."""
    elapsed = b.peer - a.peer
    if elapsed <= 2 * US:
        return None
    low = max(0.0, b.lo - a.hi) / (elapsed + 2 * US)
    high = (b.hi - a.lo) / (elapsed - 2 * US)
    return low, high


class PeerEvidence:
    """One peer's readings over the last WINDOW of own clock: the tightest of each slot, and
    the newest. The rate is read from the oldest slot's to the newest slot's; a slot of
    one-way readings only once it is over (a duck that was paused reads a batch of late
    heartbeats at once, and the least delayed of a whole slot is what the delay bound is for).
    """

    def __init__(self, window: float = WINDOW, buckets: int = BUCKETS) -> None:
        self.window = window
        self.slot = window / buckets
        self._slots: deque[tuple[int, Reading]] = deque()
        self.latest: Reading | None = None

    def add(self, r: Reading) -> None:
        if self.latest is not None and r.peer < self.latest.peer:
            self._slots.clear()  # its clock went back: another process or host, start over
        self.latest = r
        idx = math.floor(r.hi / self.slot)
        if self._slots and self._slots[-1][0] == idx:
            best = self._slots[-1][1]
            # While there is one slot, the newest reading is compared with its best: that one
            # gives way only to strictly tighter bounds (not to every reading, or the newest
            # would always be compared with itself).
            if (r.key() < best.key() if len(self._slots) > 1
                    else r.hi - r.lo < (best.hi - best.lo) / 2):
                self._slots[-1] = (idx, r)
        else:
            self._slots.append((idx, r))
        while self._slots[0][1].hi < r.hi - self.window:
            self._slots.popleft()

    def bounds(self, now: float) -> tuple[float, float] | None:
        """This node's clock rate relative to the peer's, as (low, high), if known."""
        pair = self.pair(now)
        return None if pair is None else rate_bounds(*pair)

    def estimate(self, now: float) -> float | None:
        """The likeliest rate, to show; the verdicts use the bounds."""
        pair = self.pair(now)
        if pair is None:
            return None
        a, b = pair
        return (b.likely - a.likely) / (b.peer - a.peer)

    def pair(self, now: float) -> tuple[Reading, Reading] | None:
        """The two readings the rate is read from, if there are two."""
        if self.latest is None or self.latest.hi < now - self.window or not self._slots:
            return None
        first = self._slots[0][1]
        idx, last = self._slots[-1]
        if len(self._slots) == 1:
            last = self.latest
        if not last.exact and idx >= math.floor(now / self.slot):  # the slot is not over
            last = self._slots[-2][1] if len(self._slots) > 1 else first
        if last is first or last.peer - first.peer <= 2 * US:
            return None
        return first, last


class ClockCheck:
    """Per-peer evidence and the node's standing: `contradicted` while a majority contradict
    its clock (set by update(), which the core calls after every reading and tick)."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.peers: dict[str, PeerEvidence] = {}
        self.contradicted = False
        self._since = -math.inf  # when `contradicted` was last set: it holds a WINDOW at least
        # Verdicts as of the last update(): a reading changes its peer's; the rest are judged
        # again when they may have aged out (every slot), which keeps a goose's ack cheap.
        self._verdicts: dict[str, Verdict] = {}
        self._dirty: set[str] = set()
        self._judged = (-math.inf, math.nan)  # (when all were judged, against which bound)
        self._rounds: dict[int, float] = {}  # heartbeat round -> when this node sent it
        self.goose: str | None = None  # the last peer whose heartbeats this node heard

    def sent(self, seq: int, at: float) -> None:
        """This node (the goose) sent heartbeat round SEQ at AT."""
        self._rounds[seq] = at
        if len(self._rounds) > ROUNDS:
            del self._rounds[next(iter(self._rounds))]  # the oldest: rounds only grow

    def acked(self, peer: str, *, seq: int, peer_clock: float, received: float) -> None:
        """PEER's clock read PEER_CLOCK when it received round SEQ; its ack was read at
        RECEIVED (this node's clock). Every ack counts, also those after the round's quorum."""
        sent = self._rounds.get(seq)
        if sent is not None and sent <= received:
            self._add(peer, Reading(lo=sent, hi=received, peer=peer_clock))

    def heard(self, peer: str, *, peer_clock: float, received: float, delay: float) -> None:
        """PEER sent a message at PEER_CLOCK (its clock) that arrived at RECEIVED (ours), taken
        to be at most DELAY in flight."""
        self._add(peer, Reading(lo=received - delay, hi=received, peer=peer_clock, exact=False))
        self.goose = peer

    def _add(self, peer: str, r: Reading) -> None:
        ev = self.peers.get(peer)
        if ev is None:
            ev = self.peers[peer] = PeerEvidence(self.window)
        ev.add(r)
        self._dirty.add(peer)

    def bounds(self, peer: str, now: float) -> tuple[float, float] | None:
        ev = self.peers.get(peer)
        return None if ev is None else ev.bounds(now)

    def verdict(self, peer: str, now: float, bound: float) -> Verdict:
        b = self.bounds(peer, now)
        if b is None:
            return Verdict.UNDECIDED
        low, high = b
        if high < 1 - bound or low > 1 + bound:
            return Verdict.CONTRADICTS
        if 1 - bound <= low and high <= 1 + bound:
            return Verdict.AGREES
        return Verdict.UNDECIDED

    def stretch(self, now: float, bound: float) -> float:
        """How much longer than its nominal length a wait for the last goose's lease must run
        on this clock: 1, unless this clock runs fast against that goose's beyond the bound
        (a node not yet contradicted by a majority: its ducks' evidence comes only when it
        leads), then by as much as it may run fast. A fast new goose would otherwise answer
        before the old lease has run out."""
        b = None if self.goose is None else self.bounds(self.goose, now)
        return b[1] if b is not None and b[0] > 1 + bound else 1.0

    def rates(self, now: float) -> dict[str, float]:
        """This node's clock rate relative to each peer with evidence, for /status and the
        metrics (the likeliest value; the verdicts use the bounds)."""
        out: dict[str, float] = {}
        for peer in sorted(self.peers):
            rate = self.peers[peer].estimate(now)
            if rate is not None:
                out[peer] = rate
        return out

    def contradicting(self, peers: Iterable[str], now: float, bound: float) -> list[str]:
        return [p for p in sorted(peers) if self.verdict(p, now, bound) is Verdict.CONTRADICTS]

    def update(self, peers: frozenset[str], need: int, now: float, bound: float) -> bool | None:
        """Re-judge against PEERS (the other members; NEED of them make a majority of the
        cluster). Returns the new `contradicted` when it changed, else None."""
        if not self.peers.keys() <= peers:
            for gone in set(self.peers) - peers:
                del self.peers[gone]
        when, judged = self._judged
        if now - when >= self.window / BUCKETS or bound != judged or self._verdicts.keys() != peers:
            self._verdicts = {p: self.verdict(p, now, bound) for p in peers}
            self._judged = (now, bound)
        else:
            for p in self._dirty & peers:
                self._verdicts[p] = self.verdict(p, now, bound)
        self._dirty.clear()
        verdicts = list(self._verdicts.values())
        against = verdicts.count(Verdict.CONTRADICTS)
        if not self.contradicted and need >= 1 and against >= need:
            self.contradicted, self._since = True, now
            return True
        if (self.contradicted and against < need and Verdict.AGREES in verdicts
                and now - self._since >= self.window):
            self.contradicted = False
            return False
        return None
