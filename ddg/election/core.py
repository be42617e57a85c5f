"""The election as a pure state machine: messages and clock readings in, messages and state out.

No I/O, no wall clock, no randomness but the Random it is handed. The shell (node.py) feeds it
monotonic time, delivers its messages and persists HardState before anything it sends leaves.
See docs/design.md for the protocol and the safety argument.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from enum import StrEnum

from ddg.election.clockrate import ClockCheck, Verdict, max_rate_error, to_us
from ddg.election.messages import (
    MAX_TERM,
    MAX_TERM_JUMP,
    Heartbeat,
    HeartbeatAck,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from ddg.election.roles import Role
from ddg.election.timing import JointTiming, Timing


class State(StrEnum):
    DUCK = "duck"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    GOOSE = "goose"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before a vote is granted or a term adopted becomes visible."""

    term: int = 0
    voted_for: str | None = None


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    msg: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something the log says about a step: a stable NAME (the JSON log's `event`, which tools
    match on), FIELDS of its own, and TEXT, the line the text log has always had."""

    name: str
    text: str
    fields: dict[str, str | int] = field(default_factory=dict)
    debug: bool = False  # routine (a granted vote): logged at DEBUG, so INFO logs stay as they were
    error: bool = False  # something an operator must fix: logged at ERROR

    def __str__(self) -> str:
        return self.text


@dataclass(slots=True)
class Output:
    sends: list[Send] = field(default_factory=list)
    reply: Message | None = None
    persist: HardState | None = None  # set when HardState changed: write it before sending
    events: list[Event] = field(default_factory=list)  # for the log
    refused: str | None = None  # why a message was not believed (the shell answers 4xx)


class StepDown(StrEnum):
    """Why a goose stopped being one (the `reason` label of ddg_step_downs_total)."""

    LOST_QUORUM = "lost_quorum"
    HIGHER_TERM = "higher_term"
    HANDOVER = "handover"
    REMOVED = "removed"
    CLOCK_RATE = "clock_rate"  # a majority of its peers contradict its clock's rate


@dataclass(slots=True)
class Counters:
    pre_votes_started: int = 0
    pre_votes_won: int = 0
    elections_started: int = 0
    elections_won: int = 0
    step_downs: int = 0  # for every reason; by reason in step_downs_by
    heartbeats_sent: int = 0
    heartbeats_received: int = 0
    transfers: int = 0
    step_downs_by: dict[StepDown, int] = field(default_factory=dict)

    def stepped_down(self, reason: StepDown) -> None:
        self.step_downs += 1
        self.step_downs_by[reason] = self.step_downs_by.get(reason, 0) + 1

    def copy(self) -> Counters:
        """A copy that later counts do not change (the dict is copied too)."""
        return replace(self, step_downs_by=dict(self.step_downs_by))


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    state: State
    role: Role
    term: int
    goose: str | None
    voted_for: str | None
    quorum: int
    lease_remaining: float | None  # seconds, the goose only
    heard_ago: float | None  # seconds since the goose was heard, when following one
    counters: Counters
    clock_contradicted: bool = False  # a majority of peers contradict this clock's rate
    clock_rates: dict[str, float] = field(default_factory=dict)  # its rate / each peer's


def quorum_of(n: int) -> int:
    return n // 2 + 1


def _values(t: Timing | JointTiming) -> tuple[float, ...]:
    return (t.heartbeat, t.election_min, t.election_max, t.lease, t.lease_wait,
            t.quorum_timeout, t.hint_step)


class Election:
    """One node's view of the election. Every public method takes `now` (monotonic seconds)."""

    def __init__(
        self,
        *,
        name: str,
        timing: Timing | JointTiming,
        rng: random.Random,
        now: float,
        members: frozenset[str],
        version: int = 0,
        hard: HardState | None = None,
        trust_transfers: bool = False,
        term_floor: int = 0,
    ) -> None:
        on_disk = hard = hard or HardState()
        if term_floor > hard.term:  # the membership's term floor (set_membership): the
            hard = HardState(term_floor, None)  # first Output persists it
        self.name = name
        # Every timing value is read through this one attribute: set_timing() swaps it.
        self.timing: Timing | JointTiming = timing
        # A lease this node may hold that was granted under an earlier timing has surely
        # ended from here on (set_timing()); a new process holds none.
        self.timing_settles_at = -math.inf
        self._earlier_lease = 0.0  # the longest lease an earlier timing could have granted
        self.rng = rng
        self.term = hard.term
        self.voted_for = hard.voted_for
        self.members = members
        self.version = version
        self.state = State.DUCK if name in members else State.REMOVED
        # The shell confirms a membership version to the registry only from here on: by then
        # every lease this node (or a process before it) acknowledged under an older version
        # has surely ended (docs/design.md, "One change at a time is safe").
        self.membership_settles_at = now + self.timing.lease_wait
        self.leader: str | None = None
        # Starting counts as having heard a goose: a node that acked a goose's heartbeat just
        # before it crashed must not vote for a rival until that goose's lease has run out.
        self.last_heard = now
        self.election_deadline = now
        self._reset_election_timer(now)
        self.votes: set[str] = set()
        self.campaign_at = -math.inf
        # Peers' messages are authenticated, so a TimeoutNow really comes from a goose that
        # has stopped answering `goose`. Without that, a hand-over is only a hint (see below).
        self.trust_transfers = trust_transfers
        self._trusted_campaign = False
        # The shell saw the connection to the goose drop without a goodbye: likely a crash.
        # Holds the last_heard of that moment; a later heartbeat (or vote) makes it stale.
        self.lost_heard: float | None = None
        # A new goose answers `goose` only from here on: until then a lease that one of its
        # voters was still honouring when it voted may not have ended (docs/design.md).
        self.goose_not_before = -math.inf
        # goose state
        self.lease_until = -math.inf
        self.step_down_at = -math.inf
        self.next_heartbeat = math.inf
        # The newest round goes again, once, to the ducks that have not acknowledged it by
        # then: one lost packet (a TCP retransmission takes 200 ms) must not end the lease.
        self.resend_at = math.inf
        self.seq = 0
        self.sent_at: dict[int, float] = {}
        # Each round's lease as the timing said when it left: a change to a longer lease
        # never lengthens what the rounds already sent earn (set_timing).
        self.round_lease: dict[int, float] = {}
        self.acks: dict[int, set[str]] = {}
        self.acked_seq: dict[str, int] = {}
        self.counters = Counters()
        # Peers' clock readings: a node whose clock a majority contradicts does not lead.
        self.clock = ClockCheck()
        self._ticked = -math.inf
        self._out = Output()
        self._persisted = on_disk

    # ---- queries -------------------------------------------------------------------------

    @property
    def quorum(self) -> int:
        return quorum_of(len(self.members))

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for)

    def is_goose(self, now: float) -> bool:
        """True only while a quorum acked a round sent less than the lease ago."""
        return self.state is State.GOOSE and self.goose_not_before <= now < self.lease_until

    def reported_role(self, now: float) -> Role:
        if self.is_goose(now):
            return Role.GOOSE
        if self.state in (State.PRE_CANDIDATE, State.CANDIDATE):
            return Role.CANDIDATE
        return Role.DUCK

    def snapshot(self, now: float) -> Snapshot:
        """Everything /status says about the election, read at one instant."""
        following = self.leader is not None and self.leader != self.name
        return Snapshot(
            state=self.state, role=self.reported_role(now), term=self.term,
            goose=self.known_goose(now), voted_for=self.voted_for, quorum=self.quorum,
            lease_remaining=self.lease_remaining(now),
            heard_ago=now - self.last_heard if following else None,
            counters=self.counters.copy(), clock_contradicted=self.clock.contradicted,
            clock_rates=self.clock.rates(now),
        )

    def known_goose(self, now: float) -> str | None:
        if self.state is State.GOOSE:
            return self.name if self.is_goose(now) else None
        return self.leader

    def lease_remaining(self, now: float) -> float | None:
        return max(0.0, self.lease_until - now) if self.is_goose(now) else None

    def next_deadline(self) -> float:
        """When tick() next has work to do, or the reported role changes by the clock alone
        (the wait for the old lease ends, or the lease runs out): the shell observes it then."""
        if self.state is State.REMOVED:
            return math.inf
        if self.state is State.GOOSE:
            # is_goose() reads the lease against the clock; ticks at its edges only let the
            # shell see the change at once.
            edges = [t for t in (self.goose_not_before, self.lease_until) if t > self._ticked]
            return min(self.next_heartbeat, self.resend_at, self.step_down_at, *edges)
        return self.election_deadline

    def sticky(self, now: float) -> bool:
        """Leader stickiness: refuse rivals while a goose (maybe this node) is believed alive."""
        if self.state is State.GOOSE:
            return now < self.step_down_at
        if self.lost_heard is not None and self.lost_heard == self.last_heard:
            return False  # nothing heard since the goose's connection dropped
        return now - self.last_heard < self.timing.election_min

    # ---- inputs --------------------------------------------------------------------------

    def tick(self, now: float) -> Output:
        self._ticked = now
        self._check_clock(now)
        if self.state is State.GOOSE:
            if now >= self.step_down_at:
                self._step_down(now, StepDown.LOST_QUORUM, "lost its quorum: no heartbeat "
                                "round acked within the quorum timeout")
            elif now >= self.next_heartbeat:
                self._broadcast_heartbeat(now)
            elif now >= self.resend_at:
                self._resend_heartbeat()
        elif self.state is not State.REMOVED and now >= self.election_deadline:
            self._pre_campaign(now)
        return self._flush()

    def step(self, msg: Message, now: float, version: int | None = None) -> Output:
        """Handle one message. A request's answer is in Output.reply. VERSION is the
        membership version the sender ran when it sent MSG (None: not known)."""
        if self.state is State.REMOVED or msg.sender not in self.members or msg.sender == self.name:
            return self._flush()
        if msg.term > self.term + MAX_TERM_JUMP:
            self._out.refused = (f"term {msg.term} is more than {MAX_TERM_JUMP} above this "
                                 f"node's term {self.term}; no run of elections gets there")
            return self._flush()
        if version is not None and version < self.version \
                and isinstance(msg, VoteRequest | Heartbeat):
            self._refuse_older(msg, version)
            return self._flush()
        match msg:
            case VoteRequest():
                self._on_vote_request(msg, now)
            case VoteResponse():
                self._on_vote_response(msg, now)
            case Heartbeat():
                self._on_heartbeat(msg, now)
            case HeartbeatAck():
                self._on_ack(msg, now)
            case TimeoutNow():
                self._on_timeout_now(msg, now)
        self._check_clock(now)
        return self._flush()

    def set_membership(self, members: frozenset[str], version: int, now: float,
                       term_floor: int = 0) -> Output:
        """Adopt a newer registry version, with the registry's TERM_FLOOR: no term at or below
        it may be won under this version. Safe because the registry writes a change only once
        a majority of the members confirmed the version before it (docs/design.md, "One
        change at a time is safe")."""
        if version <= self.version and members == self.members:
            return self._flush()
        if version < self.version:
            return self._flush()
        self.members, self.version = members, version
        # Acks and votes given under the older version count toward leases that end within
        # lease_wait; only then may the shell confirm this one.
        self.membership_settles_at = max(
            self.membership_settles_at,
            now + self.timing.lease_wait * self._clock_stretch(now))
        if self.name not in members:
            if self.state is State.GOOSE:
                self.counters.stepped_down(StepDown.REMOVED)
            self.state = State.REMOVED
            self.leader = None
            self.lease_until = self.step_down_at = -math.inf
            self._event("removed", f"removed from the cluster (membership version {version}); "
                        "leaving the election", version=version)
            return self._flush()
        if self.state is State.REMOVED:
            self.state = State.DUCK
            self._reset_election_timer(now)
        if term_floor > self.term:
            self._event("term_floor", f"membership version {version} carries term "
                        f"{term_floor}: moving up from term {self.term}", version=version,
                        floor=term_floor)
            self._become_duck(now, term_floor, leader=None)
            return self._flush()
        if term_floor == self.term and self.state is State.CANDIDATE:
            # A term-`floor` goose may have been won under a membership two changes back:
            # this campaign must not win the same term under this one.
            self.state = State.DUCK
            self.votes = set()
            self._reset_election_timer(now)
            self._event("campaign_abandoned", f"membership version {version} carries this "
                        f"term ({term_floor}): giving up the campaign", version=version)
            return self._flush()
        # A smaller quorum may already be met by the votes in hand.
        if self.state is State.PRE_CANDIDATE and self._has_quorum(self.votes):
            self._campaign(now, transfer=False)
        elif self.state is State.CANDIDATE and self._has_quorum(self.votes):
            self._become_goose(now)
        return self._flush()

    def set_timing(self, timing: Timing | JointTiming, now: float) -> Output:
        """Run on TIMING from now on (the cluster's record changed: docs/design.md, "Timing is
        cluster state"). Safe at any moment: a lease already granted keeps its end, and a
        round (or a campaign) sent under a shorter lease never earns a longer one; timers are
        drawn from the new values at their next reset, so a change alone starts no election.
        Stickiness and the waits read the new values at once."""
        old = self.timing
        self.timing = timing
        if _values(old) == _values(timing):
            # Another set with the same values (a timing between the others joined): a lease
            # granted before is one the new set would grant, nothing to wait out.
            return self._flush()
        self._earlier_lease = max(old.lease, self._earlier_lease if not self.timing_settled(now)
                                  else 0.0)
        self.timing_settles_at = max(self.timing_settles_at, now + old.lease_wait)
        if timing.lease > old.lease and self.state is State.CANDIDATE:
            # A campaign under way keeps the lease it started with (rounds already sent keep
            # theirs: round_lease).
            self.campaign_at -= timing.lease - old.lease
        if self.state is State.GOOSE and math.isfinite(self.next_heartbeat):
            # A shorter heartbeat (or lease) holds from the last round on: the next round
            # (and the resend) come when the new values say, not on the old schedule, or the
            # lease could lapse between two rounds.
            last = self.next_heartbeat - old.heartbeat
            self.next_heartbeat = min(self.next_heartbeat, last + timing.heartbeat)
            slack = timing.lease - timing.heartbeat
            if slack > 0 and math.isfinite(self.resend_at):
                self.resend_at = min(self.resend_at, last + slack / 2)
        self._event("timing_changed", "now running on the cluster's timing: heartbeat "
                    f"{timing.heartbeat * 1000:g} ms, election timeout "
                    f"{timing.election_min * 1000:g}-{timing.election_max * 1000:g} ms, lease "
                    f"{timing.lease * 1000:g} ms")
        return self._flush()

    def membership_settled(self, now: float) -> bool:
        """Whether the shell may confirm the membership version this node runs."""
        return now >= self.membership_settles_at

    def timing_settled(self, now: float) -> bool:
        """Whether every lease this node held under a timing before the current one has
        surely ended (it may then confirm the current one)."""
        return now >= self.timing_settles_at

    def longest_lease(self, now: float) -> float:
        """The longest lease this node may hold now: the current timing's, or an earlier
        one's until its leases have surely ended (what an observer needs to tell when the
        round behind a `goose` answer was sent)."""
        if self.timing_settled(now):
            return self.timing.lease
        return max(self.timing.lease, self._earlier_lease)

    def goose_lost(self, goose: str, now: float) -> Output:
        """The connection this duck holds to GOOSE ended without a goodbye: its process has
        likely died (the kernel closed its sockets). Only a hint: a reset from a firewall looks
        the same. So it skips stickiness for this node's vote and starts a campaign within
        a moment, and nothing else; the new goose still waits out the old lease.

        Ducks take turns by name, one hint_step apart, so that they do not split the vote:
        the first campaigns at once, and the others grant its pre-vote (which puts off their
        own turn) or, if it is down too, take over a step later."""
        if self.state is State.DUCK and goose == self.leader and goose != self.name:
            self.lost_heard = self.last_heard
            turn = sorted(self.members - {goose}).index(self.name)
            step = self.timing.hint_step
            self.election_deadline = min(self.election_deadline,
                                         now + step * turn + self.rng.uniform(0, step / 4))
            self._event("goose_lost", f"lost the connection to {goose}; campaigning soon "
                        "unless it is heard from", goose=goose)
        return self._flush()

    def transfer_leadership(self, now: float) -> Output:
        """Graceful stop of a goose: hand over to the most up-to-date duck (Raft's TimeoutNow)."""
        peers = [p for p in self.members if p != self.name]
        if self.state is not State.GOOSE or not peers:
            return self._flush()
        # A duck whose clock contradicts this one's would not lead well: others first.
        target = max(peers, key=lambda p: (self._clock_verdict(p, now) is not Verdict.CONTRADICTS,
                                            self.acked_seq.get(p, -1), p))
        term = self.term
        self._step_down(now, StepDown.HANDOVER, f"handing over to {target}", to=target)
        self.counters.transfers += 1
        self._send(target, TimeoutNow(term=term, sender=self.name))
        return self._flush()

    def persisted(self, hard: HardState) -> None:
        """The shell wrote HARD to disk. Until it says so, every Output asks for it again."""
        self._persisted = hard

    # ---- handlers ------------------------------------------------------------------------

    def _refuse_older(self, msg: VoteRequest | Heartbeat, version: int) -> None:
        """A candidate or goose on an older membership version than this node's gets no vote
        and no acknowledgement (its reply carries the newer version: it reads the registry).
        A quorum it counts is then of nodes at its version or older, which is what keeps a
        node that missed two changes from leading (docs/design.md)."""
        self._event("older_version", f"refused {msg.sender}'s {type(msg).__name__}: it runs "
                    f"membership version {version}, this node {self.version}", debug=True,
                    peer=msg.sender, version=version)
        if isinstance(msg, VoteRequest):
            self._reply(VoteResponse(term=self.term, sender=self.name, granted=False,
                                     pre_vote=msg.pre_vote))
        else:
            self._reply(HeartbeatAck(term=self.term, sender=self.name, seq=msg.seq,
                                     success=False))

    def _on_vote_request(self, msg: VoteRequest, now: float) -> None:
        if msg.term > self.term and self.sticky(now) and not msg.transfer:
            # Ignore the higher term too: a rejoining node must not depose a live goose.
            self._reply(VoteResponse(term=self.term, sender=self.name, granted=False,
                                     pre_vote=msg.pre_vote))
            return
        if msg.pre_vote:
            granted = msg.term > self.term
            if granted and self.state is State.DUCK:
                # Give that campaign time to finish before starting a rival one: fewer split
                # votes, and so a shorter tail of failover times.
                self._reset_election_timer(now)
            self._reply(VoteResponse(term=self.term if not granted else msg.term,
                                     sender=self.name, granted=granted, pre_vote=True))
            return
        if msg.term > self.term:
            self._become_duck(now, msg.term, leader=None)
        granted = (msg.term == self.term and self.voted_for in (None, msg.sender)
                   and self.state is State.DUCK and self.leader is None)
        heard_us = 0
        if granted:
            self.voted_for = msg.sender
            self._event("vote_granted", f"voted for {msg.sender} in term {self.term}",
                        debug=True, candidate=msg.sender)
            # A clock its peers contradict cannot say how long ago that was: "just now" makes
            # the candidate wait the whole lease_wait on its own clock; one that runs fast
            # against its last goose's says the least it may have been.
            if not self.clock.contradicted:
                heard = (now - self.last_heard) / self._clock_stretch(now)
                heard_us = max(0, int(heard * 1e6))
            # A vote acknowledges the candidate's "round 0": sticky from here, as after a
            # heartbeat, so the new goose's lease can start when it asked for the votes.
            self.last_heard = now
            self._reset_election_timer(now)
        self._reply(VoteResponse(term=self.term, sender=self.name, granted=granted,
                                 heard_us=heard_us))

    def _on_vote_response(self, msg: VoteResponse, now: float) -> None:
        if msg.pre_vote:
            if self.state is State.PRE_CANDIDATE and msg.granted and msg.term == self.term + 1:
                self.votes.add(msg.sender)
                if self._has_quorum(self.votes):
                    self._campaign(now, transfer=False)
            elif not msg.granted and msg.term > self.term:
                self._become_duck(now, msg.term, leader=None)
            return
        if msg.term > self.term:
            self._become_duck(now, msg.term, leader=None)
        elif self.state is State.CANDIDATE and msg.term == self.term and msg.granted:
            self.votes.add(msg.sender)
            if not self._trusted_campaign:
                # The voter heard a goose heard_us ago; that goose's lease can run at most
                # lease_wait past it (with the drift margin to spare): wait that out.
                self.goose_not_before = max(
                    self.goose_not_before,
                    now + self.timing.lease_wait * self._clock_stretch(now) - msg.heard_us / 1e6,
                )
            if self._has_quorum(self.votes):
                self._become_goose(now)

    def _on_heartbeat(self, msg: Heartbeat, now: float) -> None:
        if msg.term < self.term:
            # A goose of an old term: tell it, so it steps down (etcd does the same).
            self._reply(HeartbeatAck(term=self.term, sender=self.name, seq=msg.seq, success=False))
            return
        if msg.term > self.term or self.state is not State.DUCK or self.leader != msg.sender:
            self._become_duck(now, msg.term, leader=msg.sender)
        self.last_heard = now
        self.counters.heartbeats_received += 1
        self._reset_election_timer(now)
        received_us = None  # a goose that sends no clock reading may refuse one (older version)
        if msg.sent_us is not None:
            self.clock.heard(msg.sender, peer_clock=msg.sent_us / 1e6, received=now,
                             delay=self.timing.heartbeat)
            received_us = to_us(now)
        self._reply(HeartbeatAck(term=self.term, sender=self.name, seq=msg.seq, success=True,
                                 received_us=received_us))

    def _on_ack(self, msg: HeartbeatAck, now: float) -> None:
        if msg.term > self.term:
            self._become_duck(now, msg.term, leader=None)
            return
        if self.state is not State.GOOSE or msg.term != self.term or not msg.success:
            return
        self.acked_seq[msg.sender] = max(self.acked_seq.get(msg.sender, -1), msg.seq)
        if msg.received_us is not None:
            self.clock.acked(msg.sender, seq=msg.seq, peer_clock=msg.received_us / 1e6,
                             received=now)
        acks = self.acks.get(msg.seq)
        if acks is None:  # a round older than the ones kept: it cannot extend the lease
            return
        acks.add(msg.sender)
        if self._has_quorum(acks):
            sent = self.sent_at[msg.seq]
            if msg.seq == self.seq:
                self.resend_at = math.inf  # the newest round made it: nothing to send again
            lease = min(self.round_lease[msg.seq], self.timing.lease)
            self.lease_until = max(self.lease_until, sent + lease)
            self.step_down_at = max(self.step_down_at, sent + self.timing.quorum_timeout)
            for old in [s for s in self.acks if s <= msg.seq]:  # newer rounds still count
                del self.acks[old], self.sent_at[old], self.round_lease[old]

    def _on_timeout_now(self, msg: TimeoutNow, now: float) -> None:
        # Only from the goose this node follows: the hand-over skips stickiness, which is safe
        # only because that goose stopped answering `goose` before it sent this.
        if (msg.term == self.term and self.state is State.DUCK and msg.sender == self.leader
                and not self.clock.contradicted):  # a clock its peers contradict does not lead
            self._event("handover", f"{msg.sender} handed leadership over; campaigning now",
                        goose=msg.sender)
            self._campaign(now, transfer=True, trusted=self.trust_transfers)

    # ---- transitions ---------------------------------------------------------------------

    def _pre_campaign(self, now: float) -> None:
        if self._refuse_to_lead(now):
            return
        if self.term >= MAX_TERM:
            self._reset_election_timer(now)
            self._event("term_exhausted",
                        f"term {self.term} is the largest there is; not campaigning")
            return
        self.state = State.PRE_CANDIDATE
        self.leader = None
        self.votes = {self.name}
        self.counters.pre_votes_started += 1
        self._reset_election_timer(now)
        if self._has_quorum(self.votes):
            self._campaign(now, transfer=False)
            return
        self._broadcast(VoteRequest(term=self.term + 1, sender=self.name, pre_vote=True))

    def _campaign(self, now: float, *, transfer: bool, trusted: bool = False) -> None:
        if self.term >= MAX_TERM or self._refuse_to_lead(now):
            return
        if self.state is State.PRE_CANDIDATE:  # a quorum granted the pre-vote
            self.counters.pre_votes_won += 1
        self._trusted_campaign = trusted
        # This node may itself have heard a goose lately (an untrusted hand-over skips the
        # timer): its own "vote" carries the same wait as any voter's.
        wait = self.timing.lease_wait * self._clock_stretch(now)
        self.goose_not_before = -math.inf if trusted else self.last_heard + wait
        self.term += 1
        self.voted_for = self.name
        self.state = State.CANDIDATE
        self.leader = None
        self.votes = {self.name}
        self.counters.elections_started += 1
        self.campaign_at = now
        self._reset_election_timer(now)
        self._event("campaign", f"campaigning for term {self.term}", transfer=transfer)
        if self._has_quorum(self.votes):
            self._become_goose(now)
            return
        self._broadcast(VoteRequest(term=self.term, sender=self.name, transfer=transfer))

    def _become_goose(self, now: float) -> None:
        self.state = State.GOOSE
        self.leader = self.name
        self.counters.elections_won += 1
        # The votes were a quorum's acknowledgement of a round sent at campaign_at.
        self.lease_until = self.campaign_at + self.timing.lease
        self.step_down_at = max(self.campaign_at, now) + self.timing.quorum_timeout
        self.acks.clear()
        self.sent_at.clear()
        self.round_lease.clear()
        self.acked_seq.clear()
        self._event("elected",
                    f"won term {self.term} with {len(self.votes)}/{len(self.members)} votes",
                    votes=len(self.votes), members=len(self.members))
        self._broadcast_heartbeat(now)

    def _become_duck(self, now: float, term: int, *, leader: str | None) -> None:
        if self.state is State.GOOSE:
            self.counters.stepped_down(StepDown.HIGHER_TERM)
            self._event("stepped_down", f"stepped down: saw term {term}",
                        reason=StepDown.HIGHER_TERM.value, saw_term=term)
        if term > self.term:
            self.term = term
            self.voted_for = None
        self.state = State.DUCK
        self.leader = leader
        self.lease_until = self.step_down_at = -math.inf
        self.next_heartbeat = self.resend_at = math.inf
        self._reset_election_timer(now)
        if leader is not None:
            self._event("following", f"following {leader} in term {term}", goose=leader)

    def _step_down(self, now: float, reason: StepDown, why: str, *, to: str | None = None) -> None:
        self.counters.stepped_down(reason)
        text = f"stepped down in term {self.term}: {why}"
        if to is None:
            self._event("stepped_down", text, reason=reason.value)
        else:
            self._event("stepped_down", text, reason=reason.value, to=to)
        self.state = State.DUCK
        self.leader = None
        self.lease_until = self.step_down_at = -math.inf
        self.next_heartbeat = self.resend_at = math.inf
        self._reset_election_timer(now)

    def _broadcast_heartbeat(self, now: float) -> None:
        self.seq += 1
        self.sent_at[self.seq] = now
        self.round_lease[self.seq] = self.timing.lease
        self.clock.sent(self.seq, now)
        self.acks[self.seq] = {self.name}
        self.counters.heartbeats_sent += 1
        self.next_heartbeat = now + self.timing.heartbeat
        slack = self.timing.lease - self.timing.heartbeat  # for this round's acks to renew
        self.resend_at = now + slack / 2 if slack > 0 else math.inf
        # Rounds this old can extend neither the lease nor the step-down; forget them.
        keep = max(self.timing.lease, self.timing.quorum_timeout)
        for old in [s for s, t in self.sent_at.items() if t + keep <= now]:
            del self.sent_at[old], self.acks[old], self.round_lease[old]
        if self._has_quorum(self.acks[self.seq]):  # a cluster of one
            self.lease_until = now + self.timing.lease
            self.step_down_at = now + self.timing.quorum_timeout
        self._broadcast(Heartbeat(term=self.term, sender=self.name, seq=self.seq,
                                  sent_us=to_us(now)))

    def _resend_heartbeat(self) -> None:
        """The newest round again, to the ducks that have not acknowledged it (their copy or
        its answer may be stuck behind a lost packet): its lease still counts from its first
        sending, so a late copy can only make it shorter than it could be, never longer."""
        self.resend_at = math.inf
        acks = self.acks.get(self.seq)
        if acks is None or self._has_quorum(acks):
            return
        sent_us = to_us(self.sent_at[self.seq])  # the round's first sending, as its lease
        for peer in sorted(self.members - acks):
            self._send(peer, Heartbeat(term=self.term, sender=self.name, seq=self.seq,
                                       sent_us=sent_us))

    # ---- clock rate ----------------------------------------------------------------------

    def _clock_verdict(self, peer: str, now: float) -> Verdict:
        return self.clock.verdict(peer, now, max_rate_error(self.timing.drift_margin))

    def _clock_stretch(self, now: float) -> float:
        """A wait for the last goose's lease runs this much longer on this clock (clockrate)."""
        return self.clock.stretch(now, max_rate_error(self.timing.drift_margin))

    def _check_clock(self, now: float) -> None:
        """Judge this node's clock against its peers' readings (clockrate.py): a clock a
        majority of the cluster contradicts may stretch a lease past a rival's wait, so the
        node stops leading (a candidate gives up, a goose steps down) until a peer agrees."""
        bound = max_rate_error(self.timing.drift_margin)
        changed = self.clock.update(self.members - {self.name}, self.quorum, now, bound)
        rates = self.clock.rates(now) if changed is not None else {}
        if changed is True:
            against = self.clock.contradicting(self.members - {self.name}, now, bound)
            said = ", ".join(f"{p} {rates[p]:.3f}x" for p in against if p in rates)
            self._event("clock_contradicted",
                        f"this node's clock rate is contradicted by a majority of the cluster "
                        f"(its rate relative to {said}; the lease assumes within "
                        f"{bound:.0%}): not leading until a peer's clock agrees",
                        error=True, peers=",".join(against))
        elif changed is False:
            agree = [p for p in sorted(rates)
                     if self.clock.verdict(p, now, bound) is Verdict.AGREES]
            said = ", ".join(f"{p} {rates[p]:.3f}x" for p in agree)
            self._event("clock_agreed", f"this node's clock rate agrees with its peers again "
                        f"({said}): it may lead again", peers=",".join(agree))
        if self.clock.contradicted:
            self._refuse_to_lead(now)

    def _refuse_to_lead(self, now: float) -> bool:
        """While the clock is contradicted: no campaign, no candidacy, no goose."""
        if not self.clock.contradicted:
            return False
        if self.state is State.GOOSE:
            self._step_down(now, StepDown.CLOCK_RATE, "a majority of its peers contradict its "
                            "clock's rate")
        elif self.state in (State.PRE_CANDIDATE, State.CANDIDATE):
            self.state = State.DUCK
            self.leader = None
            self._reset_election_timer(now)
        elif self.state is State.DUCK and now >= self.election_deadline:
            self.leader = None  # the goose is lost, as for a campaign; none is started
            self._reset_election_timer(now)
        return True

    # ---- helpers -------------------------------------------------------------------------

    def _has_quorum(self, voters: set[str]) -> bool:
        return len(voters & self.members) >= self.quorum

    def _reset_election_timer(self, now: float) -> None:
        t = self.timing
        self.election_deadline = now + self.rng.uniform(t.election_min, t.election_max)

    def _broadcast(self, msg: Message) -> None:
        for peer in sorted(self.members):
            if peer != self.name:
                self._send(peer, msg)

    def _event(self, name: str, text: str, *, debug: bool = False, error: bool = False,
               **fields: str | int) -> None:
        """Log NAME with TEXT; the term the core is in goes with every event."""
        self._out.events.append(Event(name=name, text=text, debug=debug, error=error,
                                      fields={"term": self.term, **fields}))

    def _send(self, to: str, msg: Message) -> None:
        self._out.sends.append(Send(to, msg))

    def _reply(self, msg: Message) -> None:
        self._out.reply = msg

    def _flush(self) -> Output:
        out, self._out = self._out, Output()
        hard = self.hard_state
        if hard != self._persisted:
            out.persist = hard
        return out
