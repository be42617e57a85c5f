"""Focused, deterministic tests of the pure election core (ddg.election.core.Election)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from ddg.election.core import Election, HardState, Output, State, StepDown, quorum_of
from ddg.election.messages import (
    Heartbeat,
    HeartbeatAck,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from ddg.election.timing import TIMINGS, JointTiming, Timing
from ddg_testkit.sim import Sim

T = Timing()
LEASE = T.lease  # 0.08 s: answers `goose` this long after a round a quorum acked
QT = T.quorum_timeout  # 0.12 s: steps down this long after it
WAIT = T.lease_wait  # 0.1 s: a lease heard of may run this long on another clock
EM = T.election_min  # 0.15 s


def make(name: str, members: list[str] | frozenset[str], *, now: float = 0.0,
         hard: HardState | None = None, seed: int = 0) -> Election:
    return Election(name=name, timing=T, rng=random.Random(seed), now=now,
                    members=frozenset(members), hard=hard)


class Cluster:
    """Cores wired by an instant, synchronous network (requests and their replies)."""

    def __init__(self, n: int, *, now: float = 0.0) -> None:
        self.names = [f"n{i}" for i in range(1, n + 1)]
        self.nodes = {nm: make(nm, self.names, now=now, seed=i)
                      for i, nm in enumerate(self.names)}
        self.disk: dict[str, HardState] = {nm: HardState() for nm in self.names}
        self.blocked: Callable[[str, str], bool] = lambda a, b: False
        self.log: list[tuple[str, str, Message]] = []

    def _persist(self, name: str, out: Output) -> None:
        if out.persist is not None:
            self.disk[name] = out.persist
            self.nodes[name].persisted(out.persist)

    def run(self, src: str, out: Output, now: float) -> None:
        self._persist(src, out)
        queue = [(src, s.to, s.msg) for s in out.sends]
        while queue:
            a, b, msg = queue.pop(0)
            if self.blocked(a, b) or b not in self.nodes:
                continue
            self.log.append((a, b, msg))
            got = self.nodes[b].step(msg, now)
            self._persist(b, got)
            queue += [(b, s.to, s.msg) for s in got.sends]
            if got.reply is not None and not self.blocked(b, a):
                self.log.append((b, a, got.reply))
                back = self.nodes[a].step(got.reply, now)
                self._persist(a, back)
                queue += [(a, s.to, s.msg) for s in back.sends]

    def tick(self, name: str, now: float) -> None:
        self.run(name, self.nodes[name].tick(now), now)

    def elect(self, name: str, now: float) -> Election:
        node = self.nodes[name]
        node.election_deadline = min(node.election_deadline, now)
        self.tick(name, now)
        assert node.state is State.GOOSE
        return node


# ---- elections ---------------------------------------------------------------------------

def test_quorum_of() -> None:
    assert [quorum_of(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_single_node_elects_itself_with_a_lease() -> None:
    node = make("a", ["a"], now=10.0)
    assert node.next_deadline() >= 10.0 + EM
    assert node.tick(10.0).sends == []  # nothing to do before the timer fires
    now = node.next_deadline()
    out = node.tick(now)
    assert node.state is State.GOOSE and node.term == 1
    assert out.persist == HardState(1, "a")
    assert out.sends == []
    # the log's events: stable names, the term, and the text the log has always had
    assert [(e.name, e.fields["term"]) for e in out.events] == [("campaign", 1), ("elected", 1)]
    assert str(out.events[1]) == "won term 1 with 1/1 votes"
    assert node.is_goose(now) and node.lease_until == pytest.approx(now + LEASE)
    assert node.reported_role(now) == "goose"
    # It renews its own lease every heartbeat.
    node.tick(now + T.heartbeat)
    assert node.lease_until == pytest.approx(now + T.heartbeat + LEASE)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_cluster_elects_exactly_one_goose(n: int) -> None:
    sim = Sim(n, seed=n)
    sim.run_until(2.0)
    gooses = sim.gooses()
    assert len(gooses) == 1
    goose = sim.core(gooses[0])
    for name in sim.names:
        core = sim.core(name)
        assert core.term == goose.term
        if name != gooses[0]:
            assert core.state is State.DUCK and core.leader == gooses[0]
            assert core.reported_role(sim.nodes[name].local(sim.t)) == "duck"
    # A healthy cluster elects within a couple of election timeouts and then stays put.
    assert sim.elected_since(0.0) is not None and sim.elected_since(0.0) < 1.0
    assert len({w.term for w in sim.all_windows()}) == 1


def test_manual_election_of_three() -> None:
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    assert goose.term == 1 and goose.is_goose(1.0)
    assert goose.lease_until == pytest.approx(1.0 + LEASE)
    for nm in ("n2", "n3"):
        assert c.nodes[nm].leader == "n1" and c.nodes[nm].term == 1
    assert c.disk["n1"] == HardState(1, "n1")
    # Both peers granted their real vote (one vote each, for n1).
    assert {c.disk["n2"].voted_for, c.disk["n3"].voted_for} <= {"n1", None}
    assert "n1" in {c.disk["n2"].voted_for, c.disk["n3"].voted_for}


# ---- votes -------------------------------------------------------------------------------

def test_one_vote_per_term() -> None:
    voter = make("v", ["a", "b", "v"])
    now = 1.0  # past the startup stickiness
    out = voter.step(VoteRequest(term=3, sender="a"), now)
    # it last heard a goose at its start, 1 s ago
    assert out.reply == VoteResponse(term=3, sender="v", granted=True, heard_us=1_000_000)
    out = voter.step(VoteRequest(term=3, sender="b"), now)
    assert out.reply == VoteResponse(term=3, sender="v", granted=False)
    # The same candidate asking again (a retry, a duplicate) gets the same answer.
    out = voter.step(VoteRequest(term=3, sender="a"), now)
    assert out.reply is not None and out.reply.granted
    assert voter.hard_state == HardState(3, "a")


def test_persist_is_on_the_output_that_grants_the_vote() -> None:
    voter = make("v", ["a", "v", "w"])
    out = voter.step(VoteRequest(term=7, sender="a"), 1.0)
    assert isinstance(out.reply, VoteResponse) and out.reply.granted
    assert out.persist == HardState(7, "a")
    assert voter.step(VoteRequest(term=7, sender="w"), 1.0).persist == HardState(7, "a"), (
        "until the shell says it is on disk, every output asks for it again")
    voter.persisted(HardState(7, "a"))
    # Refusing changes nothing on disk: no persist.
    out = voter.step(VoteRequest(term=7, sender="w"), 1.0)
    assert out.reply is not None and not out.reply.granted
    assert out.persist is None


def test_restart_with_persisted_vote_cannot_vote_twice_in_a_term() -> None:
    voter = make("v", ["a", "b", "v"])
    out = voter.step(VoteRequest(term=5, sender="a"), 1.0)
    assert out.persist == HardState(5, "a")
    reborn = make("v", ["a", "b", "v"], now=50.0, hard=out.persist)
    later = 50.0 + 2 * EM  # well past the startup stickiness
    out = reborn.step(VoteRequest(term=5, sender="b"), later)
    assert out.reply == VoteResponse(term=5, sender="v", granted=False)
    assert reborn.step(VoteRequest(term=5, sender="a"), later).reply.granted  # type: ignore[union-attr]
    # A restart without the vote on disk would have granted it: the test can fail.
    amnesiac = make("v", ["a", "b", "v"], now=50.0, hard=HardState(5, None))
    assert amnesiac.step(VoteRequest(term=5, sender="b"), later).reply.granted  # type: ignore[union-attr]


def test_startup_counts_as_having_heard_a_goose() -> None:
    node = make("v", ["a", "b", "v"], now=100.0)
    for msg in (VoteRequest(term=9, sender="a"), VoteRequest(term=9, sender="a", pre_vote=True)):
        out = node.step(msg, 100.0 + EM * 0.99)
        assert out.reply is not None and not out.reply.granted
    assert node.term == 0
    out = node.step(VoteRequest(term=9, sender="a"), 100.0 + EM)
    assert out.reply is not None and out.reply.granted


def test_pre_vote_does_not_raise_terms() -> None:
    c = Cluster(3)
    c.nodes["n1"].election_deadline = 1.0
    c.blocked = lambda a, b: b == "n1"  # n1 hears no answers: a pre-vote that gets nowhere
    c.tick("n1", 1.0)
    n1 = c.nodes["n1"]
    assert n1.state is State.PRE_CANDIDATE and n1.term == 0
    reqs = [m for a, _, m in c.log if a == "n1"]
    assert reqs and all(isinstance(m, VoteRequest) and m.pre_vote and m.term == 1 for m in reqs)
    assert all(node.term == 0 for node in c.nodes.values())
    assert all(d == HardState() for d in c.disk.values())  # nothing written anywhere
    # Granting a pre-vote changes nothing either.
    voter = make("v", ["a", "v", "w"])
    out = voter.step(VoteRequest(term=4, sender="a", pre_vote=True), 1.0)
    assert out.reply == VoteResponse(term=4, sender="v", granted=True, pre_vote=True)
    assert out.persist is None and voter.term == 0 and voter.voted_for is None
    # Repeated timeouts in a minority never raise the term.
    for k in range(20):
        c.tick("n1", n1.election_deadline + 0.001 * k)
    assert n1.term == 0 and c.disk["n1"] == HardState()


def test_stickiness_refuses_votes_while_a_goose_is_heard() -> None:
    duck = make("d", ["g", "d", "x"])
    out = duck.step(Heartbeat(term=2, sender="g", seq=1), 5.0)
    assert out.reply == HeartbeatAck(term=2, sender="d", seq=1, success=True)
    assert out.persist is not None
    duck.persisted(out.persist)
    for pre in (True, False):
        out = duck.step(VoteRequest(term=3, sender="x", pre_vote=pre), 5.0 + EM * 0.9)
        assert out.reply == VoteResponse(term=2, sender="d", granted=False, pre_vote=pre)
        assert out.persist is None
    assert duck.term == 2 and duck.leader == "g"
    # Past election_min without a heartbeat the goose is presumed dead.
    out = duck.step(VoteRequest(term=3, sender="x"), 5.0 + EM)
    assert out.reply == VoteResponse(term=3, sender="d", granted=True,
                                     heard_us=round(EM * 1e6))
    assert out.persist == HardState(3, "x")


def test_goose_refuses_rivals_while_it_holds_on() -> None:
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    out = goose.step(VoteRequest(term=5, sender="n2"), 1.05)
    assert out.reply is not None and not out.reply.granted
    assert goose.term == 1 and goose.state is State.GOOSE


def test_rejoining_partitioned_node_does_not_depose_a_live_goose() -> None:
    sim = Sim(3, seed=11)
    sim.run_until(1.0)
    [goose] = sim.gooses()
    term = sim.core(goose).term
    loner = next(n for n in sim.names if n != goose)
    sim.isolate(loner)
    sim.run_until(4.0)  # the loner times out again and again
    assert sim.core(loner).term == term  # pre-vote: no term inflation
    assert sim.core(loner).counters.pre_votes_started >= 5
    sim.unisolate(loner)
    sim.run_until(6.0)
    assert sim.gooses() == [goose]
    assert all(sim.core(n).term == term for n in sim.names)
    assert sim.core(goose).counters.step_downs == 0
    assert sim.core(loner).leader == goose


def test_higher_term_in_an_ack_steps_the_goose_down() -> None:
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    out = goose.step(HeartbeatAck(term=4, sender="n2", seq=1, success=False), 1.01)
    assert goose.state is State.DUCK and goose.term == 4 and not goose.is_goose(1.01)
    assert out.persist == HardState(4, None)
    assert goose.counters.step_downs_by == {StepDown.HIGHER_TERM: 1}
    [event] = [e for e in out.events if e.name == "stepped_down"]
    assert event.fields == {"term": 1, "reason": "higher_term", "saw_term": 4}


def test_stale_goose_is_told_its_term_is_over() -> None:
    duck = make("d", ["g", "d", "x"])
    duck.step(Heartbeat(term=6, sender="x", seq=1), 1.0)
    out = duck.step(Heartbeat(term=5, sender="g", seq=9), 1.01)
    assert out.reply == HeartbeatAck(term=6, sender="d", seq=9, success=False)
    assert duck.leader == "x" and duck.last_heard == 1.0


# ---- the lease ---------------------------------------------------------------------------

def test_lease_expiry_stops_goose_answers_and_the_quorum_timeout_steps_down() -> None:
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    assert goose.lease_until == pytest.approx(1.0 + LEASE)
    c.blocked = lambda a, b: "n1" in (a, b)  # the goose is cut off
    now = 1.0
    deadlines = []
    while goose.state is State.GOOSE:
        assert now <= 1.0 + QT + 1e-9
        assert goose.is_goose(now) == (now < 1.0 + LEASE)
        now = goose.next_deadline()
        deadlines.append(now)
        c.tick("n1", now)
    assert 1.0 + LEASE in deadlines  # the shell is woken when the answer changes
    assert now == pytest.approx(1.0 + QT)
    assert goose.state is State.DUCK and not goose.is_goose(now)
    assert goose.counters.step_downs == 1 and goose.term == 1
    assert goose.counters.step_downs_by == {StepDown.LOST_QUORUM: 1}
    # a pre-vote won, an election started and won: the counters the metrics export
    c = goose.counters
    assert (c.pre_votes_started, c.pre_votes_won, c.elections_started, c.elections_won) == (
        1, 1, 1, 1)


def test_a_round_without_a_quorum_goes_again_to_the_ducks_that_did_not_ack() -> None:
    """One lost packet must not end the lease: halfway through the slack (lease - heartbeat),
    the newest round goes again, once, only to the ducks that have not acknowledged it, and
    the lease still counts from its first sending."""
    goose = make("n1", ["n1", "n2", "n3", "n4", "n5"], now=0.0)
    goose.election_deadline = 0.0
    goose.tick(0.0)
    for voter in ("n2", "n3"):
        goose.step(VoteResponse(term=1, sender=voter, granted=True, pre_vote=True), 0.0)
    for voter in ("n2", "n3"):
        goose.step(VoteResponse(term=1, sender=voter, granted=True), 0.001)
    assert goose.state is State.GOOSE
    for duck in ("n2", "n3"):  # round 1 (sent when elected) acked by a quorum
        goose.step(HeartbeatAck(term=1, sender=duck, seq=1, success=True), 0.002)
    t2 = goose.next_heartbeat
    assert goose.next_deadline() == pytest.approx(t2)  # round 1 is not sent again
    out = goose.tick(t2)  # round 2
    assert {s.to for s in out.sends} == {"n2", "n3", "n4", "n5"} and goose.seq == 2
    goose.step(HeartbeatAck(term=1, sender="n4", seq=2, success=True), t2 + 0.002)
    resend = t2 + (LEASE - T.heartbeat) / 2
    assert goose.next_deadline() == pytest.approx(resend)
    out = goose.tick(resend)
    assert sorted(s.to for s in out.sends) == ["n2", "n3", "n5"]
    # the round's first sending, which its lease counts from
    assert all(s.msg == Heartbeat(term=1, sender="n1", seq=2, sent_us=round(t2 * 1e6))
               for s in out.sends)
    assert goose.tick(resend + 0.001).sends == []  # once
    goose.step(HeartbeatAck(term=1, sender="n5", seq=2, success=True), resend + 0.002)
    assert goose.lease_until == pytest.approx(t2 + LEASE)  # from the first sending


def test_lease_starts_at_the_send_time_of_the_acked_round() -> None:
    goose = Cluster(3).elect("n1", 1.0)
    goose.tick(1.05)  # round 2 sent at 1.05
    assert goose.seq == 2
    # An ack of round 2 arriving late extends the lease from the send time, not from now.
    goose.step(HeartbeatAck(term=1, sender="n2", seq=2, success=True), 1.1)
    assert goose.lease_until == pytest.approx(1.05 + LEASE)
    # An older round acked afterwards (reordered) cannot pull the lease back.
    goose.step(HeartbeatAck(term=1, sender="n3", seq=1, success=True), 1.11)
    assert goose.lease_until == pytest.approx(1.05 + LEASE)
    # Failed or foreign-term acks do not count.
    goose.tick(1.1)
    goose.step(HeartbeatAck(term=1, sender="n2", seq=3, success=False), 1.12)
    goose.step(HeartbeatAck(term=0, sender="n3", seq=3, success=True), 1.12)
    assert goose.lease_until == pytest.approx(1.05 + LEASE)


def test_paused_goose_resumed_after_its_lease_reports_duck_at_once() -> None:
    goose = Cluster(3).elect("n1", 1.0)
    assert goose.is_goose(1.0 + LEASE - 1e-6)
    resumed = 1.0 + 10.0  # SIGSTOP for ten seconds: the next reading is far on
    # No tick yet: the role is still GOOSE inside, but nobody may be told so.
    assert goose.state is State.GOOSE
    assert not goose.is_goose(resumed)
    assert goose.reported_role(resumed) == "duck"
    assert goose.known_goose(resumed) is None
    assert goose.lease_remaining(resumed) is None
    # Nor may late acks of the rounds before the pause revive it.
    goose.step(HeartbeatAck(term=1, sender="n2", seq=1, success=True), resumed)
    assert not goose.is_goose(resumed)
    goose.tick(resumed)
    assert goose.state is State.DUCK


# ---- transfer and membership -------------------------------------------------------------

@pytest.mark.parametrize("trusted", [True, False])
def test_transfer_via_timeout_now_elects_the_target_quickly(trusted: bool) -> None:
    sim = Sim(3, seed=5, trust_transfers=trusted)
    sim.run_until(1.0)
    [old] = sim.gooses()
    t0 = sim.t
    assert sim.transfer() == old
    assert sim.gooses() == []  # the old goose gives up its lease at once
    assert sim.core(old).state is State.DUCK
    # Signed (trusted) hand-overs take a round trip; unsigned ones wait out the old lease
    # (at most Tmin after the voters' last heartbeat), still inside every duck's stickiness
    # plus a little.
    bound = 0.05 if trusted else EM + 0.01
    sim.run_until(t0 + bound)
    [new] = sim.gooses()
    assert new != old
    assert sim.core(new).term == sim.core(old).term
    assert sim.core(new).counters.elections_started == 1
    assert sim.core(new).counters.pre_votes_started == 0  # no pre-vote, straight to votes
    took = min(w.start for w in sim.all_windows() if w.node == new and w.start >= t0) - t0
    assert took < bound
    if not trusted:
        assert took > EM / 4  # it did wait


def test_transfer_picks_the_most_up_to_date_duck() -> None:
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    c.blocked = lambda a, b: (a, b) == ("n1", "n2")
    c.tick("n1", 1.05)  # round 2 reaches n3 only
    out = goose.transfer_leadership(1.06)
    assert out.sends == [type(out.sends[0])("n3", TimeoutNow(term=1, sender="n1"))]
    assert goose.state is State.DUCK and not goose.is_goose(1.06)
    assert goose.counters.transfers == 1
    assert goose.counters.step_downs_by == {StepDown.HANDOVER: 1}


def test_timeout_now_of_another_term_is_ignored() -> None:
    duck = make("d", ["g", "d", "x"])
    duck.step(Heartbeat(term=3, sender="g", seq=1), 1.0)
    out = duck.step(TimeoutNow(term=2, sender="g"), 1.01)
    assert out.sends == [] and duck.term == 3 and duck.state is State.DUCK


def test_timeout_now_from_anyone_but_the_goose_is_ignored() -> None:
    """Else a duck could campaign past stickiness while the real goose still holds its lease."""
    duck = make("d", ["g", "d", "x"])
    duck.step(Heartbeat(term=3, sender="g", seq=1), 1.0)
    out = duck.step(TimeoutNow(term=3, sender="x"), 1.01)
    assert out.sends == [] and duck.term == 3 and duck.state is State.DUCK and duck.leader == "g"


def test_transfer_request_skips_stickiness() -> None:
    duck = make("d", ["g", "d", "t"])
    duck.step(Heartbeat(term=3, sender="g", seq=1), 1.0)
    out = duck.step(VoteRequest(term=4, sender="t", transfer=True), 1.01)
    # it heard the goose 10 ms ago: the new goose must wait out that goose's lease
    assert out.reply == VoteResponse(term=4, sender="d", granted=True, heard_us=10_000)
    assert out.persist == HardState(4, "t")


def test_removal_via_set_membership() -> None:
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    out = goose.set_membership(frozenset({"n2", "n3"}), 1, 1.01)
    assert goose.state is State.REMOVED and not goose.is_goose(1.01)
    assert goose.reported_role(1.01) == "duck"
    assert goose.next_deadline() == math.inf
    assert [e.name for e in out.events] == ["removed"] and out.events[0].fields["version"] == 1
    assert goose.counters.step_downs_by == {StepDown.REMOVED: 1}  # a goose removed steps down
    assert goose.tick(5.0).sends == []
    assert goose.step(VoteRequest(term=9, sender="n2"), 5.0).reply is None
    # An older version cannot undo it; a newer one that lists the node again can.
    goose.set_membership(frozenset({"n1", "n2", "n3"}), 0, 5.0)
    assert goose.state is State.REMOVED
    goose.set_membership(frozenset({"n1", "n2", "n3"}), 2, 5.0)
    assert goose.state is State.DUCK and goose.next_deadline() > 5.0


def test_messages_from_non_members_are_ignored() -> None:
    duck = make("d", ["g", "d", "x"])
    out = duck.step(VoteRequest(term=9, sender="stranger"), 5.0)
    assert out.reply is None and duck.term == 0
    out = duck.step(Heartbeat(term=9, sender="d", seq=1), 5.0)  # claims to be us
    assert out.reply is None and duck.term == 0


def test_quorum_shrink_lets_a_candidate_win() -> None:
    names = ["a", "b", "c", "d", "e"]
    cand = make("a", names)
    cand.election_deadline = 1.0
    cand.tick(1.0)
    cand.step(VoteResponse(term=1, sender="b", granted=True, pre_vote=True), 1.0)
    cand.step(VoteResponse(term=1, sender="c", granted=True, pre_vote=True), 1.0)
    assert cand.state is State.CANDIDATE and cand.term == 1
    cand.step(VoteResponse(term=1, sender="b", granted=True), 1.01)
    assert cand.state is State.CANDIDATE  # 2 of 5
    out = cand.set_membership(frozenset({"a", "b", "d"}), 1, 1.02)  # quorum 3 -> 2
    assert cand.state is State.GOOSE and cand.term == 1
    assert [s.msg for s in out.sends] == [Heartbeat(term=1, sender="a", seq=1,
                                                    sent_us=1_020_000)] * 2


def test_quorum_shrink_lets_a_pre_candidate_campaign() -> None:
    cand = make("a", ["a", "b", "c", "d"])
    cand.election_deadline = 1.0
    cand.tick(1.0)
    cand.step(VoteResponse(term=1, sender="b", granted=True, pre_vote=True), 1.0)
    assert cand.state is State.PRE_CANDIDATE
    out = cand.set_membership(frozenset({"a", "b", "c"}), 1, 1.01)
    assert cand.state is State.CANDIDATE and cand.term == 1
    assert out.persist == HardState(1, "a")


# ---- membership versions (docs/design.md, "One change at a time is safe") --------------------

def test_a_candidate_or_goose_of_an_older_version_gets_no_vote_and_no_ack() -> None:
    duck = Election(name="d", timing=T, rng=random.Random(0), now=0.0,
                    members=frozenset({"g", "d", "x"}), version=5)
    for pre in (True, False):
        out = duck.step(VoteRequest(term=1, sender="x", pre_vote=pre), 1.0, version=4)
        assert out.reply == VoteResponse(term=0, sender="d", granted=False, pre_vote=pre)
        assert duck.term == 0 and duck.voted_for is None
    out = duck.step(Heartbeat(term=1, sender="g", seq=1), 1.0, version=4)
    assert out.reply == HeartbeatAck(term=0, sender="d", seq=1, success=False)
    assert duck.leader is None and duck.term == 0
    # the same version, a newer one, or none known: as always
    for seq, version in ((2, 5), (3, 9), (4, None)):
        reply = duck.step(Heartbeat(term=1, sender="g", seq=seq), 1.0, version).reply
        assert isinstance(reply, HeartbeatAck) and reply.success
    # a goose acked by a duck of a newer version counts it as before
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    goose.step(HeartbeatAck(term=1, sender="n2", seq=goose.seq, success=True), 1.01, 7)
    assert goose.is_goose(1.01)


def test_a_membership_version_carries_a_term_floor() -> None:
    """A newer version raises the term to its floor (a goose below it steps down), and a
    candidate of the floor's own term gives up: that term may have been won two changes
    back. A new process starts at the floor (persisted with its first output)."""
    c = Cluster(3)
    goose = c.elect("n1", 1.0)
    out = goose.set_membership(frozenset(c.names), 1, 1.01, term_floor=1)
    assert goose.state is State.GOOSE and out.persist is None  # at the floor: nothing to do
    out = goose.set_membership(frozenset(c.names), 2, 1.02, term_floor=3)
    assert goose.state is State.DUCK and goose.term == 3 and goose.voted_for is None
    assert out.persist == HardState(3, None)
    assert goose.counters.step_downs_by == {StepDown.HIGHER_TERM: 1}
    cand = make("a", ["a", "b", "c", "d", "e"])
    cand.election_deadline = 1.0
    cand.tick(1.0)
    for voter in ("b", "c"):
        cand.step(VoteResponse(term=1, sender=voter, granted=True, pre_vote=True), 1.0)
    assert cand.state is State.CANDIDATE and cand.term == 1
    out = cand.set_membership(frozenset({"a", "b", "c", "d", "e", "f"}), 1, 1.01,
                              term_floor=1)
    assert cand.state is State.DUCK and cand.term == 1 and cand.voted_for == "a"
    assert [e.name for e in out.events] == ["campaign_abandoned"]
    fresh = Election(name="n", timing=T, rng=random.Random(0), now=0.0,
                     members=frozenset({"n", "m"}), hard=HardState(2, "m"), term_floor=7)
    assert fresh.term == 7 and fresh.voted_for is None
    assert fresh.tick(0.0).persist == HardState(7, None)
    kept = Election(name="n", timing=T, rng=random.Random(0), now=0.0,
                    members=frozenset({"n", "m"}), hard=HardState(9, "m"), term_floor=7)
    assert kept.hard_state == HardState(9, "m") and kept.tick(0.0).persist is None


def test_a_version_is_settled_a_lease_wait_after_it_is_adopted() -> None:
    """The shell confirms a version only once every lease acked under an older one has
    ended: lease_wait after the adoption, or after a new process started."""
    duck = make("d", ["g", "d"], now=10.0)
    assert not duck.membership_settled(10.0 + WAIT - 1e-6)
    assert duck.membership_settled(10.0 + WAIT)
    duck.set_membership(frozenset({"g", "d", "x"}), 2, 20.0)
    assert duck.membership_settles_at == 20.0 + WAIT
    assert not duck.membership_settled(20.05) and duck.membership_settled(20.0 + WAIT)
    duck.set_membership(frozenset({"g", "d", "x"}), 1, 30.0)  # older: ignored
    assert duck.membership_settles_at == 20.0 + WAIT


# ---- duplicates and reordering -----------------------------------------------------------

def test_duplicated_vote_responses_count_once() -> None:
    names = ["a", "b", "c", "d", "e"]
    cand = make("a", names)
    cand.election_deadline = 1.0
    cand.tick(1.0)
    for _ in range(3):
        cand.step(VoteResponse(term=1, sender="b", granted=True, pre_vote=True), 1.0)
    assert cand.state is State.PRE_CANDIDATE and cand.term == 0
    cand.step(VoteResponse(term=1, sender="c", granted=True, pre_vote=True), 1.0)
    assert cand.state is State.CANDIDATE
    for _ in range(3):
        cand.step(VoteResponse(term=1, sender="b", granted=True), 1.0)
    assert cand.state is State.CANDIDATE
    # A pre-vote grant arriving late (reordered) is no real vote.
    cand.step(VoteResponse(term=1, sender="d", granted=True, pre_vote=True), 1.0)
    assert cand.state is State.CANDIDATE
    cand.step(VoteResponse(term=1, sender="d", granted=True), 1.0)
    assert cand.state is State.GOOSE


def test_duplicated_acks_count_once() -> None:
    c = Cluster(5)
    goose = c.elect("n1", 1.0)
    c.blocked = lambda a, b: a == "n1"  # nothing gets out: we hand-deliver the acks
    c.tick("n1", 1.05)
    before = goose.lease_until
    for _ in range(4):
        goose.step(HeartbeatAck(term=1, sender="n2", seq=2, success=True), 1.06)
    assert goose.lease_until == before  # 2 of 5
    goose.step(HeartbeatAck(term=1, sender="n3", seq=2, success=True), 1.06)
    assert goose.lease_until == pytest.approx(1.05 + LEASE)


def test_duplicate_timeout_now_does_not_start_a_second_campaign() -> None:
    duck = make("d", ["g", "d", "x"])
    duck.step(Heartbeat(term=3, sender="g", seq=1), 1.0)
    first = duck.step(TimeoutNow(term=3, sender="g"), 1.01)
    assert duck.state is State.CANDIDATE and duck.term == 4
    assert all(isinstance(s.msg, VoteRequest) and s.msg.transfer for s in first.sends)
    again = duck.step(TimeoutNow(term=3, sender="g"), 1.02)
    assert again.sends == [] and duck.term == 4


def test_old_vote_requests_arriving_late_are_refused() -> None:
    voter = make("v", ["a", "b", "v"])
    voter.step(VoteRequest(term=4, sender="b"), 1.0)
    out = voter.step(VoteRequest(term=3, sender="a"), 1.1)
    assert out.reply == VoteResponse(term=4, sender="v", granted=False)
    assert voter.hard_state == HardState(4, "b")


def test_heartbeat_replayed_to_a_restarted_node_is_harmless() -> None:
    c = Cluster(3)
    c.elect("n1", 1.0)
    hb = Heartbeat(term=1, sender="n1", seq=1)
    reborn = make("n2", c.names, now=1.2, hard=c.disk["n2"])
    for _ in range(2):
        out = reborn.step(hb, 1.2)
        assert out.reply == HeartbeatAck(term=1, sender="n2", seq=1, success=True)
    assert reborn.hard_state == c.disk["n2"]


# ---- set_timing: the cluster's timing changes under a running core -------------------------

FAST = TIMINGS["fast"]
JOINT = JointTiming.of([T, FAST])


def test_a_timing_change_keeps_the_granted_lease_and_shortens_the_next() -> None:
    goose = Cluster(3).elect("n1", 1.0)
    until = goose.lease_until
    out = goose.set_timing(JOINT, 1.01)
    assert [e.name for e in out.events] == ["timing_changed"] and out.sends == []
    assert goose.lease_until == until  # granted: kept to its end
    assert goose.timing is JOINT and goose.is_goose(1.01)
    goose.tick(1.05)  # the next round, under the joint timing's lease
    goose.step(HeartbeatAck(term=1, sender="n2", seq=goose.seq, success=True), 1.051)
    assert goose.lease_until == pytest.approx(max(until, 1.05 + JOINT.lease))
    assert goose.next_heartbeat == pytest.approx(1.05 + JOINT.heartbeat)
    # its old leases (under T) have surely ended a wait of T after the change
    assert not goose.timing_settled(1.01 + WAIT - 0.001)
    assert goose.timing_settled(1.01 + WAIT)


def test_a_longer_lease_is_not_earned_by_rounds_sent_before_the_change() -> None:
    goose = Cluster(3).elect("n1", 1.0)
    goose.set_timing(FAST, 1.0)
    while goose.next_heartbeat < 1.0 + T.lease:  # past the lease its election granted
        goose.tick(goose.next_heartbeat)
        goose.step(HeartbeatAck(term=1, sender="n2", seq=goose.seq, success=True),
                   goose.next_heartbeat - FAST.heartbeat + 0.001)
    goose.tick(goose.next_heartbeat)  # a round under fast's 30 ms lease
    sent, seq = goose.sent_at[goose.seq], goose.seq
    goose.set_timing(T, sent + 0.001)  # to default's 80 ms before its acks arrive
    goose.step(HeartbeatAck(term=1, sender="n2", seq=seq, success=True), sent + 0.002)
    # the round in flight still counts (dropping it made the goose answer duck a moment:
    # review16 #3), with the lease it was sent under
    assert goose.lease_until == pytest.approx(sent + FAST.lease)
    # a candidate keeps the lease its campaign started with
    cand = make("n1", ["n1", "n2", "n3"], now=0.0, seed=1)
    cand.set_timing(FAST, 0.0)
    cand.election_deadline = 0.5
    cand.tick(0.5)
    for voter in ("n2",):
        cand.step(VoteResponse(term=1, sender=voter, granted=True, pre_vote=True), 0.5)
    assert cand.state is State.CANDIDATE
    cand.set_timing(T, 0.501)
    cand.step(VoteResponse(term=1, sender="n2", granted=True), 0.502)
    assert cand.state is State.GOOSE
    assert cand.lease_until == pytest.approx(0.5 + FAST.lease)


def test_a_shorter_heartbeat_holds_from_the_last_round_not_the_old_schedule() -> None:
    """review16 #3: the next round on the old schedule came after the new, shorter lease of
    the last one had ended: the goose answered duck for a moment."""
    goose = Cluster(3).elect("n1", 1.0)
    last = goose.next_heartbeat - T.heartbeat
    resend = goose.resend_at
    goose.set_timing(JOINT, last + 0.001)
    assert goose.next_heartbeat == pytest.approx(last + JOINT.heartbeat)
    assert goose.resend_at <= resend  # never later than it was
    goose.set_timing(T, last + 0.002)  # a longer heartbeat: the round due comes when it was
    assert goose.next_heartbeat == pytest.approx(last + JOINT.heartbeat)


def test_a_timing_change_alone_moves_no_timer_and_stickiness_reads_the_new_value() -> None:
    c = Cluster(3)
    c.elect("n1", 1.0)
    duck = c.nodes["n2"]
    deadline = duck.election_deadline
    assert duck.sticky(1.0 + FAST.election_min + 0.01)  # default: sticky for 150 ms
    out = duck.set_timing(FAST, 1.0)
    assert duck.election_deadline == deadline and out.sends == [] and duck.state is State.DUCK
    assert not duck.sticky(1.0 + FAST.election_min + 0.01)
    assert duck.set_timing(JointTiming.of([FAST]), 1.1).events == []  # the same values
    assert duck.timing_settled(1.0 + WAIT)
