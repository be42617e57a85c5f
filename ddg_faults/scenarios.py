"""The fault scenarios. Each gets a started Harness and drives faults through it; the checker
judges the recorded history afterwards, and the scenario adds its own expectations."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ddg.election.clockrate import max_rate_error
from ddg.election.timing import Timing

from .bed_scenarios import impaired_quiet, link_failover, sentinel_failover, soak
from .checker import goose_runs
from .harness import Harness, RunConfig
from .netns import CutMode

GOOSE = "@goose"  # a chaos target resolved to the goose of the moment


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    name: str
    nodes: int
    run: Callable[[Harness, RunConfig], None]
    about: str
    in_all: bool = True
    late: int = 0  # nodes started only when the scenario join()s them
    bed: bool = False  # on the multi-host bed (ddg_faults.bed), not the iptables harness
    sentinels: int = 0  # bed: at least this many sentinels (Redis Sentinel on the bed)


def others(h: Harness, *exclude: str) -> list[str]:
    return [n for n in h.names if n not in exclude]


# ---- ports of the MIT 6.5840 leader-election tests ------------------------------------------


def initial_election(h: Harness, cfg: RunConfig) -> None:
    """TestInitialElection3A: one goose; with no failure the goose and its term stay put."""
    goose = h.settle()
    h.expect_goose_unchanged(goose, 1.0)


def re_election(h: Harness, cfg: RunConfig) -> None:
    """TestReElection3A: goose cut off, reconnected; then no quorum; then quorum again."""
    g1 = h.settle()
    h.isolate(g1)
    h.goose(others(h, g1))
    h.reconnect(g1)  # the old goose rejoining must not disturb the new one
    g2 = h.settle()
    third = next(n for n in h.names if n != g2)
    h.isolate(g2, third)  # a lone node without quorum must not become goose
    h.expect_no_goose(h.names, 1.0)
    h.reconnect(third)
    h.goose([n for n in h.names if n != g2])
    h.reconnect(g2)
    h.settle()


def many_elections(h: Harness, cfg: RunConfig) -> None:
    """TestManyElections3A: 7 nodes, rounds of 3 random nodes cut off."""
    rng = random.Random(cfg.seed)
    for _ in range(6):
        cut = rng.sample(h.names, 3)
        h.isolate(*cut)
        h.goose(others(h, *cut))
        h.heal_network()
    h.settle()


# ---- the scenarios ------------------------------------------------------------------


def isolate_goose(h: Harness, cfg: RunConfig) -> None:
    for _ in range(3):
        g = h.settle()
        h.isolate(g)
        h.goose(others(h, g))
        h.hold(0.4)
        h.heal_network()
    h.settle()


def goose_plus_one(h: Harness, cfg: RunConfig) -> None:
    """The goose and one duck against the rest: the rest elect, the pair goes quiet."""
    for _ in range(2):
        g = h.settle()
        duck = others(h, g)[0]
        h.partition([[g, duck]])
        h.goose(others(h, g, duck))
        h.expect_no_goose([g, duck], 0.6)
        h.heal_network()
    h.settle()


def one_way(h: Harness, cfg: RunConfig) -> None:
    """Links cut one way only: the goose's outgoing packets, then one duck's toward the goose."""
    _one_way(h, "drop")


def _one_way(h: Harness, mode: CutMode) -> None:
    g = h.settle()
    h.cut([(g, n) for n in others(h, g)], both_ways=False, mode=mode)
    h.goose(others(h, g))
    h.hold(0.3)
    h.heal_network()
    g = h.settle()
    duck = others(h, g)[0]
    h.cut([(duck, g)], both_ways=False, mode=mode)  # TCP needs both ways: duck cut from goose
    h.expect_goose_unchanged(g, 0.8)  # pre-vote: the cut-off duck must not depose the goose
    h.heal_network()
    h.settle()


def pause_goose(h: Harness, cfg: RunConfig) -> None:
    """SIGSTOP the goose past its lease; once resumed it must never answer goose in its term."""
    for _ in range(2):
        g = h.settle()
        term = h.term_of(g)
        h.pause(g)
        h.goose(others(h, g))
        h.hold(0.6)
        resumed = h.resume(g)
        h.settle()
        late = [o for o in h.obs().history() if o.node == g and o.received >= resumed.start
                and o.role == "goose" and o.term == term]
        if late:
            h.fail(f"{g} answered goose in its old term {term} after SIGCONT "
                   f"(+{(late[0].received - resumed.start) * 1000:.0f} ms)")


def kill_restart(h: Harness, cfg: RunConfig) -> None:
    """SIGKILL the goose, then a duck; each restarts with the same data dir."""
    g = h.settle()
    h.kill(g)
    h.goose(others(h, g))
    h.restart(g)
    g = h.settle()
    duck = others(h, g)[-1]
    h.kill(duck)
    h.expect_goose_unchanged(g, 0.5)
    h.restart(duck)
    h.settle()


def graceful(h: Harness, cfg: RunConfig) -> None:
    """SIGTERM the goose: it hands over; a new goose appears within a few heartbeats."""
    for _ in range(2):
        g = h.settle()
        stopped = h.terminate(g)
        new = h.goose(others(h, g))
        t = next((o.received for o in h.obs().history()
                  if o.node == new and o.role == "goose" and o.sent >= stopped.start), None)
        if t is not None:
            h.notes.append(f"hand-over {g} -> {new}: {(t - stopped.start) * 1000:.0f} ms "
                           f"after SIGTERM")
        h.restart(g)
    h.settle()


def redis_frozen(h: Harness, cfg: RunConfig) -> None:
    """Redis frozen, then killed and restarted empty: the goose stays put throughout."""
    g = h.settle()
    h.freeze_redis()
    h.expect_goose_unchanged(g, 1.5)
    duck = others(h, g)[0]
    h.kill(duck)  # a restart while Redis is frozen runs on the cached membership
    h.restart(duck)
    h.thaw_redis()
    g = h.settle()
    h.kill_redis()
    h.expect_goose_unchanged(g, 1.0)
    h.start_redis_empty()
    h.expect_goose_unchanged(g, 0.5)

    def restored() -> bool:
        sts = h.cluster.statuses()
        return all(s is not None and list(s.members) == sorted(h.names) and s.redis.connected
                   for s in sts.values())
    h.wait_for(restored, what="every node back on Redis with the full membership", timeout=10)
    h.settle()


def goose_cut_from_redis(h: Harness, cfg: RunConfig) -> None:
    g = h.settle()
    h.cut_redis(g)
    h.expect_goose_unchanged(g, 2.0)
    h.heal_network()
    h.settle()


# ---- membership changes past a goose that misses them (docs/design.md, "One change at a
# time is safe") ------------------------------------------------------------------------------


def _member(h: Harness, node: str) -> None:
    """Until NODE has joined: it runs as a member (`/status` no longer says `joining`)."""
    h.wait_for(lambda: (st := h.cluster.status(node)) is not None and st.joining is None
               and node in st.members, what=f"{node} to join", timeout=15)


def join_lag(h: Harness, cfg: RunConfig) -> None:
    """The goose cut off from Redis (it misses every change notification and refresh) while
    nodes join. First n1, alone and goose of a cluster of one: n2 joins, then n3 would make
    {n2, n3} a quorum of three beside n1 (two geese, before membership confirmations), so n3
    waits until n1 is back and has confirmed version 2. Then, three members, the goose also
    cut off from one duck while n4 and n5 join: the other duck refuses its heartbeats once
    it runs a newer version, and the new majority elects only after that lease."""
    a, b, c, d = h.late
    g = h.settle()
    h.cut_redis(g)
    h.join(a)
    _member(h, a)
    h.join(b)
    h.hold(2.0)  # the fault lasts: n3 must still be waiting, n1 the only goose
    st = h.cluster.status(b)
    said = st.joining if st is not None else "no answer"
    if st is None or st.joining is None or g not in st.joining or "version 2" not in st.joining:
        h.fail(f"{b} should wait for {g} to confirm membership version 2; its /status "
               f"joining: {said}")
    back = time.monotonic()
    h.heal_network()
    _member(h, b)
    h.notes.append(f"{b} waited, joining: {said!r}; it joined {time.monotonic() - back:.2f} s "
                   f"after {g} was back on Redis")
    h.members_converged()
    g = h.settle()
    duck = others(h, g, c, d)[0]
    h.cut_redis(g)
    h.cut([(g, duck)])
    h.join(c)
    _member(h, c)
    h.join(d)
    _member(h, d)
    new = h.goose(exclude=[g])
    h.notes.append(f"{c} and {d} joined past {g} (cut off from Redis and from {duck}); "
                   f"{new} leads the five")
    h.heal_all()
    h.members_converged()
    h.settle()


# ---- Redis loses the cluster while fresh nodes join (docs/design.md, "Bootstrap") ----------


def redis_empty_join(h: Harness, cfg: RunConfig) -> None:
    """Redis restarts empty and two fresh nodes start at once: they must wait for the members
    to restore the registry, not form a cluster of their own; then everyone has 5 members."""
    g = h.settle()
    h.kill_redis()
    # long enough for the members' reconnect backoff to grow: the newcomers get there first
    h.expect_goose_unchanged(g, 2.5)
    h.start_redis_empty()
    h.join(*h.late)
    h.members_converged()
    if h.settle() != g:
        h.notes.append("the goose moved while the cluster grew")


def flushall_join(h: Harness, cfg: RunConfig) -> None:
    """FLUSHALL just before a fresh node starts, then just after the next one started."""
    h.settle()
    first, second = h.late
    h.flush_redis()
    h.join(first)
    h.members_converged()
    h.settle()
    h.join(second)
    h.flush_redis()
    h.members_converged()
    h.settle()


def redis_rollback_join(h: Harness, cfg: RunConfig) -> None:
    """Redis restored from an old RDB (an older membership and version) while a fresh node
    joins: the members put back what they knew, the newcomer joins that."""
    h.settle()
    old = h.snapshot_redis()
    h.join(h.late[0])
    h.members_converged()
    h.rollback_redis(old)
    h.join(h.late[1])
    h.members_converged()
    h.settle()


# ---- false hints of a crash: REJECT cuts, an instant restart, a closed listener -----------
# A REJECT cut refuses connections and resets open ones at once, as a crashed peer's kernel
# would; a goose that closed its listener refuses new connections while it runs on. Each looks
# like a dead goose to anyone watching connections, and none may give the cluster two geese.


def isolate_goose_reject(h: Harness, cfg: RunConfig) -> None:
    """The goose isolated by REJECT: TCP resets, then ICMP port-unreachable."""
    for mode in ("reset", "icmp"):
        g = h.settle()
        h.isolate(g, mode=mode)
        h.goose(others(h, g))
        h.hold(0.4)
        h.heal_network()
    h.settle()


def one_way_reject(h: Harness, cfg: RunConfig) -> None:
    """one-way with TCP resets, then with ICMP: the goose's packets rejected (the rest elect),
    then one duck's toward the goose (the goose must stay goose: pre-vote)."""
    _one_way(h, "reset")
    _one_way(h, "icmp")


def goose_plus_one_reject(h: Harness, cfg: RunConfig) -> None:
    """The goose and one duck REJECT-partitioned from the rest (reset, then icmp)."""
    for mode in ("reset", "icmp"):
        g = h.settle()
        duck = others(h, g)[0]
        h.partition([[g, duck]], mode=mode)
        h.goose(others(h, g, duck))
        h.expect_no_goose([g, duck], 0.6)
        h.heal_network()
    h.settle()


def _spread(xs: list[float]) -> str:
    ms = sorted(x * 1000 for x in xs)
    return f"median {ms[len(ms) // 2]:.1f} ms, max {ms[-1]:.1f} ms" if ms else "n=0"


def fast_kill_restart(h: Harness, cfg: RunConfig) -> None:
    """SIGKILL the goose and start it again at once on its port, data dir and name, 4 times;
    then twice two geese in a row: the goose, and the next one as soon as it is elected."""
    for _ in range(4):
        g = h.settle()
        h.kill_restart(g)
    for _ in range(2):
        g = h.settle()
        h.kill_restart(g)
        nxt = h.goose(exclude=[g])
        h.kill_restart(nxt)
    h.settle()
    if h.respawns:
        h.notes.append(f"{len(h.respawns)} kill-restarts: SIGKILL -> new process spawned "
                       f"{_spread([a for a, _ in h.respawns])}; -> answering "
                       f"{_spread([b for _, b in h.respawns])}")


def listener_closed(h: Harness, cfg: RunConfig) -> None:
    """The goose closes its listening socket for 2 s and runs on (its heartbeats and open
    connections go on); then closes it for good and is killed and restarted at once."""
    g = h.settle()
    h.close_listener(g, 2.0)
    h.hold(2.0)
    h.listener_reopened(g)
    if h.settle() != g:
        h.notes.append(f"{g} lost the goose role while its listener was closed")
    g = h.settle()
    h.close_listener(g, 600.0)
    h.hold(1.0)
    h.kill_restart(g)
    h.settle()


# ---- a clock of another rate (--clock-rate NODE=RATE: libfaketime) --------------------------


LEAD = 0.5  # seconds a goose leads before the cut: ten of its rounds (five at half speed)


def hinted_cuts(h: Harness, cfg: RunConfig) -> None:
    """The goose cut off from its ducks by TCP resets, so that their crash-hint streams end:
    they campaign at once and the new goose relies on the lease wait, not on stickiness. Healed,
    and again, --steps times (default 10). n1 (put it on a faked clock with --clock-rate
    n1=RATE) is first in turn after a hint, so it takes over every other time if it may. Each
    goose leads for LEAD before its cut: a clock outside the bound is caught within its first
    rounds as goose (docs/design.md, "Clock rate"), and then it must not lead again; inside
    the bound it must lead. The checker looks for two geese either way."""
    rates = dict(h.config.clock_rates)
    odd = "n1"
    rate = rates.get(odd, 1.0)
    bound = max_rate_error(Timing().drift_margin)
    outside = not 1 - bound <= rate <= 1 + bound
    cuts = cfg.steps or 10
    of_odd = 0
    for _ in range(cuts):
        h.settle()
        h.hold(LEAD)
        g = h.settle()
        of_odd += g == odd
        h.hinted_cut(g)
        h.goose(others(h, g))
        h.hold(0.3)  # both sides answer meanwhile: an overlap would be seen
        h.heal_network()
    h.settle()
    statuses = h.cluster.statuses()
    st = statuses[odd]
    runs = [r for r in goose_runs(h.obs().history()) if r.node == odd]
    led = sorted((r.last.received - r.first.sent) * 1000 for r in runs)
    measured = sorted(st.clock.rates.values()) if st is not None else []
    h.notes.append(
        f"{odd} at {rate:g}x ({'outside' if outside else 'inside'} the bound +-{bound:.1%}): "
        f"goose at {of_odd} of {cuts} hinted cuts; answered goose in {len(runs)} runs"
        + (f", the longest {led[-1]:.0f} ms" if led else "")
        + "; its clock measured against its peers': "
        + (", ".join(f"{x:.3f}" for x in measured) or "no evidence now")
        + f"; contradicted: {st.clock.contradicted if st is not None else '?'}")
    if st is None:
        h.fail(f"{odd} did not answer /status at the end")
        return
    if measured and abs(measured[len(measured) // 2] - rate) > 0.03:
        h.fail(f"{odd}'s clock was meant to run at {rate:g}x but its peers measure "
               f"{', '.join(f'{x:.3f}' for x in measured)}: is libfaketime faking "
               "CLOCK_MONOTONIC?")
    if outside:
        if not st.clock.contradicted:
            h.fail(f"{odd} runs at {rate:g}x, outside the bound, and no majority contradicts it")
        if of_odd:
            h.fail(f"{odd} runs at {rate:g}x and was goose at {of_odd} cuts, after leading "
                   f"for {LEAD:g} s")
    else:
        flagged = [n for n, s in statuses.items() if s is not None and s.clock.contradicted]
        if flagged:
            h.fail(f"clocks inside the bound, yet contradicted: {', '.join(flagged)}")
        if not of_odd:  # about every other one: first in turn, it wins most races
            h.fail(f"{odd} runs at {rate:g}x, inside the bound, but led at none of {cuts} cuts")


def split_brain(h: Harness, cfg: RunConfig) -> None:
    """Self-test: two one-node clusters watched as one. The checker must report violations."""
    h.hold(1.0)


# ---- chaos -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    kind: str
    targets: tuple[str, ...]
    hold: float
    gap: float

    def describe(self) -> str:
        return f"{self.kind}({','.join(self.targets)}) hold={self.hold:.2f}s"


KINDS = (
    ("isolate", 3), ("partition", 3), ("goose-plus-one", 2), ("one-way", 2), ("cut-redis", 1),
    ("pause", 2), ("kill", 2), ("terminate", 1), ("freeze-redis", 1), ("kill-redis", 1),
    ("partition+freeze-redis", 1),
    # false hints of a crash
    ("isolate-reset", 2), ("isolate-icmp", 1), ("partition-reset", 1),
    ("goose-plus-one-reset", 1), ("goose-plus-one-icmp", 1), ("one-way-reset", 1),
    ("one-way-icmp", 1), ("kill-restart", 2), ("close-listener", 2),
)


def split_mode(kind: str) -> tuple[str, CutMode]:
    """'isolate-reset' -> ('isolate', 'reset'); a kind without a mode suffix drops."""
    for mode in ("reset", "icmp"):
        if kind.endswith(f"-{mode}"):
            return kind.removesuffix(f"-{mode}"), mode
    return kind, "drop"


def chaos_plan(seed: int, names: list[str]) -> Iterator[Step]:
    """The same seed gives the same steps; only '@goose' depends on the run."""
    rng = random.Random(seed)
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    while True:
        kind = rng.choices(kinds, weights)[0]
        base, _ = split_mode(kind)
        node = GOOSE if rng.random() < 0.5 else rng.choice(names)
        if base in ("partition", "partition+freeze-redis"):
            shuffled = rng.sample(names, len(names))
            cuts = sorted(rng.sample(range(1, len(names)), rng.randint(1, 2)))
            groups = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(names)],
                                                    strict=True)]
            targets = tuple("+".join(sorted(g)) for g in groups)
        elif base == "goose-plus-one":
            targets = (GOOSE, rng.choice(names))
        elif base == "one-way":
            a, b = rng.sample(names, 2)
            targets = (GOOSE if rng.random() < 0.5 else a, b)
        elif kind in ("freeze-redis", "kill-redis"):
            targets = ()
        else:
            targets = (node,)
        yield Step(kind=kind, targets=targets, hold=round(rng.uniform(0.2, 1.2), 3),
                   gap=round(rng.uniform(0.0, 0.3), 3))


def run_step(h: Harness, step: Step, goose: str) -> None:
    def res(t: str) -> str:
        return goose if t == GOOSE else t

    kind, mode = split_mode(step.kind)
    if kind == "isolate":
        h.isolate(res(step.targets[0]), mode=mode)
    elif kind in ("partition", "partition+freeze-redis"):
        h.partition([g.split("+") for g in step.targets], mode=mode)
        if kind.endswith("freeze-redis"):
            h.freeze_redis()
    elif kind == "goose-plus-one":
        pair = {goose, res(step.targets[1])}
        if len(pair) == 1:
            pair.add(others(h, goose)[0])
        h.partition([sorted(pair)], mode=mode)
    elif kind == "one-way":
        a, b = res(step.targets[0]), res(step.targets[1])
        if a == b:
            b = others(h, a)[0]
        if a == goose:
            h.cut([(a, n) for n in others(h, a)], both_ways=False, mode=mode)
        else:
            h.cut([(a, b)], both_ways=False, mode=mode)
    elif kind == "cut-redis":
        h.cut_redis(res(step.targets[0]))
    elif kind == "pause":
        h.pause(res(step.targets[0]))
    elif kind == "kill":
        h.kill(res(step.targets[0]))
    elif kind == "terminate":
        h.terminate(res(step.targets[0]))
    elif kind == "kill-restart":
        h.kill_restart(res(step.targets[0]))
    elif kind == "close-listener":
        h.close_listener(res(step.targets[0]), step.hold)
    elif kind == "freeze-redis":
        h.freeze_redis()
    elif kind == "kill-redis":
        h.kill_redis()
    else:  # pragma: no cover - KINDS and this function change together
        raise ValueError(kind)
    h.hold(step.hold)
    h.heal_all()


def chaos(h: Harness, cfg: RunConfig) -> None:
    deadline = time.monotonic() + (cfg.seconds if cfg.seconds is not None else 30.0)
    goose = h.settle()
    for i, step in enumerate(chaos_plan(cfg.seed, h.names)):
        if cfg.steps is not None and i >= cfg.steps:
            break
        if cfg.steps is None and time.monotonic() >= deadline:
            break
        h.notes.append(f"step {i}: {step.describe()} (goose {goose})")
        run_step(h, step, goose)
        h.check_processes()
        h.hold(step.gap)
        goose = h.settle()


# ---- timing as cluster state: changed online (docs/design.md, "Timing is cluster state") ----


def timing_change(h: Harness, cfg: RunConfig) -> None:
    """`ddg-node config set` default -> fast -> default ...: first on a quiet cluster (a change
    alone must start no election: 4 changes with --steps, one per 10 s of --seconds), then at
    random moments among goose kills (SIGKILL, with and without an instant restart) and
    partitions. Every change completes once the faults are healed."""
    goose = h.settle()
    term = h.term_of(goose)
    t0 = time.monotonic()
    pairs = 2 if cfg.steps is not None or cfg.seconds is None else max(2, int(cfg.seconds / 20))
    quiet = ("fast", "default") * pairs
    busy = 0
    for name in quiet:
        # From the command until every node runs the new timing alone: an election begun in
        # there is the change's, if the goose was answering when it began. (A machine too
        # busy for fast can elect on its own while running it: fast's margin, not the
        # change's; the notes say so.)
        h.wait_for(lambda: h.goose_answering(time.monotonic()), what="a goose answering")
        start = time.monotonic()
        h.set_timing(name)
        _, adopted = h.timing_done(name)
        during = h.elections_between(start, adopted)
        if during is not None and h.goose_answering(start):
            h.fail(f"a timing change to {name} alone started an election: {during}")
        busy += during is not None
    moved, lapses, answers = h.moved(goose, term, t0)
    h.notes.append(f"{len(quiet)} changes on a quiet cluster in {time.monotonic() - t0:.1f} s: "
                   f"no election during a change"
                   + (f" ({busy} began with the goose's lease lapsed)" if busy else "") + "; "
                   + (
                       f"goose {goose} and term {term} unchanged throughout" if moved is None
                       else f"while running fast alone between changes: {moved}")
                   + f" ({lapses} lease lapses in {answers} of the goose's answers)")
    rng = random.Random(cfg.seed)
    deadline = time.monotonic() + (cfg.seconds if cfg.seconds is not None else 30.0)
    target = "default"
    steps = 0
    while (steps < cfg.steps) if cfg.steps is not None else (time.monotonic() < deadline):
        steps += 1
        goose = h.current_goose()
        kind = rng.choice(["kill", "kill-restart", "isolate", "partition", "goose-plus-one"])
        if kind == "kill":
            h.kill(goose)
        elif kind == "kill-restart":
            h.kill_restart(goose)
        elif kind == "isolate":
            h.isolate(goose)
        elif kind == "partition":
            h.partition([rng.sample(h.names, rng.randint(1, len(h.names) // 2))])
        else:
            h.partition([[goose, rng.choice(others(h, goose))]])
        hold = rng.uniform(0.2, 1.2)
        split = rng.uniform(0.0, hold)
        h.hold(split)
        if rng.random() < 0.8:  # a change while the fault is in force
            target = "fast" if target == "default" else "default"
            h.set_timing(target)
        h.hold(hold - split)
        h.heal_all()
        if rng.random() < 0.3:  # and one on the healed cluster, not waited for
            target = "fast" if target == "default" else "default"
            h.set_timing(target)
    h.heal_all()
    rec, _ = h.timing_done(target)
    h.notes.append(f"{steps} fault steps; {h.timing_changes} timing changes in all, the last "
                   f"to {target} (epoch {rec.epoch}), each completed once its faults healed")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(name="initial-election", nodes=3, run=initial_election,
             about="MIT TestInitialElection3A"),
    Scenario(name="re-election", nodes=3, run=re_election,
             about="MIT TestReElection3A: goose cut off and back, no quorum, quorum again"),
    Scenario(name="many-elections", nodes=7, run=many_elections,
             about="MIT TestManyElections3A: 7 nodes, rounds of 3 random nodes cut off"),
    Scenario(name="isolate-goose", nodes=5, run=isolate_goose, about="isolate the goose, heal"),
    Scenario(name="goose-plus-one", nodes=5, run=goose_plus_one,
             about="the goose and one duck against three"),
    Scenario(name="one-way", nodes=5, run=one_way, about="links cut one way only"),
    Scenario(name="pause-goose", nodes=5, run=pause_goose,
             about="SIGSTOP the goose past its lease, SIGCONT"),
    Scenario(name="kill-restart", nodes=5, run=kill_restart,
             about="SIGKILL goose and duck, restart on the same data dir"),
    Scenario(name="graceful", nodes=5, run=graceful, about="SIGTERM the goose: hand-over"),
    Scenario(name="redis-frozen", nodes=5, run=redis_frozen,
             about="Redis SIGSTOPped, then killed and restarted empty"),
    Scenario(name="goose-cut-from-redis", nodes=5, run=goose_cut_from_redis,
             about="the goose loses Redis only"),
    Scenario(name="isolate-goose-reject", nodes=5, run=isolate_goose_reject,
             about="isolate the goose by REJECT (TCP reset, then ICMP), heal"),
    Scenario(name="one-way-reject", nodes=5, run=one_way_reject,
             about="one-way cuts by REJECT (TCP reset, then ICMP)"),
    Scenario(name="goose-plus-one-reject", nodes=5, run=goose_plus_one_reject,
             about="goose + one duck REJECT-partitioned from three (reset, then ICMP)"),
    Scenario(name="fast-kill-restart", nodes=5, run=fast_kill_restart,
             about="SIGKILL the goose, restart at once on the same port, repeatedly"),
    Scenario(name="listener-closed", nodes=5, run=listener_closed,
             about="the goose closes its listening socket and runs on"),
    Scenario(name="chaos", nodes=5, run=chaos,
             about="random faults from --seed for --seconds (or --steps)"),
    Scenario(name="timing-change", nodes=5, run=timing_change, in_all=False,
             about="`config set` default <-> fast, quiet then among goose kills and "
                   "partitions, for --seconds (or --steps)"),
    Scenario(name="join-lag", nodes=5, late=4, run=join_lag, in_all=False,
             about="the goose misses membership changes (cut off from Redis) while nodes "
                   "join: the next join waits for its confirmation"),
    Scenario(name="redis-empty-join", nodes=5, late=2, run=redis_empty_join,
             about="Redis restarts empty; two fresh nodes join at once"),
    Scenario(name="flushall-join", nodes=5, late=2, run=flushall_join,
             about="FLUSHALL while a fresh node joins, twice"),
    Scenario(name="redis-rollback-join", nodes=5, late=2, run=redis_rollback_join,
             about="Redis back from an old RDB while a fresh node joins"),
    Scenario(name="hinted-cuts", nodes=5, run=hinted_cuts, in_all=False,
             about="the goose cut off while its ducks' crash-hint streams end, --steps times "
                   "(default 10); with --clock-rate n1=RATE on a faked clock"),
    Scenario(name="selftest-split-brain", nodes=2, run=split_brain, in_all=False,
             about="self-test: a real split brain (two clusters), which must be reported"),
    Scenario(name="bed-link-failover", nodes=5, run=link_failover, in_all=False, bed=True,
             about="multi-host bed: the goose's link down, a new goose; back, a duck"),
    Scenario(name="bed-impaired-quiet", nodes=5, run=impaired_quiet, in_all=False, bed=True,
             about="multi-host bed: every link 5 ms +- 2 ms, 1 % loss; no election for "
                   "--seconds (default 60)"),
    Scenario(name="bed-soak", nodes=5, run=soak, in_all=False, bed=True,
             about="multi-host bed: random link, loss/delay, freeze and kill faults until "
                   "--faults (default 300); with --sentinels, Redis master kills too"),
    Scenario(name="bed-sentinel-failover", nodes=6, late=1, run=sentinel_failover,
             in_all=False, bed=True, sentinels=3,
             about="multi-host bed with Sentinel: SIGKILL the Redis master; nothing moves; "
                   "then a join and a removal"),
)}
