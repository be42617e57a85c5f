"""The scenarios on the multi-host bed (ddg_faults.bed): a goose's link down, every link
impaired, a Redis Sentinel failover, and a soak of random host-level faults."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ddg_testkit.hosts import Impairment

from .bed import IMPAIRED, BedHarness, MasterFault, bed_of
from .checker import Observation
from .harness import MAX_LAPSED, Harness, RunConfig


def link_failover(h: Harness, cfg: RunConfig) -> None:
    """The goose's host loses its link: the others elect; back, it rejoins as a duck."""
    b = bed_of(h)
    old = b.settle()
    b.link_down(old)
    new = b.goose([n for n in b.names if n != old])
    b.link_up(old)
    b.settle()
    t0 = time.monotonic()

    def follows() -> Observation | None:
        o = b.obs().since(t0).get(old)
        return o if o is not None and o.role == "duck" and o.goose == new else None

    seen = b.wait_for(follows, what=f"{old} to answer duck, following {new}")
    b.notes.append(f"{old} lost its link, {new} took over; {old} rejoined as a duck "
                   f"(term {seen.term})")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scrape:
    """What one node's /metrics said: its heartbeat round trips and its CPU time so far."""

    rtt: dict[float, float]  # bucket upper bound (s) -> round trips at most that long
    failures: float  # election messages that got no usable answer
    cpu: float  # seconds


def scrape(url: str) -> Scrape | None:
    """URL's /metrics (plain HTTP only; None when unreadable)."""
    try:
        r = httpx.get(f"{url}/metrics", timeout=2)
        r.raise_for_status()
        text = r.text
    except (httpx.HTTPError, OSError):
        return None
    rtt: dict[float, float] = {}
    failures = cpu = 0.0
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "ddg_heartbeat_round_trip_seconds_bucket":
                le = float(smp.labels["le"])
                rtt[le] = rtt.get(le, 0.0) + smp.value
            elif smp.name == "ddg_peer_message_failures_total":
                failures += smp.value
            elif smp.name == "ddg_process_cpu_seconds_total":
                cpu = smp.value
    return Scrape(rtt=rtt, failures=failures, cpu=cpu)


def window_figures(b: BedHarness, goose: str, before: dict[str, Scrape | None],
                   seconds: float) -> str:
    """The goose's heartbeat round trips and every node's CPU over the window, from /metrics."""
    after = {n: scrape(b.bed.url(n)) for n in b.names}
    parts = []
    if (was := before.get(goose)) is not None and (now := after.get(goose)) is not None:
        hist = {le: n - was.rtt.get(le, 0.0) for le, n in sorted(now.rtt.items())}
        total = hist.get(float("inf"), 0.0)

        def within(q: float) -> str:
            le = next((le for le, n in hist.items() if n >= q * total), float("inf"))
            return f"<= {le * 1000:g} ms" if le != float("inf") else "> 1 s"

        slow = {le: total - n for le, n in hist.items() if le in (0.025, 0.05, 0.1, 0.25)}
        parts.append(f"{goose}'s heartbeat round trips: {total:.0f}, median {within(0.5)}, "
                     f"p99 {within(0.99)}, max {within(1.0)}; over 25/50/100/250 ms: "
                     + "/".join(f"{n:.0f}" for n in slow.values())
                     + f"; {now.failures - was.failures:.0f} messages unanswered")
    cpu = [f"{n} {100 * (a.cpu - w.cpu) / seconds:.0f}%" for n in b.names
           if (w := before.get(n)) is not None and (a := after.get(n)) is not None]
    if cpu:
        parts.append("node CPU " + ", ".join(cpu))
    return "; ".join(parts)


def impaired_quiet(h: Harness, cfg: RunConfig) -> None:
    """Every link delays and drops packets; for the window, nobody starts an election: no
    answer in a later term, no other node answering goose, the goose answering goose (but for
    its lease's brief lapses, at most MAX_LAPSED of its answers)."""
    b = bed_of(h)
    goose = b.settle()
    b.impair(list(b.names), IMPAIRED)
    before = {n: scrape(b.bed.url(n)) for n in b.names}
    t0 = time.monotonic()
    seconds = cfg.seconds if cfg.seconds is not None else 60.0
    first = b.term_of(goose)
    b.hold(seconds)
    b.notes.append(window_figures(b, goose, before, time.monotonic() - t0))
    seen = [o for o in b.obs().history() if o.ok and o.sent >= t0]
    later = [o for o in seen if o.term != first]
    rivals = [o for o in seen if o.role == "goose" and o.node != goose]
    mine = [o for o in seen if o.node == goose]
    lapsed = [o for o in mine if o.role != "goose" and o.term == first]
    for what, o in (("spurious election", next(iter(later), None)),
                    ("another goose", next(iter(rivals), None))):
        if o is not None:
            b.fail(f"{what} under {IMPAIRED.describe()}: {o.node} answered {o.role} in term "
                   f"{o.term} (goose {goose} in term {first}) at +{o.sent - t0:.1f} s")
    if len(lapsed) > MAX_LAPSED * len(mine) or any(o.role != "duck" for o in lapsed):
        b.fail(f"goose {goose} answered otherwise in {len(lapsed)} of {len(mine)} answers: "
               + ", ".join(sorted({str(o.role) for o in lapsed})))
    b.notes.append(f"{seconds:g} s with every link at {IMPAIRED.describe()}: goose {goose} "
                   f"held term {first}; it answered duck (its lease lapsed) in {len(lapsed)} of "
                   f"{len(mine)} answers" + (f"; {len(later)} answers in a later term"
                                              if later else ""))
    b.clear_impairments()
    b.notes += b.bed.net.delayer_reports
    b.settle()


def sentinel_failover(h: Harness, cfg: RunConfig) -> None:
    """The Redis master SIGKILLed: Sentinel promotes the replica, every node reconnects to it
    by itself, the goose and the term do not move; then a join and a removal through it."""
    b = bed_of(h)
    goose = b.settle()
    term = b.term_of(goose)
    t0 = time.monotonic()
    b.failed_over(b.kill_master())
    b.notes.append(b.failover_figures())
    t1 = time.monotonic()
    b.join(*b.late)
    b.members_converged()
    duck = next(n for n in sorted(b.topology.live) if n != goose and n not in b.late)
    b.remove(duck)
    b.members_converged()
    b.notes.append(f"after the promotion: {','.join(b.late)} joined and {duck} was removed "
                   f"(ddg-node remove) in {time.monotonic() - t1:.1f} s")
    b.settle()
    moved, lapses, _ = b.moved(goose, term, t0)
    if moved is not None:
        b.fail(f"the Redis failover or the membership change moved the election: {moved}")
    b.notes.append(f"{goose} stayed goose in term {term} throughout"
                   + (f" ({lapses} of its answers with its lease lapsed)" if lapses else ""))


def soak(h: Harness, cfg: RunConfig) -> None:
    """Random host-level faults, one at a time, each held and healed, until cfg.faults. With
    Sentinel on the bed, Redis master kills (failovers) are among them."""
    b = bed_of(h)
    rng = random.Random(cfg.seed)
    target = cfg.faults or 300
    deadline = None if cfg.seconds is None else time.monotonic() + cfg.seconds
    kinds = ["link-goose", "link-duck", "impair-all", "impair-one", "freeze-goose",
             "freeze-duck", "kill-goose"]
    if b.bed.config.sentinels:
        kinds.append("master")
    masters = moves = lapses = 0
    # new terms from one step's fault to the next step's settled cluster, by the step's kind:
    # a baseline (faults of a duck or a link should cost none) for the Redis failovers
    runs: dict[str, list[int]] = {}  # kind -> [steps, new terms]

    def high() -> int:
        return max((o.term or 0 for o in b.obs().latest().values() if o.ok), default=0)
    last: tuple[str, int] | None = None
    while sum(e.fault for e in b.events) < target:
        if deadline is not None and time.monotonic() > deadline:
            break
        goose = b.settle()
        if last is not None:
            tally = runs.setdefault(last[0], [0, 0])
            tally[0] += 1
            tally[1] += high() - last[1]
        kind = rng.choice(kinds)
        last = (kind, high())
        duck = rng.choice([n for n in b.names if n != goose])
        victim = goose if kind.endswith("goose") else duck
        if kind.startswith("link"):
            b.link_down(victim)
            b.hold(rng.uniform(0.3, 1.5))
            b.link_up(victim)
        elif kind.startswith("impair"):
            imp = Impairment(delay_ms=rng.choice([2, 5, 10, 20]), jitter_ms=rng.choice([0, 2]),
                             loss_pct=rng.choice([0.5, 1, 2, 5]))
            b.impair(list(b.names) if kind == "impair-all" else [duck], imp)
            b.hold(rng.uniform(1.0, 3.0))
            b.clear_impairments()
        elif kind.startswith("freeze"):
            b.pause(victim)
            b.hold(rng.uniform(0.3, 1.2))
            b.resume(victim)
        elif kind == "master":
            term = b.term_of(goose)
            t0 = time.monotonic()
            how: MasterFault = rng.choice(["kill", "freeze", "link"])
            b.failed_over(b.master_fault(how))
            b.replica_back()
            moved, lapsed, _ = b.moved(goose, term, t0)
            masters, lapses = masters + 1, lapses + lapsed
            if moved is not None:  # a soak on a busy machine: noted, judged by the checker
                moves += 1
                b.notes.append(f"during a Redis failover ({how}-master): {moved}")
        else:
            b.kill(victim)
            b.hold(rng.uniform(0.1, 0.5))
            b.restart(victim)
    b.heal_all()
    if last is not None:
        tally = runs.setdefault(last[0], [0, 0])
        tally[0] += 1
        tally[1] += high() - last[1]
    b.notes.append("new terms per step, by kind (terms/steps): " + ", ".join(
        f"{k} {t}/{n}" for k, (n, t) in sorted(runs.items())))
    if b.redis_failovers:
        b.notes.append(b.failover_figures())
        b.notes.append(f"of {masters} Redis failovers, {moves} saw the term or the goose move "
                       f"(until the old master was back as a replica); {lapses} answers of the "
                       "goose with its lease lapsed")
