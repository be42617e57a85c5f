"""Clock-rate evidence (ddg/election/clockrate.py) and what the core does with it, without
processes: the bounds are sound, a majority's contradiction stops a node leading, a clock inside the
bound leads as before; in the simulator, a goose at half speed is gone before a hinted cut finds it.
The same with real processes under libfaketime: tests/node/test_clock_faketime.py."""

from __future__ import annotations

import random

import pytest

from ddg.client import ClockInfo, NodeStatus, Role, StatusFormatError
from ddg.election.clockrate import (
    WINDOW,
    ClockCheck,
    PeerEvidence,
    Reading,
    Verdict,
    max_rate_error,
    rate_bounds,
    to_us,
)
from ddg.election.core import Election, State, StepDown
from ddg.election.messages import Heartbeat, HeartbeatAck, TimeoutNow, VoteRequest, VoteResponse
from ddg.election.timing import Timing
from ddg_testkit.sim import Net, NoClockCheck, Sim

T = Timing()
BOUND = max_rate_error(T.drift_margin)


def test_the_bound_is_what_the_margin_leaves() -> None:
    assert BOUND == pytest.approx(1 / 9)  # 11.1 % with the default margin 0.8
    # a lease L on a clock (1 + e) slow ends when a wait L / margin on one (1 - e) fast does
    lease = 0.08
    assert lease * (1 + BOUND) == pytest.approx(lease / T.drift_margin * (1 - BOUND))
    assert to_us(1.5) == 1_500_000 and to_us(-1.0) is None and to_us(2.0**53) is None


@pytest.mark.parametrize("rate", [0.5, 0.9, 1.0, 1.05, 2.0])
def test_two_way_bounds_always_hold_the_true_rate(rate: float) -> None:
    """A goose whose clock runs at RATE x real time, its duck's at 1: round trips of random
    length, sent late by a random stall (a loaded goose), acked late: the true ratio is always
    inside the bounds, which narrow as the readings get further apart."""
    rng = random.Random(int(rate * 100))
    readings = []
    t = 100.0  # real time
    for _ in range(60):
        t += 0.05 + rng.uniform(0, 0.03)
        stamped = rate * t  # the goose's clock as it stamps the round
        arrives = t + rng.uniform(0, 0.02) + rng.expovariate(1 / 0.002)  # stalls + network
        acked = arrives + rng.expovariate(1 / 0.002)
        readings.append(Reading(lo=stamped, hi=rate * acked, peer=arrives))
    for i in range(0, 50, 7):
        for j in range(i + 1, 60, 5):
            bounds = rate_bounds(readings[i], readings[j])
            assert bounds is not None
            assert bounds[0] <= rate <= bounds[1]
    low, high = rate_bounds(readings[0], readings[-1]) or (0, 0)
    assert high - low < 0.05 * rate  # 3 s apart: a few ms of round trip is noise


def test_evidence_keeps_the_tightest_reading_of_each_slot_and_forgets_old_ones() -> None:
    ev = PeerEvidence(window=4.0, buckets=16)  # slots of 0.25 s
    assert ev.bounds(0.0) is None
    ev.add(Reading(lo=10.0, hi=10.010, peer=500.0))
    assert ev.bounds(10.01) is None  # one reading says nothing of a rate
    ev.add(Reading(lo=10.05, hi=10.051, peer=500.05))  # same slot, tighter: replaces
    ev.add(Reading(lo=10.1, hi=10.130, peer=500.1))  # same slot, looser: kept as the latest
    low, high = ev.bounds(10.2) or (0, 0)
    assert low < 1 < high
    for k in range(1, 40):  # ten seconds of readings every 0.25 s
        t = 10.1 + 0.25 * k
        ev.add(Reading(lo=t, hi=t + 0.002, peer=500.1 + 0.25 * k))
    last = ev.latest
    assert last is not None and len(ev._slots) <= 17 and ev._slots[0][1].hi >= last.hi - 4.0
    assert ev.bounds(last.hi) is not None
    assert ev.bounds(last.hi + 4.1) is None  # aged out
    ev.add(Reading(lo=30.0, hi=30.001, peer=3.0))  # its clock went back: another process
    assert len(ev._slots) == 1 and ev.bounds(30.001) is None


def feed(check: ClockCheck, rates: dict[str, float], *, seconds: float, own: float = 1.0,
         start: float = 50.0, rtt: float = 0.002) -> float:
    """Every 50 ms a round to each peer, acked: this clock at OWN, each peer's at its RATE.
    Returns this node's clock at the end."""
    t = start
    seq = int(start * 1000)
    while t < start + seconds:
        seq += 1
        check.sent(seq, own * t)
        for peer, rate in rates.items():
            check.acked(peer, seq=seq, peer_clock=rate * (t + rtt / 2) + 1000,
                        received=own * (t + rtt))
        t += 0.05
    return own * t


def test_a_majority_contradicting_this_clock_is_needed_and_enough() -> None:
    peers = frozenset({"b", "c", "d", "e"})  # 5 members: 3 peers make a majority
    check = ClockCheck()
    now = feed(check, {"b": 2.0, "c": 2.0, "d": 1.0, "e": 1.0}, seconds=1.0)
    assert check.verdict("b", now, BOUND) is Verdict.CONTRADICTS
    assert check.verdict("d", now, BOUND) is Verdict.AGREES
    assert check.update(peers, 3, now, BOUND) is None and not check.contradicted  # 2 of 5
    check = ClockCheck()
    now = feed(check, {"b": 2.0, "c": 2.0, "d": 2.0, "e": 1.0}, seconds=1.0)
    assert check.update(peers, 3, now, BOUND) is True and check.contradicted
    assert check.contradicting(peers, now, BOUND) == ["b", "c", "d"]
    assert check.rates(now)["b"] == pytest.approx(0.5, abs=0.01)
    # A bare quorum of a five-node cluster running cannot make a majority: no verdict.
    check = ClockCheck()
    now = feed(check, {"b": 2.0, "c": 2.0}, seconds=1.0)
    assert check.update(peers, 3, now, BOUND) is None


@pytest.mark.parametrize("own", [0.95, 1.05, 0.9])
def test_a_clock_inside_the_bound_is_never_contradicted(own: float) -> None:
    peers = frozenset({"b", "c", "d", "e"})
    check = ClockCheck()
    now = feed(check, dict.fromkeys(peers, 1.0), seconds=10.0, own=own)
    assert check.update(peers, 3, now, BOUND) is None and not check.contradicted
    assert all(r == pytest.approx(own, abs=0.005) for r in check.rates(now).values())
    if own != 0.9:  # 0.9 is a hair inside 1 - 1/9: the bounds straddle it
        assert {check.verdict(p, now, BOUND) for p in peers} == {Verdict.AGREES}


def test_contradicted_holds_a_window_and_clears_only_when_a_peer_agrees() -> None:
    peers = frozenset({"b", "c"})
    check = ClockCheck()
    now = feed(check, {"b": 2.0, "c": 2.0}, seconds=1.0)
    assert check.update(peers, 2, now, BOUND) is True
    # its evidence ages out: nothing agrees, so it stays contradicted
    assert check.update(peers, 2, now + WINDOW + 1, BOUND) is None and check.contradicted
    # a duck now: its goose's heartbeats (one-way, at most a heartbeat in flight) agree
    t = now + WINDOW + 1
    for k in range(40):
        check.heard("b", peer_clock=5000 + 0.05 * k, received=t + 0.05 * k + 0.003,
                    delay=T.heartbeat)
    t += 2.0
    assert check.verdict("b", t, BOUND) is Verdict.AGREES
    assert check.update(peers, 2, t, BOUND) is False and not check.contradicted
    # and not before a window has passed since it was contradicted
    check = ClockCheck()
    now = feed(check, {"b": 2.0, "c": 2.0}, seconds=1.0)
    check.update(peers, 2, now, BOUND)
    now = feed(check, {"b": 1.0, "c": 1.0}, seconds=2.0, start=now + 0.05)
    assert check.update(peers, 2, now, BOUND) is None and check.contradicted
    now = feed(check, {"b": 1.0, "c": 1.0}, seconds=3.0, start=now + 0.05)
    assert check.update(peers, 2, now, BOUND) is False


def test_a_late_batch_of_heartbeats_does_not_make_a_duck_contradict_its_goose() -> None:
    """A duck paused for 0.6 s reads the queued heartbeats at once, all late: the slot keeps
    the least delayed reading, and the rate stays inside the bound."""
    check = ClockCheck()
    t = 10.0
    for k in range(80):  # 4 s of heartbeats
        sent = 100 + 0.05 * k
        arrives = t + 0.05 * k + 0.001
        if 1.0 <= 0.05 * k < 1.6:
            arrives = t + 1.6 + 0.001  # frozen: everything of those 0.6 s comes at once
        check.heard("g", peer_clock=sent, received=arrives, delay=T.heartbeat)
        assert check.verdict("g", arrives, BOUND) is not Verdict.CONTRADICTS, k


# ---- the core ------------------------------------------------------------------------------

NAMES = ["g", "a", "b", "c", "d"]


def elected(rate: float, *, real: float = 10.0) -> tuple[Election, float]:
    """G, a five-node cluster's goose whose clock runs at RATE x its ducks' (real time);
    elected at REAL. Returns it and the real time."""
    g = Election(name="g", timing=T, rng=random.Random(1), now=rate * real,
                 members=frozenset(NAMES))
    g.election_deadline = rate * real
    g.tick(rate * real)
    for d in NAMES[1:]:
        g.step(VoteResponse(term=1, sender=d, granted=True, pre_vote=True), rate * real)
    for d in NAMES[1:]:
        g.step(VoteResponse(term=1, sender=d, granted=True), rate * real)
    assert g.state is State.GOOSE
    return g, real


def rounds(g: Election, rate: float, real: float, seconds: float, *,
           acks: bool = True) -> tuple[float, list[str]]:
    """Run G's rounds for SECONDS of real time, every duck acking each 1 ms later (on its own,
    real clock); returns the real time and the names of the events."""
    events: list[str] = []
    end = real + seconds
    while real < end:
        real = min(max(real, g.next_deadline() / rate), end)
        out = g.tick(rate * real)
        events += [e.name for e in out.events]
        for s in out.sends:
            if acks and isinstance(s.msg, Heartbeat) and s.msg.sent_us is not None:
                back = HeartbeatAck(term=s.msg.term, sender=s.to, seq=s.msg.seq, success=True,
                                    received_us=to_us(real + 0.0005))
                events += [e.name for e in g.step(back, rate * (real + 0.001)).events]
        real += 0.0001
    return real, events


def test_a_goose_at_half_speed_steps_down_within_a_few_rounds() -> None:
    g, real = elected(0.5)
    t0 = real
    while g.state is State.GOOSE:
        real, events = rounds(g, 0.5, real, 0.01)
        assert real - t0 < 0.5
    assert "clock_contradicted" in events and "stepped_down" in events
    assert g.counters.step_downs_by == {StepDown.CLOCK_RATE: 1}
    assert g.clock.contradicted and g.snapshot(0.5 * real).clock_contradicted
    rates = g.snapshot(0.5 * real).clock_rates
    assert len(rates) >= 3 and all(r == pytest.approx(0.5, abs=0.01) for r in rates.values())
    detected = real - t0
    # It does not lead again: no campaign when its timer runs out, none on a hand-over...
    out = g.tick(g.election_deadline + 0.001)
    assert not out.sends and g.state is State.DUCK and g.counters.elections_started == 1
    g.step(Heartbeat(term=1, sender="a", seq=1, sent_us=to_us(real)), 0.5 * real + 1)
    assert g.leader == "a"
    out = g.step(TimeoutNow(term=1, sender="a"), 0.5 * real + 1.001)
    assert g.state is State.DUCK and g.term == 1 and not out.sends
    # ...and a vote it grants says it heard a goose just now: the candidate waits all of W.
    out = g.step(VoteRequest(term=2, sender="b"), 0.5 * real + 2)
    assert out.reply == VoteResponse(term=2, sender="g", granted=True, heard_us=0)
    assert detected < 0.3  # real seconds: ~3 rounds of its (slow) clock


def test_the_step_down_is_logged_as_an_error_with_the_peers() -> None:
    g, real = elected(0.5)
    events = []
    while g.state is State.GOOSE:
        out = g.tick(g.next_deadline())
        real = g.next_deadline() / 0.5
        events += out.events
        for s in out.sends:
            assert isinstance(s.msg, Heartbeat)
            back = HeartbeatAck(term=1, sender=s.to, seq=s.msg.seq, success=True,
                                received_us=to_us(real))
            events += g.step(back, 0.5 * real + 0.0005).events
    [ev] = [e for e in events if e.name == "clock_contradicted"]
    assert ev.error and ev.fields["peers"] in ("a,b,c", "a,b,c,d")  # a majority, at least
    assert "0.5" in ev.text and "11%" in ev.text


@pytest.mark.parametrize("rate", [0.95, 1.05])
def test_a_goose_inside_the_bound_keeps_leading(rate: float) -> None:
    g, real = elected(rate)
    real, events = rounds(g, rate, real, 6.0)
    assert g.state is State.GOOSE and g.is_goose(rate * real)
    assert "clock_contradicted" not in events and not g.clock.contradicted
    assert g.counters.step_downs == 0
    assert all(r == pytest.approx(rate, abs=0.01) for r in g.clock.rates(rate * real).values())


def test_acks_without_clock_readings_change_nothing() -> None:
    """Peers of an older version send no readings: no evidence, and the goose goes on."""
    g, real = elected(0.5)
    end = real + 2.0
    while real < end:
        real = g.next_deadline() / 0.5
        out = g.tick(0.5 * real)
        for s in out.sends:
            assert isinstance(s.msg, Heartbeat)
            g.step(HeartbeatAck(term=1, sender=s.to, seq=s.msg.seq, success=True),
                   0.5 * real + 0.0005)
    assert g.state is State.GOOSE and g.clock.rates(0.5 * real) == {}


def test_a_contradicted_duck_leads_again_once_its_goose_agrees() -> None:
    g, real = elected(0.5)
    while g.state is State.GOOSE:
        real, _ = rounds(g, 0.5, real, 0.01)
    # Its clock is sound again (the host's clock source fixed): from here on rate 1.
    now = 0.5 * real
    events: list[str] = []
    for k in range(int(2 * WINDOW / T.heartbeat)):
        out = g.step(Heartbeat(term=2, sender="a", seq=k + 1, sent_us=to_us(1000 + 0.05 * k)),
                     now + 0.05 * k + 0.001)
        events += [e.name for e in out.events]
    assert "clock_agreed" in events and not g.clock.contradicted
    out = g.tick(g.election_deadline)
    assert g.state is State.PRE_CANDIDATE and out.sends  # it may campaign again


def test_a_hand_over_prefers_a_duck_whose_clock_agrees() -> None:
    g, real = elected(1.0)
    # duck d (last in name order, first pick otherwise) acks with a clock at twice the speed
    end = real + 1.0
    while real < end:
        real = max(real, g.next_deadline())
        out = g.tick(real)
        for s in out.sends:
            assert isinstance(s.msg, Heartbeat)
            clock = (2 * real if s.to == "d" else real) + 0.0005
            g.step(HeartbeatAck(term=1, sender=s.to, seq=s.msg.seq, success=True,
                                received_us=to_us(clock)), real + 0.001)
        real += 0.0001
    assert g.state is State.GOOSE and not g.clock.contradicted
    out = g.transfer_leadership(real)
    assert [s.to for s in out.sends] == ["c"]


# ---- the simulator: hinted cuts ------------------------------------------------------------

def hinted_cuts(rate: float, cls: type[Election], cuts: int, seed: int = 1) -> Sim:
    """Five nodes, n1's clock at RATE. Each round: n1 takes over (its timer made to fire), and
    once it has led for a moment it is cut off while its ducks' crash-hint streams end (they
    campaign at once; the new goose relies on the lease wait), then healed."""
    sim = Sim(5, seed=seed, net=Net(lat_min=0.0002, lat_max=0.001), rates={"n1": rate},
              election_cls=cls)
    sim.run_until(1.0)
    for _ in range(cuts):
        goose = sim.gooses()
        if goose and goose != ["n1"]:  # cut the other goose off: n1 takes over, if it may
            sim.isolate(goose[0])
            for d in sim.names:
                if d != goose[0]:
                    sim.hint(d, goose[0])
            sim.kick("n1")
            sim.run_for(0.5)
            sim.unisolate(goose[0])
            sim.run_for(0.5)
        if sim.gooses() != ["n1"]:
            continue
        sim.run_for(sim.rng.uniform(0.05, 0.3))  # some rounds as goose
        if sim.gooses() != ["n1"]:
            continue
        sim.isolate("n1")
        for d in sim.names[1:]:
            sim.hint(d, "n1")
        sim.run_for(0.6)
        sim.unisolate("n1")
        sim.run_for(0.5)
    return sim


def test_in_the_simulator_a_slow_goose_overlaps_a_hinted_cut_without_the_check() -> None:
    with pytest.raises(Exception, match="two nodes report goose at once"):
        for seed in range(1, 6):
            hinted_cuts(0.5, NoClockCheck, 10, seed)


@pytest.mark.parametrize("seed", range(1, 4))
def test_in_the_simulator_a_slow_goose_stops_leading_before_a_hinted_cut(seed: int) -> None:
    sim = hinted_cuts(0.5, Election, 10, seed)  # the checker raises on any overlap
    n1 = sim.core("n1")
    assert n1.clock.contradicted
    assert n1.counters.step_downs_by.get(StepDown.CLOCK_RATE, 0) >= 1
    assert n1.counters.elections_won <= 1  # it won once at most, before its ducks told


@pytest.mark.parametrize("seed", range(1, 4))
def test_in_the_simulator_a_fast_node_taking_over_waits_out_the_old_lease(seed: int) -> None:
    """n1 at 2x takes over after each hinted cut of another goose (first in turn): its wait
    for the old lease, on its own fast clock, would end too soon. It has followed that goose,
    whose heartbeats show its clock fast against the goose's: it stretches the wait by that
    much. (Its ducks then contradict it, and it stops leading.) Without: two geese."""
    sim = hinted_cuts(2.0, Election, 10, seed)  # the checker raises on any overlap
    assert sim.core("n1").clock.contradicted
    with pytest.raises(Exception, match="two nodes report goose at once"):
        for s in range(seed, seed + 10):
            hinted_cuts(2.0, NoClockCheck, 10, s)


def test_a_duck_fast_against_its_goose_stretches_its_waits() -> None:
    """A duck whose clock runs at 2x its goose's: as a candidate it waits twice the lease wait
    on its clock, and a vote it grants reports half the time its clock says."""
    duck = Election(name="a", timing=T, rng=random.Random(1), now=10.0,
                    members=frozenset(NAMES))
    for k in range(40):  # 1 s of the goose's clock: 2 s of the duck's
        duck.step(Heartbeat(term=1, sender="g", seq=k + 1, sent_us=to_us(500 + 0.025 * k)),
                  10.0 + 0.05 * k + 0.0005)
    now = 10.0 + 0.05 * 39 + 0.3
    assert duck.clock.stretch(now, BOUND) == pytest.approx(2.0, abs=0.15)
    out = duck.step(VoteRequest(term=2, sender="b"), now)
    reply = out.reply
    assert isinstance(reply, VoteResponse) and reply.granted
    assert reply.heard_us == pytest.approx(0.3e6 / 2, rel=0.1)
    duck.election_deadline = now + 0.01
    duck.tick(now + 0.01)  # pre-vote (it voted in term 2 already: term 3)
    for p in ("c", "d"):
        duck.step(VoteResponse(term=3, sender=p, granted=True, pre_vote=True), now + 0.011)
    assert duck.state is State.CANDIDATE
    assert duck.goose_not_before == pytest.approx(now + 2 * T.lease_wait, abs=0.03)
    # the same duck with a clock that agrees waits the lease wait
    calm = Election(name="a", timing=T, rng=random.Random(1), now=10.0,
                    members=frozenset(NAMES))
    for k in range(40):
        calm.step(Heartbeat(term=1, sender="g", seq=k + 1, sent_us=to_us(500 + 0.05 * k)),
                  10.0 + 0.05 * k + 0.0005)
    assert calm.clock.stretch(now, BOUND) == 1.0


def test_in_the_simulator_a_goose_inside_the_bound_leads_through_hinted_cuts() -> None:
    sim = hinted_cuts(0.95, Election, 8)
    n1 = sim.core("n1")
    assert not n1.clock.contradicted and n1.counters.elections_won >= 5
    assert not any(sim.core(n).clock.contradicted for n in sim.names)


def test_status_carries_the_clock_and_refuses_bad_rates() -> None:
    st = NodeStatus(name="n1", role=Role.DUCK, term=3,
                    clock=ClockInfo(contradicted=True, rate_bound=0.1111,
                                    rates={"n2": 0.5, "n3": 0.4987}))
    raw = st.to_json()
    assert raw["clock"] == {"contradicted": True, "rate_bound": 0.1111,
                            "rates": {"n2": 0.5, "n3": 0.4987}}
    assert NodeStatus.from_json(raw) == st
    older = {k: v for k, v in raw.items() if k != "clock"}  # a node of an older version
    assert NodeStatus.from_json(older).clock == ClockInfo()
    for bad in ({"rates": {"n2": "fast"}}, {"rates": [0.5]}, {"rates": {"n2": True}},
                {"contradicted": 1}, {"rate_bound": "x"}):
        with pytest.raises(StatusFormatError, match="clock"):
            NodeStatus.from_json({**raw, "clock": bad})


def test_a_duck_sends_its_clock_only_to_a_goose_that_sent_its_own() -> None:
    """A goose of an older version sends no reading and would refuse one in the ack (strict
    decoding): so ducks can be upgraded first, one at a time, under an old goose."""
    duck = Election(name="a", timing=T, rng=random.Random(1), now=5.0,
                    members=frozenset(NAMES))
    old = duck.step(Heartbeat(term=1, sender="g", seq=1), 5.0).reply
    assert old == HeartbeatAck(term=1, sender="a", seq=1, success=True)
    new = duck.step(Heartbeat(term=1, sender="g", seq=2, sent_us=7_000_000), 5.05).reply
    assert new == HeartbeatAck(term=1, sender="a", seq=2, success=True, received_us=5_050_000)
