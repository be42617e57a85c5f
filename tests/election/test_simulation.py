"""Randomised fault schedules against the election core, in the deterministic simulator (sim.py).

Safety (checked after every event by the simulator, raising InvariantViolation):
  (a) one goose per term, ever; (b) never two nodes reporting goose at the same global instant;
  (c) HardState on disk before anything leaves a node.
Liveness: once faults stop and a majority is connected, a goose is reported within LIVENESS_BOUND.
"""

from __future__ import annotations

import os
import random
import statistics
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddg.election.core import Election, HardState, State, StepDown
from ddg.election.messages import VoteResponse
from ddg.election.timing import TIMINGS, Timing
from ddg_testkit.sim import (
    FAULT_KINDS,
    GOOD_NET,
    ClusterMembership,
    ClusterTiming,
    Fault,
    InvariantViolation,
    Net,
    NoClockCheck,
    OlderVersionsCounted,
    Sim,
    apply_plan,
    random_plan,
)

LIVENESS_BOUND = 2.0  # simulated seconds from the end of faults to a reported goose
SETTLE = 2.5  # how long we run after the faults stop

SETTINGS = settings(
    deadline=None,
    max_examples=150,
    # CI replays the same examples every run; locally each run explores new ones.
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

faults = st.builds(
    Fault,
    at=st.floats(0.0, 3.0, allow_nan=False),
    kind=st.sampled_from(FAULT_KINDS),
    a=st.integers(0, 6),
    b=st.integers(0, 127),
    duration=st.floats(0.005, 1.5, allow_nan=False),
)
nets = st.builds(
    Net,
    drop=st.sampled_from([0.0, 0.05, 0.2]),
    dup=st.sampled_from([0.0, 0.1, 0.3]),
    lat_min=st.just(0.001),
    lat_max=st.sampled_from([0.005, 0.02, 0.05]),
    slow=st.sampled_from([0.0, 0.05, 0.2]),
    slow_max=st.sampled_from([0.2, 0.6, 1.0]),
)


def assert_settled(sim: Sim, healed_at: float, majority: list[str] | None = None) -> None:
    """Liveness: a goose within the bound, and at the end one goose that its peers follow."""
    elected = sim.elected_since(healed_at)
    assert elected is not None, "no goose after the faults stopped"
    assert elected - healed_at <= LIVENESS_BOUND, f"took {elected - healed_at:.3f}s"
    [goose] = sim.gooses()
    term = sim.core(goose).term
    for name in majority or sim.names:
        core = sim.core(name)
        assert core.term == term
        assert name == goose or core.leader == goose


def run_schedule(n: int, seed: int, plan: list[Fault], net: Net = GOOD_NET,
                 rates: dict[str, float] | None = None) -> Sim:
    sim = Sim(n, seed=seed, net=net, rates=rates)
    apply_plan(sim, plan)
    span = max((f.at for f in plan), default=0.0) + 0.5
    sim.run_until(span)
    sim.net = Net()
    sim.heal_all()
    sim.run_until(span + SETTLE)
    assert not sim.anomalies, sim.anomalies[:3]
    assert_settled(sim, span)
    return sim


# ---- hypothesis ----------------------------------------------------------------------------

@pytest.mark.slow
@SETTINGS
@given(n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       plan=st.lists(faults, max_size=25), net=nets)
def test_random_faults_keep_one_goose_and_recover(n: int, seed: int, plan: list[Fault],
                                                  net: Net) -> None:
    run_schedule(n, seed, sorted(plan), net)


@pytest.mark.slow
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), plan=st.lists(faults, max_size=20),
       rates=st.lists(st.floats(0.99, 1.01), min_size=5, max_size=5))
def test_worst_case_drift_keeps_leases_apart(seed: int, plan: list[Fault],
                                             rates: list[float]) -> None:
    # Clock rates anywhere within +-1%, chosen adversarially by hypothesis (including extremes).
    names = [f"n{i}" for i in range(1, 6)]
    run_schedule(5, seed, sorted(plan), Net(lat_max=0.02, dup=0.1),
                 rates=dict(zip(names, rates, strict=True)))


@pytest.mark.slow
@SETTINGS
@given(n=st.sampled_from([3, 4, 5]), seed=st.integers(0, 2**32 - 1),
       plan=st.lists(faults, max_size=15), cut_off=st.integers(0, 2**5 - 1))
def test_connected_majority_elects_while_a_minority_stays_cut_off(
        n: int, seed: int, plan: list[Fault], cut_off: int) -> None:
    names = [f"n{i}" for i in range(1, n + 1)]
    minority = [nm for i, nm in enumerate(names) if cut_off >> i & 1][: (n - 1) // 2]
    majority = [nm for nm in names if nm not in minority]
    sim = Sim(n, seed=seed)
    apply_plan(sim, sorted(plan))
    # after every scheduled fault has ended, or a pending heal would undo the cut below
    span = max((f.at + f.duration for f in plan), default=0.0) + 0.5
    sim.run_until(span)
    sim.heal_all()
    for nm in minority:
        if seed % 2:
            sim.isolate(nm)
        else:
            sim.crash(nm)
    sim.run_until(span + SETTLE)
    elected = sim.elected_since(span)
    assert elected is not None and elected - span <= LIVENESS_BOUND
    [goose] = sim.gooses()
    assert goose in majority
    assert_settled(sim, span, majority)


# ---- many seeds ----------------------------------------------------------------------------

@pytest.mark.slow
def test_many_seeds() -> None:
    """200 seeded random schedules, on 1-7 nodes; also checks the faults really bite."""
    totals: Counter[str] = Counter()
    terms = []
    recoveries = []
    for seed in range(200):
        rng = random.Random(seed)
        n = rng.choice([1, 2, 3, 3, 4, 5, 5, 7])
        plan = random_plan(rng, n, 3.0, rng.randrange(4, 30))
        net = Net(drop=0.05, dup=0.1, lat_max=0.03, slow=0.05)
        sim = Sim(n, seed=seed, net=net)
        apply_plan(sim, plan)
        sim.run_until(3.5)
        sim.net = Net()
        sim.heal_all()
        sim.run_until(3.5 + SETTLE)
        assert not sim.anomalies
        assert_settled(sim, 3.5)
        totals.update(sim.stats)
        terms.append(max(c.term for c in (sim.core(nm) for nm in sim.names)))
        recoveries.append(sim.elected_since(3.5) - 3.5)  # type: ignore[operator]
        ws = sim.all_windows()
        assert all(w.end > w.start for w in ws)
        assert len({w.term for w in ws}) == len({(w.term, w.node) for w in ws})
    # The schedules exercised every fault, and leadership changed hands a lot.
    for kind in ("crashes", "pauses", "transfers", "lost", "hints"):
        assert totals[kind] > 20, (kind, totals)
    assert sum(terms) > 400
    assert max(recoveries) <= LIVENESS_BOUND


@pytest.mark.slow
def test_recovery_time_is_bounded() -> None:
    """Measure: a connected cluster with no faults elects quickly from a cold start and after a
    goose crash (recorded in the assertion message for the docs)."""
    cold, failover = [], []
    for seed in range(60):
        n = 3 + seed % 3
        sim = Sim(n, seed=seed, net=Net(lat_max=0.02))
        sim.run_until(3.0)
        cold.append(sim.elected_since(0.0))
        [goose] = sim.gooses()
        sim.crash(goose)
        t0 = sim.t
        sim.run_until(t0 + 3.0)
        failover.append(sim.elected_since(t0) - t0)  # type: ignore[operator]
    summary = (f"cold start median {statistics.median(cold):.3f}s max {max(cold):.3f}s; "  # type: ignore[type-var]
               f"failover median {statistics.median(failover):.3f}s max {max(failover):.3f}s")
    # Failover: the ducks' stickiness (election_min after the last heartbeat) plus a timeout
    # (<= election_max), plus a few round trips; with split votes, another timeout or two.
    assert max(cold) < 1.0, summary  # type: ignore[type-var]
    assert max(failover) < 1.2, summary
    assert statistics.median(failover) < 0.6, summary


# ---- the checker can fail ------------------------------------------------------------------

class NotSticky(Election):
    """A core without leader stickiness: votes for a rival while it still hears a goose (and
    without the new goose's wait for its voters' last lease, which would otherwise cover)."""

    def sticky(self, now: float) -> bool:
        return False

    def is_goose(self, now: float) -> bool:
        return self.state is State.GOOSE and now < self.lease_until


class Forgetful(Election):
    """A core that forgets to persist whom it voted for."""

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, None)


def elect_n1(sim: Sim) -> None:
    for name in sim.names[1:]:
        sim.core(name).election_deadline = 1e9  # only n1 runs
    sim.run_until(0.3)
    sim.kick("n1")
    sim.run_until(0.8)
    assert sim.gooses() == ["n1"]


@pytest.mark.parametrize("seed", range(5))
def test_checker_catches_a_core_without_stickiness(seed: int) -> None:
    sim = Sim(3, seed=seed, election_cls=NotSticky)
    elect_n1(sim)
    sim.cut("n1", "n3")
    sim.cut("n3", "n1")  # n3 loses the goose; n2 still hears it, but votes for n3 anyway
    with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
        sim.run_for(2.0)
    # The real core refuses: n2 stays with n1 and n3 cannot win.
    sim = Sim(3, seed=seed)
    elect_n1(sim)
    term = sim.core("n1").term
    sim.cut("n1", "n3")
    sim.cut("n3", "n1")
    sim.run_for(2.0)
    assert sim.gooses() == ["n1"]
    assert sim.core("n3").term == term and sim.core("n3").counters.pre_votes_started > 3


@pytest.mark.parametrize("seed", range(5))
def test_forged_hand_over_never_makes_two_geese(seed: int) -> None:
    """A stranger's TimeoutNow (no cluster secret) to a duck cut off from the goose: the duck
    wins a term with the transfer vote of a duck that still hears the goose, but answers
    `goose` only after that duck's last goose lease has surely ended."""
    sim = Sim(3, seed=seed)
    elect_n1(sim)
    sim.cut("n1", "n3")
    sim.cut("n3", "n1")
    sim.run_for(0.02)
    sim.cut("n2", "n1")  # n1 does not learn of the new term: it keeps its lease to the end
    sim.forge_timeout_now("n3")
    sim.run_for(1.0)  # the checker raises on any overlap
    assert sim.core("n3").counters.elections_won == 1
    assert sim.gooses() == ["n3"]
    # Negative control: a core that trusts the forged hand-over (as with a secret) overlaps.
    sim = Sim(3, seed=seed, trust_transfers=True)
    elect_n1(sim)
    sim.cut("n1", "n3")
    sim.cut("n3", "n1")
    sim.run_for(0.02)
    sim.cut("n2", "n1")
    with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
        sim.forge_timeout_now("n3")
        sim.run_for(1.0)


def test_checker_catches_a_vote_that_is_not_persisted() -> None:
    sim = Sim(3, seed=1, election_cls=Forgetful)
    with pytest.raises(InvariantViolation, match=r"grants .* a vote"):
        sim.run_until(2.0)


@pytest.mark.parametrize("seed", range(4))
def test_clock_drift_beyond_the_margin_breaks_the_lease(seed: int) -> None:
    """The design assumption, shown: with the longest lease allowed, election_min x 0.8 on the
    goose's clock, against the stickiness, election_min on each duck's, a goose clock 30% slow
    against ducks 30% fast overlaps (a core without the clock check); the same schedule at the
    +-1% the design assumes keeps a margin. The real core's ducks contradict that goose's clock
    within its first rounds: it steps down before the cut and cannot campaign again."""
    timing = Timing(election_timeout_min_ms=150, election_timeout_max_ms=160, lease_ms=120)

    def run(slow: float, fast: float, cls: type[Election] = Election) -> Sim:
        sim = Sim(3, seed=seed, timing=timing, rates={"n1": slow, "n2": fast, "n3": fast},
                  election_cls=cls)
        elect_n1(sim)
        sim.isolate("n1")
        sim.core("n2").election_deadline = 1e9  # n3 alone runs: no split vote
        sim.run_for(1.0)
        return sim

    with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
        run(0.7, 1.3, NoClockCheck)
    sim = run(0.99, 1.01)
    assert sim.gooses() == ["n3"]
    assert sim.min_gap() > 0.03  # 0.2 x election_min, less drift, plus the election's RTTs
    assert not any(sim.core(n).clock.contradicted for n in sim.names)
    sim = Sim(3, seed=seed, timing=timing, rates={"n1": 0.7, "n2": 1.3, "n3": 1.3})
    for name in sim.names[1:]:
        sim.core(name).election_deadline = 1e9
    sim.run_until(0.3)
    sim.kick("n1")
    sim.run_until(0.8)
    n1 = sim.core("n1")
    assert n1.clock.contradicted and n1.counters.step_downs_by == {StepDown.CLOCK_RATE: 1}
    assert n1.counters.elections_won == 1
    sim.isolate("n1")  # the cut finds it a duck already
    sim.kick("n1")
    sim.run_for(1.0)
    sim.unisolate("n1")
    sim.run_for(1.0)
    assert n1.counters.elections_started == 1  # it does not campaign again
    leaders = [w.node for w in sim.all_windows()]
    assert leaders[0] == "n1" and "n1" not in leaders[1:]


def test_history_and_windows_are_recorded() -> None:
    sim = Sim(3, seed=3)
    elect_n1(sim)
    sim.isolate("n1")
    lease_until = sim.core("n1").lease_until  # no ack will ever extend it
    sim.run_for(2.0)
    windows = sim.all_windows()
    assert len(windows) == 2
    first, second = windows
    assert first.node == "n1" and second.node != "n1"
    assert first.end < second.start and second.term > first.term
    # The first goose's window ends exactly at its lease (global time), with no tick needed.
    n1 = sim.nodes["n1"]
    assert sim.core("n1").state is not State.GOOSE
    assert first.end == pytest.approx(n1.to_global(lease_until))
    roles = [(r.node, r.role) for r in sim.history]
    assert ("n1", "goose") in roles and ("n1", "candidate") in roles
    assert n1.rate != 1.0  # clocks drift in the sim


# ---- crash hints: a dropped connection to the goose ------------------------------------------

class NoWait(Election):
    """A core whose new goose answers at once, without waiting out its voters' last lease."""

    def is_goose(self, now: float) -> bool:
        return self.state is State.GOOSE and now < self.lease_until


def crash_failovers(*, hints: bool, seeds: range, timing: Timing | None = None) -> list[float]:
    times = []
    for seed in seeds:
        sim = Sim(5, seed=seed, net=Net(lat_min=0.0002, lat_max=0.002), timing=timing,
                  crash_hints=hints)
        sim.run_until(1.0)
        [goose] = sim.gooses()
        sim.run_for(sim.rng.uniform(0, sim.timing.heartbeat))  # a kill at any phase of a round
        sim.crash(goose)
        t0 = sim.t
        sim.run_for(2.0)
        times.append(sim.elected_since(t0) - t0)  # type: ignore[operator]
    return times


@pytest.mark.slow
def test_a_crash_hint_cuts_failover_to_the_old_lease_remainder() -> None:
    """With the hint, the new goose answers when the dead one's lease has surely run out
    (lease_wait after the last heartbeat its voters heard), not an election timeout later."""
    t = Timing()
    fast = crash_failovers(hints=True, seeds=range(60))
    slow = crash_failovers(hints=False, seeds=range(60))
    summary = (f"crash failover with hints: median {statistics.median(fast) * 1000:.0f} ms, "
               f"max {max(fast) * 1000:.0f} ms; without: median "
               f"{statistics.median(slow) * 1000:.0f} ms, max {max(slow) * 1000:.0f} ms")
    print(summary)
    # at least lease_wait less a heartbeat (the kill's phase), at most lease_wait and some RTTs
    assert min(fast) >= t.lease_wait - t.heartbeat - 0.003, summary
    assert max(fast) <= t.lease_wait + 0.01, summary
    assert statistics.median(fast) < statistics.median(slow) - 0.08, summary
    assert min(slow) >= t.election_min - t.heartbeat, summary  # a timeout after the last beat


@pytest.mark.slow
def test_the_fast_timing_preset_fails_over_in_tens_of_ms() -> None:
    fast = sorted(crash_failovers(hints=True, seeds=range(40), timing=TIMINGS["fast"]))
    assert statistics.median(fast) < 0.05 and fast[int(0.9 * len(fast))] < 0.06, fast


class IgnoresHeard(Election):
    """A new goose that waits out only its own last lease, not what its voters heard."""

    def _on_vote_response(self, msg: VoteResponse, now: float) -> None:
        super()._on_vote_response(replace(msg, heard_us=10**9), now)


def false_hint_setup(sim: Sim) -> None:
    """n1 is goose of 3 and n3 stopped hearing it a while ago; right after n2 acked a round
    (about 1 ms), n1 is cut off and both lose their connection to it: they elect n3 while n1
    still holds its lease. Only n2's report (heard_us) can tell n3 how long to wait."""
    elect_n1(sim)
    sim.cut("n1", "n3")
    sim.run_for(0.2)
    cut_goose_right_after_an_ack(sim)


def cut_goose_right_after_an_ack(sim: Sim) -> None:
    """About 1 ms after n2 acked one of n1's rounds, n1 is cut off and both ducks' streams to
    it end (a false crash hint); n3 campaigns at once."""
    heard = sim.core("n2").last_heard
    while sim.core("n2").last_heard == heard:
        sim.run_for(0.0002)
    sim.run_for(0.001)
    sim.isolate("n1")
    sim.hint("n2", "n1")
    sim.hint("n3", "n1")
    sim.kick("n3")


@pytest.mark.parametrize("rates", [{"n2": 0.8}, {"n2": 1.0}, {"n2": 1.2},
                                   {"n1": 0.95, "n3": 1.05}],
                         ids=["voter-0.8x", "voter-1.0x", "voter-1.2x", "slow-goose-fast-rival"])
def test_a_false_hint_after_an_ack_waits_out_the_live_goose_lease(
        rates: dict[str, float]) -> None:
    """A vote granted 1 ms after an ack, by a voter whose clock runs at the given rate: the
    new goose is elected at once but answers `goose` only after the old lease (checker: no
    overlap)."""
    net = Net(lat_min=0.0002, lat_max=0.001)
    sim = Sim(3, seed=1, net=net, rates=rates)
    false_hint_setup(sim)
    t0 = sim.t
    sim.run_for(1.0)
    old, new = sim.all_windows()[-2:]
    assert (old.node, new.node) == ("n1", "n3")
    assert sim.core("n3").counters.elections_won == 1
    # elected within a few ms, answering only once n1's lease is over
    assert new.start - old.end > 0
    assert new.start - t0 < Timing().lease_wait + 0.01
    # Negative controls: without the wait, or without the voter's report, two geese.
    for cls in (NoWait, IgnoresHeard):
        sim = Sim(3, seed=1, net=net, rates=rates, election_cls=cls)
        with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
            false_hint_setup(sim)
            sim.run_for(1.0)


def test_a_hint_alone_does_not_win_over_ducks_that_still_hear_the_goose() -> None:
    """A false hint at one duck of five: the others are sticky, so nothing changes."""
    sim = Sim(5, seed=2, net=Net(lat_min=0.0002, lat_max=0.001))
    elect_n1(sim)
    sim.cut("n1", "n5")  # n5 no longer hears n1 ...
    sim.hint("n5")  # ... and its connection to n1 was reset
    n5 = sim.core("n5")
    sim.run_for(4 * sim.timing.hint_step + 0.002)  # n5's turn (the 4th) came: it pre-voted
    assert n5.counters.pre_votes_started == 1
    sim.run_for(1.0)
    assert sim.gooses() == ["n1"] and sim.core("n1").term == 1
    assert n5.counters.elections_started == 0


def test_false_hints_and_faults_never_make_two_geese() -> None:
    """Random plans heavy with false hints, crashes and partitions (the checker raises)."""
    hints = 0
    for seed in range(40):
        rng = random.Random(seed)
        sim = Sim(5, seed=seed)
        plan = random_plan(rng, 5, 3.0, 40)
        plan += [Fault(rng.uniform(0, 3.0), "hint", rng.randrange(5), 0, 0.0)
                 for _ in range(40)]
        apply_plan(sim, sorted(plan))
        sim.run_until(4.0)
        hints += sim.stats["hints"]
    assert hints > 200  # delivered to a duck that had a goose to lose


# ---- timing as cluster state: online changes (docs/design.md, "Timing is cluster state") ----

DEFAULT, FAST = TIMINGS["default"], TIMINGS["fast"]
# A slow timing (a lease 20x fast's), so that an unsafe transition overlaps by far.
SLOW = Timing(heartbeat_ms=100, election_timeout_min_ms=1000, election_timeout_max_ms=1200,
              lease_ms=600)
CUSTOM = Timing(heartbeat_ms=30, election_timeout_min_ms=100, election_timeout_max_ms=250,
                lease_ms=70)


def timing_plan(sim: Sim, ct: ClusterTiming, rng: random.Random, span: float, count: int,
                timings: list[Timing]) -> None:
    """Operator changes at random moments, and Redis trouble: nodes cut off from it (they see
    changes late), Redis emptied or sent back in time (nodes restore what they know)."""
    snaps = []
    for _ in range(count):
        at = rng.uniform(0.0, span)
        kind = rng.choices(["change", "redis-cut", "flush", "snapshot", "rollback"],
                           [6, 3, 1, 1, 1])[0]
        if kind == "change":
            sim.at(at, ct.change, rng.choice(timings))
        elif kind == "redis-cut":
            name = rng.choice(sim.names)
            sim.at(at, ct.cut_off, name)
            sim.at(at + rng.uniform(0.05, 1.5), ct.reconnect, name)
        elif kind == "flush":
            sim.at(at, ct.flush)
        elif kind == "snapshot":
            sim.at(at, lambda: snaps.append(ct.snapshot()))
        else:
            sim.at(at, lambda: ct.rollback(snaps[-1]) if snaps else None)


def run_with_changes(seed: int, n: int, *, first: Timing = DEFAULT,
                     timings: tuple[Timing, ...] = (DEFAULT, FAST), faults: int = 25,
                     net: Net = GOOD_NET) -> tuple[Sim, ClusterTiming]:
    rng = random.Random(seed)
    ct = ClusterTiming(first)
    sim = Sim(n, seed=seed, net=net, cluster_timing=ct)
    apply_plan(sim, random_plan(rng, n, 3.0, faults))
    timing_plan(sim, ct, rng, 3.0, 12, list(timings))
    sim.run_until(3.5)
    sim.net = Net()
    sim.heal_all()
    ct.cut.clear()
    # every change finishes: the nodes confirm, one finalizes, all run the last target
    sim.run_until(3.5 + SETTLE + 2 * max(t.lease_wait for t in timings))
    assert not sim.anomalies, sim.anomalies[:3]
    assert ct.settled(), (ct.record, {m: nd.record for m, nd in sim.nodes.items()})
    assert_settled(sim, 3.5)
    return sim, ct


@pytest.mark.slow
def test_timing_changes_at_random_moments_under_faults_keep_one_goose() -> None:
    """Changes both ways (and a custom timing) at random moments, among crashes, pauses,
    partitions, false crash hints, lossy links, nodes cut off from Redis and a Redis that
    loses its data: the checker finds nothing, and every change completes once faults end."""
    totals: Counter[str] = Counter()
    finalized = 0
    for seed in range(40):
        n = (3, 5, 5, 4)[seed % 4]
        net = Net(drop=0.05, dup=0.1, lat_max=0.03, slow=0.05)
        sim, ct = run_with_changes(seed, n, timings=(DEFAULT, FAST, CUSTOM), net=net)
        totals.update(sim.stats)
        finalized += ct.finalized
    assert finalized > 60
    for kind in ("crashes", "pauses", "hints", "transfers"):
        assert totals[kind] > 20, (kind, totals)


def test_a_timing_change_alone_starts_no_election() -> None:
    """default -> fast -> default -> ..., at random moments, on a quiet cluster: the goose and
    its term stay; every change is finalized."""
    for seed in range(6):
        rng = random.Random(seed)
        ct = ClusterTiming(DEFAULT)
        sim = Sim(5, seed=seed, net=Net(lat_max=0.005), cluster_timing=ct)
        sim.run_until(1.0)
        [goose] = sim.gooses()
        term = sim.core(goose).term
        pre_votes = {nm: sim.core(nm).counters.pre_votes_started for nm in sim.names}
        t = 1.0
        for i in range(8):
            t += rng.uniform(0.05, 0.8)  # sometimes during the previous change
            sim.at(t, ct.change, (FAST, DEFAULT)[i % 2])
        sim.run_until(t + 1.0)
        assert ct.settled() and ct.record is not None and ct.record.target == DEFAULT.resolved()
        assert sim.gooses() == [goose]
        assert all(sim.core(nm).term == term for nm in sim.names)
        assert {nm: sim.core(nm).counters.pre_votes_started for nm in sim.names} == pre_votes
        assert ct.finalized >= 4


def _cut_goose_after_change(ct: ClusterTiming, *, after: float, seed: int,
                            goose_off_redis: bool = False) -> Sim:
    """SLOW cluster, n1 its goose; n3 stops hearing n1, n2 still acks. The operator changes
    to FAST; AFTER seconds later, right after n2 acked a round, n1 is cut off and both ducks'
    crash-hint streams end: n3 (or n2) is elected at once. It may answer `goose` only after
    n1's last lease, which began under SLOW (600 ms)."""
    sim = Sim(3, seed=seed, net=Net(lat_min=0.0002, lat_max=0.001), cluster_timing=ct)
    for name in ("n2", "n3"):
        sim.core(name).election_deadline = 1e9
    sim.run_until(1.3)
    sim.kick("n1")
    sim.run_until(1.8)
    assert sim.gooses() == ["n1"]
    sim.cut("n1", "n3")
    if goose_off_redis:
        ct.cut_off("n1")
    sim.run_for(0.2)
    ct.change(FAST)
    sim.run_for(after)
    cut_goose_right_after_an_ack(sim)
    sim.run_for(2.0)
    return sim


@pytest.mark.parametrize("seed", range(3))
def test_a_goose_cut_off_during_a_change_is_waited_out(seed: int) -> None:
    """The transition under the worst timing of a cut: 150 ms after the change (the nodes run
    the joint timing, which waits out SLOW's lease), and 1 s after it with the goose cut off
    from Redis (it never confirms, so the change cannot finish without it)."""
    sim = _cut_goose_after_change(ClusterTiming(SLOW), after=0.15, seed=seed)
    old, new = sim.all_windows()[-2:]  # n2 or n3 wins: both lost their stream to n1
    assert old.node == "n1" and new.node in ("n2", "n3") and new.start > old.end
    ct = ClusterTiming(SLOW)
    sim = _cut_goose_after_change(ct, after=1.0, seed=seed, goose_off_redis=True)
    assert ct.record is not None and ct.record.changing  # waiting for n1
    assert sim.gooses() in (["n2"], ["n3"])


@pytest.mark.parametrize("seed", range(3))
def test_checker_catches_unsafe_timing_changes(seed: int) -> None:
    """Negative controls, each against the schedule above, each caught: switching straight to
    the target (no joint timing), confirming without waiting out the old leases, finalizing
    before every member confirmed."""
    with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
        _cut_goose_after_change(ClusterTiming(SLOW, joint=False), after=0.15, seed=seed)
    with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
        _cut_goose_after_change(ClusterTiming(SLOW, confirm_wait=False), after=0.15, seed=seed)
    with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
        _cut_goose_after_change(ClusterTiming(SLOW, finalize_all=False), after=1.0, seed=seed,
                                goose_off_redis=True)


@pytest.mark.parametrize(("timings", "seeds"), [
    ({"n3": FAST}, range(3)),  # the issue's: one node on fast in a default cluster
    ({"n1": Timing(lease_ms=120)}, range(3)),  # the goose alone on a longer lease
], ids=["one-node-fast", "goose-lease-120"])
def test_checker_catches_per_node_timing(timings: dict[str, Timing], seeds: range) -> None:
    """Negative control: today's per-node timing, mismatched, under a false crash hint right
    after an ack (the issue's measurement) fails the same checker; one timing passes."""
    net = Net(lat_min=0.0002, lat_max=0.001)
    for seed in seeds:
        sim = Sim(3, seed=seed, net=net, timings=timings)
        with pytest.raises(InvariantViolation, match="two nodes report goose at once"):
            false_hint_setup(sim)
            sim.run_for(1.0)
        sim = Sim(3, seed=seed, net=net)
        false_hint_setup(sim)
        sim.run_for(1.0)


# ---- membership changes one at a time (docs/design.md, "One change at a time is safe") -------
#
# ClusterMembership (sim.py) plays the registry and the nodes' part in it. The build before
# membership confirmations is GATE False with a core that answers older versions and no wait
# and no term floor (BEFORE); the coordinator's first proposal, the gate alone, is GATE_ONLY.

BEFORE = (OlderVersionsCounted, {"gate": False, "confirm_wait": False, "floor": False})
GATE_ONLY = (OlderVersionsCounted, {"confirm_wait": False, "floor": False})
FIXED: tuple[type[Election], dict[str, bool]] = (Election, {})


def two_joins_while_the_lone_goose_lags(seed: int, core: type[Election] = Election,
                                        **kw: bool) -> tuple[Sim, ClusterMembership, int]:
    """The bug as found: n1 bootstraps alone and is goose of term 1; n2 joins, then n3,
    while n1 misses the notifications (cut off from Redis: its subscription broke). n1 still
    counts itself a cluster of one; before the fix {n2, n3} was a quorum of version 3 and
    elected a second goose in term 1. Returns the registry version while n1 was away."""
    cm = ClusterMembership({"n1"}, **kw)
    sim = Sim(3, seed=seed, membership=cm, election_cls=core)
    sim.run_for(1.0)
    assert sim.gooses() == ["n1"]
    cm.cut_off("n1")
    cm.join("n2")
    sim.run_for(0.3)
    cm.join("n3")
    sim.run_for(1.5)
    version = cm.version
    cm.reconnect("n1")
    sim.run_for(2.0)
    return sim, cm, version


def test_a_join_waits_until_the_lagging_goose_confirmed_the_one_before() -> None:
    """Fixed: n3's join is held back until n1 is back and has confirmed version 2; then it
    joins, and one goose leads the three. Before the fix the same schedule made two geese
    in term 1 in every one of the 20 seeds (/work/helpers/joinlag.py)."""
    for seed in range(20):
        sim, cm, while_away = two_joins_while_the_lone_goose_lags(seed)
        assert while_away == 2 and cm.joining == set()  # n3 waited; it is in now
        assert cm.settled() and cm.members == {"n1", "n2", "n3"}
        assert len(sim.gooses()) == 1
        core, kw = BEFORE
        with pytest.raises(InvariantViolation, match=r"two gooses in term 1|two nodes report"):
            two_joins_while_the_lone_goose_lags(seed, core, **kw)


def lagging_goose_cut_from_one_duck(seed: int, core: type[Election] = Election,
                                    **kw: bool) -> Sim:
    """Three members, the goose G misses two joins (cut off from Redis) and is cut off from
    one duck D1. With the gate alone both joins go through (D1, D2 and then n4 confirm), G
    still counts {G, D2} a quorum of its three, while D1, n4 and n5 are one of the five."""
    cm = ClusterMembership({"n1", "n2", "n3"}, **kw)
    sim = Sim(5, seed=seed, membership=cm, election_cls=core)
    sim.run_for(1.5)
    [g] = sim.gooses()
    d1 = sorted({"n1", "n2", "n3"} - {g})[0]
    cm.cut_off(g)
    sim.cut(g, d1)
    sim.cut(d1, g)
    cm.join("n4")
    sim.run_for(0.15)
    cm.join("n5")
    sim.run_for(2.0)
    cm.reconnect(g)
    sim.heal_links()
    sim.run_for(2.0)
    assert cm.settled() and len(sim.gooses()) == 1
    return sim


def two_removals_past_a_lagging_goose(seed: int, core: type[Election] = Election,
                                      **kw: bool) -> Sim:
    """Five members, the goose G cut off from Redis and from two ducks B and D; the operator
    removes P, then Q, the two that ack G. Q's confirmation of the first removal lets the
    second through; G's lease on P's and Q's last acks may still run while B and D (a
    quorum of the three left) elect: the confirmation must wait that lease out."""
    names = {"n1", "n2", "n3", "n4", "n5"}
    cm = ClusterMembership(names, **kw)
    sim = Sim(5, seed=seed, membership=cm, election_cls=core)
    sim.run_for(1.5)
    [g] = sim.gooses()
    p, q, b, d = sorted(names - {g})
    cm.cut_off(g)
    for x in (b, d):
        sim.cut(g, x)
        sim.cut(x, g)
    sim.run_for(0.4)
    cm.remove(p)
    sim.run_for(0.002 + sim.rng.random() * 0.05)
    cm.remove(q)
    sim.run_for(2.0)
    cm.reconnect(g)
    sim.heal_links()
    sim.run_for(2.0)
    return sim


def same_term_two_changes_later(seed: int, core: type[Election] = Election,
                                **kw: bool) -> Sim | None:
    """{n1, n2, n3}: B is cut off from the other two, and a hand-over makes C goose of the
    next term without B; C then misses two joins, Z (its voter) confirms them but cannot
    campaign (cut off from the newcomers). B, still in the older term, and the two newcomers
    are a quorum of the five: without the term floor B wins C's term."""
    names = {"n1", "n2", "n3"}
    cm = ClusterMembership(names, **kw)
    sim = Sim(5, seed=seed, membership=cm, election_cls=core)
    sim.run_for(1.5)
    [z] = sim.gooses()
    b, c = sorted(names - {z})
    for x in (z, c):
        sim.cut(b, x)
        sim.cut(x, b)
    sim.run_for(0.05)
    sim.transfer(z)
    sim.run_for(0.5)
    if sim.gooses() != [c]:
        return None
    cm.cut_off(c)
    for x in ("n4", "n5"):
        sim.cut(z, x)
        sim.cut(x, z)
    cm.join("n4")
    sim.run_for(0.2)
    cm.join("n5")
    sim.run_for(2.5)
    cm.reconnect(c)
    sim.heal_links()
    sim.run_for(2.0)
    return sim


@pytest.mark.slow
def test_a_goose_that_missed_two_changes_cannot_lead_beside_the_new_majority() -> None:
    """Each part of the rule against the schedule that needs it, and the design without that
    part as the negative control: the gate alone (the coordinator's first proposal) lets a
    goose that missed two joins keep its lease beside a new goose; without the wait before a
    confirmation two quick removals do; without the term floor a second goose wins the
    lagging goose's term. The fixed build passes all of them."""
    counts: Counter[str] = Counter()
    for seed in range(12):
        lagging_goose_cut_from_one_duck(seed)
        two_removals_past_a_lagging_goose(seed)
        same_term_two_changes_later(seed)
        for name, scenario, (core, kw) in (
                ("gate only", lagging_goose_cut_from_one_duck, GATE_ONLY),
                ("no older-version check", lagging_goose_cut_from_one_duck,
                 (OlderVersionsCounted, {})),
                ("no wait", two_removals_past_a_lagging_goose, (Election, {"confirm_wait": False})),
                ("no floor", same_term_two_changes_later, (Election, {"floor": False}))):
            try:
                scenario(seed, core, **kw)
            except InvariantViolation:
                counts[name] += 1
    assert counts["gate only"] == counts["no older-version check"] == counts["no floor"] == 12
    assert counts["no wait"] >= 1, counts  # 2 of the 12: the lease must still run


def membership_plan(sim: Sim, cm: ClusterMembership, rng: random.Random, span: float,
                    count: int, *, flush: int = 1) -> None:
    """Joins and removals at random moments, nodes cut off from Redis (the goose half the
    time), and Redis flushed (FLUSH: its weight among the kinds)."""
    names = sorted(sim.names)

    def join() -> None:
        spare = [n for n in names if sim.nodes[n].disk_members is None and n not in cm.joining]
        if spare:
            cm.join(rng.choice(spare))

    def remove() -> None:
        if len(cm.members) > 3:
            cm.remove(rng.choice(sorted(cm.members)))

    def cut(seconds: float, pick: float) -> None:
        geese = sim.gooses()
        name = geese[0] if geese and pick < 0.5 else names[int(pick * len(names))]
        cm.cut_off(name)
        sim.at(sim.t + seconds, cm.reconnect, name)

    for _ in range(count):
        at = rng.uniform(0.0, span)
        kind = rng.choices(["join", "remove", "redis-cut", "flush"], [5, 3, 5, flush])[0]
        if kind == "join":
            sim.at(at, join)
        elif kind == "remove":
            sim.at(at, remove)
        elif kind == "redis-cut":
            sim.at(at, cut, rng.uniform(0.05, 1.5), rng.random())
        else:
            sim.at(at, cm.flush)


def run_membership_plan(seed: int, core: type[Election] = Election,
                        **kw: bool) -> tuple[Sim, ClusterMembership]:
    """From 1, 2, 3 or 5 members, 14 membership events and 10 faults (crashes, pauses,
    partitions, lossy links, false hints, hand-overs) in 3 s, half the change notifications
    lost; then the faults end, and the operator removes (--force) any member a restore
    brought back after its removal (it is down for good)."""
    rng = random.Random(seed)
    first = [f"n{i}" for i in range(1, (1, 2, 3, 5)[seed % 4] + 1)]
    cm = ClusterMembership(first, lost=0.5, **kw)
    net = Net(drop=0.05, dup=0.1, lat_max=0.03, slow=0.05)
    sim = Sim(8, seed=seed, net=net, membership=cm, election_cls=core)
    apply_plan(sim, random_plan(rng, 8, 3.0, 10))
    membership_plan(sim, cm, rng, 3.0, 14)
    sim.run_until(3.5)
    sim.net = Net()
    sim.heal_all()
    for name in list(cm.cut):
        while cm.cut[name]:
            cm.reconnect(name)
    sim.run_until(6.5)
    for name in sorted(cm.gone & cm.members):
        cm.remove(name, force=True)
    sim.run_until(10.5)
    return sim, cm


def run_membership_and_timing_plan(seed: int, *, version_check: bool = True
                                   ) -> tuple[Sim, ClusterMembership, ClusterTiming]:
    """Both registry models at once: from 2, 3 or 5 members, 12 membership events (joins,
    removals, nodes cut off from Redis: from both models, the goose half the time) and 8
    timing changes among 10 faults in 3 s, half the membership notifications lost; then the
    faults end and every change completes."""
    rng = random.Random(seed)
    first = [f"n{i}" for i in range(1, (2, 3, 5)[seed % 3] + 1)]
    cm = ClusterMembership(first, lost=0.5)
    ct = ClusterTiming(DEFAULT, version_check=version_check)
    ct.cut = cm.cut  # one Redis: a node cut off from it reads neither
    net = Net(drop=0.05, dup=0.1, lat_max=0.03, slow=0.05)
    sim = Sim(6, seed=seed, net=net, membership=cm, cluster_timing=ct)
    apply_plan(sim, random_plan(rng, 6, 3.0, 10))
    membership_plan(sim, cm, rng, 3.0, 12, flush=0)
    for _ in range(8):
        sim.at(rng.uniform(0.0, 3.0), ct.change, rng.choice([DEFAULT, FAST, CUSTOM]))
    sim.run_until(3.5)
    sim.net = Net()
    sim.heal_all()
    for name in list(cm.cut):
        while cm.cut[name]:
            cm.reconnect(name)
    sim.run_until(3.5 + SETTLE + 4 * max(t.lease_wait for t in (DEFAULT, FAST, CUSTOM)) + 2)
    return sim, cm, ct


@pytest.mark.slow
def test_timing_and_membership_changes_at_random_moments_keep_one_goose() -> None:
    """Timing changes complete while members join and are removed (a removed goose cut off
    from Redis among them), with no second goose: the finalize's wait for the members'
    confirmations of the current membership version (review16 #1) holds no change back for
    good. (Random schedules rarely meet that bug's moment: the build before passed 300 of
    300; tests/election/test_review16_repro.py aims at it.)"""
    finalized = removed = 0
    for seed in range(60):
        sim, cm, ct = run_membership_and_timing_plan(seed)
        assert not sim.anomalies, sim.anomalies[:3]
        assert cm.settled(), (seed, cm.version, sorted(cm.members), cm.joining)
        assert ct.settled(), (seed, ct.record, {m: sim.nodes[m].record for m in cm.members})
        finalized += ct.finalized
        removed += len(cm.gone)
    assert finalized > 60 and removed > 30, (finalized, removed)


@pytest.mark.slow
def test_membership_changes_at_random_moments_under_faults_keep_one_goose() -> None:
    """80 random schedules: no two geese (the checker runs after every event), every join
    and removal completes once the faults end, one goose that every member follows. The
    same schedules on the build before the fix make two geese (11 of the first 200 seeds,
    the first at seed 36; the gate alone: 4, from seed 148)."""
    changes = held = 0
    for seed in range(80):
        sim, cm = run_membership_plan(seed)
        assert not sim.anomalies, sim.anomalies[:3]
        assert cm.settled(), (seed, cm.version, sorted(cm.members), cm.joining)
        assert_settled(sim, 6.5, sorted(cm.members))
        changes += len(cm.history) - 1
        held += cm.held_back
    assert changes > 400 and held > 1000, (changes, held)
    core, kw = BEFORE
    caught = []
    for seed in range(120):
        try:
            run_membership_plan(seed, core, **kw)
        except InvariantViolation:
            caught.append(seed)
            if len(caught) == 2:
                break
    assert len(caught) == 2, caught
