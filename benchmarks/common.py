"""What the failover benchmarks share: one outside poller, one percentile, one table, the
machine's description and the JSON output. ddg (benchmarks/failover.py) and its peers
(benchmarks/etcd.py) are measured through the same loop (`measure_failovers`) against the
same small interface (`System`), so their rows are comparable line by line."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Each candidate is polled this often (plus the request's own time). Coarser polling can only
# make a failover look slower (by up to one poll period); polling every few ms loads 2 cores
# enough to slow the election itself. --poll-ms changes it.
POLL_INTERVAL = 0.010
# A frozen leader stays frozen this long past the election timeout's maximum (at least), so
# that the freeze is one the cluster must act on, not one it may sleep through.
FREEZE_MARGIN = 0.1
# Deliberate: the kill lands at a random moment in the heartbeat cycle, this long (plus up to
# JITTER) after the cluster was seen stable.
SETTLE_DELAY = 0.2
SETTLE_JITTER = 0.05
# How long a hit member may take to exit before it is SIGKILLed (and the row says so).
EXIT_WAIT = 10.0

MODES = ("crash", "freeze", "graceful")
MODE_SIGNAL = {"crash": "SIGKILL", "freeze": "SIGSTOP", "graceful": "SIGTERM"}

# A probe asks one member, once, whether it is the leader now; False when it cannot tell.
Probe = Callable[[], Awaitable[bool]]


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


@dataclass(frozen=True, kw_only=True, slots=True)
class Stats:
    n: int
    median: float
    p95: float
    p99: float
    max: float
    min: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats | None:
        if not values:
            return None
        return cls(n=len(values), median=statistics.median(values), p95=pct(values, 95),
                   p99=pct(values, 99), max=max(values), min=min(values),
                   mean=statistics.fmean(values))


def stats_line(name: str, values: Sequence[float]) -> str:
    """One line of figures (ms): n, median, p95, p99, max, min."""
    s = Stats.of(values)
    if s is None:
        return f"{name}: no samples"
    return (f"{name}: n={s.n} median {s.median:.1f} ms, p95 {s.p95:.1f} ms, "
            f"p99 {s.p99:.1f} ms, max {s.max:.1f} ms (min {s.min:.1f})")


@dataclass(kw_only=True, slots=True)
class PollCost:
    """What the outside poller costs and adds: its own CPU while it polls, and the period at
    which each candidate was actually asked (interval + request time): a failover is seen up
    to one period after it happened."""

    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    periods_ms: list[float] = field(default_factory=list)

    def add(self, other: PollCost) -> None:
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds += other.wall_seconds
        self.periods_ms += other.periods_ms

    def summary(self) -> dict[str, float | None]:
        share = 100 * self.cpu_seconds / self.wall_seconds if self.wall_seconds else None
        per = self.periods_ms
        return {"poller_cpu_percent": share,
                "poll_period_median_ms": statistics.median(per) if per else None,
                "poll_period_p99_ms": pct(per, 99) if per else None}


@dataclass(kw_only=True, slots=True)
class Row:
    """One system x size x mode: the failover times in ms, and how they were observed."""

    system: str
    nodes: int
    mode: str
    what: str  # the event that was timed, in words
    times_ms: list[float] = field(default_factory=list)
    poll: PollCost | None = None  # None: observed from events (a pipe), not by polling
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        stats = Stats.of(self.times_ms)
        return {"system": self.system, "nodes": self.nodes, "mode": self.mode,
                "what": self.what, "times_ms": [round(t, 2) for t in self.times_ms],
                "stats_ms": asdict(stats) if stats else None,
                "poll": self.poll.summary() if self.poll else None, "note": self.note}


@dataclass(kw_only=True, slots=True)
class Resources:
    """Steady state of one cluster: each member's CPU share (% of one core) and RSS."""

    system: str
    nodes: int
    seconds: float
    cpu_percent: dict[str, float]
    rss_mib: dict[str, float]
    leader: str
    cold_start_ms: float | None = None
    timing: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- the outside poller -------------------------------------------------------------------

async def first_leader(probes: dict[str, Probe], deadline: float, interval: float
                       ) -> tuple[tuple[str, float] | None, PollCost]:
    """Ask every candidate back to back, each every INTERVAL s, until one says it leads;
    returns (its name, the monotonic time of that answer) or None by DEADLINE, and the cost."""
    found: list[tuple[str, float]] = []
    done = asyncio.Event()
    cost = PollCost()
    cpu0, wall0 = time.process_time(), time.monotonic()

    async def poll(name: str, probe: Probe) -> None:
        last: float | None = None
        while not done.is_set() and time.monotonic() < deadline:
            leads = await probe()
            now = time.monotonic()
            if last is not None:
                cost.periods_ms.append(1000 * (now - last))
            last = now
            if leads:
                found.append((name, now))
                done.set()
                return
            await asyncio.sleep(interval)

    await asyncio.gather(*(poll(n, p) for n, p in probes.items()))
    cost.cpu_seconds = time.process_time() - cpu0
    cost.wall_seconds = time.monotonic() - wall0
    return (min(found, key=lambda f: f[1]) if found else None), cost


# ---- one loop for every system ------------------------------------------------------------

class System(Protocol):
    """A cluster the failover loop can measure: ddg's LocalCluster, an etcd cluster, ..."""

    label: str  # e.g. "ddg", "etcd 3.4.23"

    @property
    def members(self) -> list[str]: ...

    @property
    def election_max(self) -> float:
        """The longest election timeout in s: a freeze lasts longer than this."""
        ...

    def probe(self, name: str) -> Probe: ...

    async def wait_stable(self, within: float) -> str:
        """Every member up and following one leader; returns the leader."""
        ...

    def hit(self, name: str, mode: str) -> None:
        """crash: SIGKILL; freeze: SIGSTOP; graceful: SIGTERM (the leader may hand over)."""
        ...

    async def recover(self, name: str, mode: str) -> str | None:
        """After hit(): SIGCONT a frozen member; start a stopped one again. A member that does
        not exit within EXIT_WAIT of its signal is SIGKILLed and started again: returns what
        went wrong then (for the row's note), else None."""
        ...

    def pids(self) -> dict[str, int]: ...


async def measure_failovers(system: System, mode: str, kills: int, *, rng: random.Random,
                            interval: float, deadline: float = 10.0,
                            log: Callable[[str], None] = print) -> Row:
    """KILLS times: hit the leader (MODE), time the hit -> another member answering that it
    leads, as an outside poller sees it; let the member recover; wait for a stable cluster."""
    row = Row(system=system.label, nodes=len(system.members), mode=mode,
              what=f"{MODE_SIGNAL[mode]} leader -> another member answers leader",
              poll=PollCost())
    assert row.poll is not None
    problems = 0
    for i in range(kills):
        leader = await system.wait_stable(30)
        await asyncio.sleep(SETTLE_DELAY + rng.uniform(0, SETTLE_JITTER))
        probes = {n: system.probe(n) for n in system.members if n != leader}
        t_hit = time.monotonic()
        system.hit(leader, mode)
        hit, cost = await first_leader(probes, t_hit + deadline, interval)
        row.poll.add(cost)
        if hit is None:
            await system.recover(leader, mode)
            raise RuntimeError(f"{system.label} {mode} {i + 1}: no new leader within "
                               f"{deadline} s")
        if mode == "freeze":
            frozen_until = t_hit + system.election_max + FREEZE_MARGIN
            await asyncio.sleep(max(0.0, frozen_until - time.monotonic()))
        row.times_ms.append(1000 * (hit[1] - t_hit))
        log(f"  {system.label} n={row.nodes} {mode} {i + 1:3d}: {leader} -> {hit[0]} "
            f"after {row.times_ms[-1]:.0f} ms")
        problem = await system.recover(leader, mode)
        if problem is not None:
            problems += 1
            log(f"  {system.label} n={row.nodes} {mode} {i + 1:3d}: {problem}")
    if problems:
        row.note = (f"{problems} of {kills} hit leaders did not exit within {EXIT_WAIT:.0f} s "
                    "(SIGKILLed)")
    await system.wait_stable(30)
    return row


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def steady_state(system: System, seconds: float) -> Resources:
    """Each member's CPU share over SECONDS of a stable cluster, and its RSS at the end."""
    await system.wait_stable(30)
    pids = system.pids()
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)  # the measuring window itself
    span = time.monotonic() - t0
    leader = await system.wait_stable(30)
    return Resources(
        system=system.label, nodes=len(system.members), seconds=span, leader=leader,
        cpu_percent={n: 100 * (cpu_seconds(p) - before[n]) / span for n, p in pids.items()},
        rss_mib={n: rss_mib(p) for n, p in pids.items()})


# ---- output ---------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cores": str(os.cpu_count()),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "kernel": f"{platform.system()} {platform.release()}",
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


STATS_HEAD = f"{'n':>4} {'median':>7} {'p95':>6} {'p99':>6} {'max':>6}"


def stats_cells(values: Sequence[float]) -> str:
    """The STATS_HEAD columns (n, median, p95, p99, max) of VALUES in ms."""
    s = Stats.of(values)
    return (f"{s.n if s else 0:>4} {ms(s.median if s else None):>7} "
            f"{ms(s.p95 if s else None):>6} {ms(s.p99 if s else None):>6} "
            f"{ms(s.max if s else None):>6}")


def failover_table(rows: Sequence[Row]) -> str:
    head = (f"{'system':<22} {'nodes':>5} {'mode':<8} {STATS_HEAD}   "
            f"{'poll period med/p99':>19} {'poller CPU':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        poll = r.poll.summary() if r.poll else None
        period = (f"{ms(poll['poll_period_median_ms'])}/{ms(poll['poll_period_p99_ms'])} ms"
                  if poll else "event (pipe)")
        cpu = (f"{poll['poller_cpu_percent']:.0f}%"
               if poll and poll["poller_cpu_percent"] is not None else "-")
        lines.append(
            f"{r.system:<22} {r.nodes:>5} {r.mode:<8} {stats_cells(r.times_ms)}   "
            f"{period:>19} {cpu:>10}" + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


def resources_table(res: Sequence[Resources]) -> str:
    head = (f"{'system':<22} {'nodes':>5} {'CPU% median':>11} {'max':>5} {'leader':>6}  "
            f"{'RSS MiB median':>14} {'max':>5}  {'cold start':>10}  timing")
    lines = [head, "-" * len(head)]
    for r in res:
        cpu = list(r.cpu_percent.values())
        rss = list(r.rss_mib.values())
        cold = "-" if r.cold_start_ms is None else f"{r.cold_start_ms:.0f} ms"
        lines.append(
            f"{r.system:<22} {r.nodes:>5} {statistics.median(cpu):>11.1f} {max(cpu):>5.1f} "
            f"{r.cpu_percent.get(r.leader, float('nan')):>6.1f}  "
            f"{statistics.median(rss):>14.1f} {max(rss):>5.1f}  {cold:>10}  {r.timing}")
    return "\n".join(lines)


def report(rows: Sequence[Row], res: Sequence[Resources], *, interval: float,
           extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The plain-text report and the same figures as a JSON-able dict."""
    m = machine()
    text = "\n".join([
        f"machine: {m['cpu']}, {m['cores']} cores, {m['python']}, {m['kernel']}, "
        f"load {m['load_average']}, {m['date']}",
        *(f"{k}: {v}" for k, v in extra.items()),
        "",
        "failover, ms from the signal to the first other member answering that it leads "
        f"(polled every {1000 * interval:.0f} ms + request time; each figure is late by up to "
        "one poll period)",
        failover_table(rows),
        "",
        "steady state: CPU % of one core per member (median, max, the leader's own), RSS",
        resources_table(res),
    ])
    data = {"machine": m, **extra, "poll_interval_ms": 1000 * interval,
            "failovers": [r.to_json() for r in rows],
            "steady_state": [r.to_json() for r in res]}
    return text, data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
