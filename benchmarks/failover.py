"""Failover benchmark: 5 real nodes, SIGKILL the goose N times, time kill -> new goose.

The time is what an outside poller sees: from the SIGKILL to the first other node answering
`goose` on GET /. Also prints cold-start time to a first goose, and each node's CPU share and
resident memory in steady state. Not a test: it prints figures.

    .venv/bin/python -m benchmarks.failover [--kills 40] [--nodes 5] [--seed 1] [--netns]

from the repository root: it uses the test kit (ddg_testkit), which is not installed. With
--netns (root) every node runs on a host of its own, a network namespace of the multi-host
bed (ddg_testkit.hosts), and the poller watches from the bed's switch namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import httpx

from ddg_testkit import LocalCluster
from ddg_testkit.hosts import Bed, BedConfig

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Each node is polled this often. Coarser polling can only make a failover look slower (up to
# this much later); polling every few ms loads 2 cores enough to slow the election itself.
POLL_INTERVAL = 0.010


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary(label: str, ms: Sequence[float]) -> str:
    return (f"{label}: n={len(ms)} median={statistics.median(ms):.0f} ms "
            f"p95={pct(ms, 95):.0f} ms p99={pct(ms, 99):.0f} ms max={max(ms):.0f} ms "
            f"min={min(ms):.0f} ms mean={statistics.fmean(ms):.0f} ms")


async def first_goose(client: httpx.AsyncClient, urls: dict[str, str], deadline: float
                      ) -> tuple[str, float] | None:
    """Poll every URL back to back; return (name, monotonic time) of the first `goose`."""
    found: list[tuple[str, float]] = []
    done = asyncio.Event()

    async def poll(name: str, url: str) -> None:
        while not done.is_set() and time.monotonic() < deadline:
            try:
                resp = await client.get(url)
                if resp.text == "goose":
                    found.append((name, time.monotonic()))
                    done.set()
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(POLL_INTERVAL)

    await asyncio.gather(*(poll(n, u) for n, u in urls.items()))
    return min(found, key=lambda f: f[1]) if found else None


def wait_stable(c: LocalCluster, seconds: float = 10) -> str:
    """All nodes up, one goose, everyone following it; returns the goose."""
    def stable() -> str | None:
        sts = [st for st in c.statuses().values() if st is not None]
        if len(sts) < len(c.names):
            return None
        geese = {st.goose for st in sts}
        roles = [st.role for st in sts]
        if len(geese) == 1 and None not in geese and roles.count("goose") == 1 and all(
            len(st.members) == len(sts) for st in sts
        ):
            goose: str = geese.pop()
            return goose
        return None

    return c.wait_for(stable, timeout=seconds, what="the cluster to settle")


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


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[tuple[LocalCluster, Callable[[], list[str]]]]:
    """The cluster to measure, and how to spawn its nodes: on loopback, or one per host."""
    if not args.netns:
        with LocalCluster(log_level="WARNING") as c:
            yield c, lambda: c.start(args.nodes)
        return
    bed = Bed(BedConfig(nodes=args.nodes, log_level="WARNING"))
    bed.start(nodes=[])
    try:
        yield bed.cluster, lambda: [bed.add(n).name for n in bed.names]
    finally:
        bed.close()


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=0.5, limits=limits, trust_env=False) as client:
        with cluster(args) as (c, spawn):
            # cold start: spawn all processes, time to the first goose answer
            t0 = time.monotonic()
            names = spawn()
            urls = {n: c.address(n) + "/" for n in names}
            hit = await first_goose(client, urls, t0 + 30)
            assert hit is not None, "no goose after a cold start"
            print(f"cold start: first goose ({hit[0]}) {1000 * (hit[1] - t0):.0f} ms after "
                  f"spawning {args.nodes} processes")
            wait_stable(c)

            # steady state resources
            pids = {n: c.pid(n) for n in names}
            before = {n: cpu_seconds(p) for n, p in pids.items() if p}
            t1 = time.monotonic()
            await asyncio.sleep(args.steady_seconds)
            span = time.monotonic() - t1
            goose = wait_stable(c)
            for n, p in pids.items():
                if p:
                    share = 100 * (cpu_seconds(p) - before[n]) / span
                    print(f"steady state {n}{' (goose)' if n == goose else ''}: "
                          f"CPU {share:.1f}% of one core, RSS {rss_mib(p):.1f} MiB")

            failovers: list[float] = []
            for i in range(args.kills):
                goose = wait_stable(c)
                # kill at a random moment in the heartbeat cycle
                await asyncio.sleep(rng.uniform(0, 0.05) + 0.2)
                others = {n: u for n, u in urls.items() if n != goose}
                t_kill = time.monotonic()
                c.kill(goose)
                hit = await first_goose(client, others, t_kill + 10)
                if hit is None:
                    raise SystemExit(f"kill {i + 1}: no new goose within 10 s\n{c.describe()}")
                failovers.append(1000 * (hit[1] - t_kill))
                print(f"kill {i + 1:3d}: {goose} -> {hit[0]} after {failovers[-1]:.0f} ms",
                      flush=True)
                c.wait(goose, 5)
                c.restart(goose)
            print(summary("failover (SIGKILL goose -> another node answers goose)", failovers))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=40, help="goose kills (default %(default)s)")
    p.add_argument("--nodes", type=int, default=5, help="cluster size (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed for kill timing")
    p.add_argument("--steady-seconds", type=float, default=5.0,
                   help="window for the CPU and memory figures")
    p.add_argument("--netns", action="store_true",
                   help="each node on a host (network namespace) of its own (root)")
    ns = p.parse_args()
    if ns.kills < 1 or ns.nodes < 3:
        p.error("need --kills >= 1 and --nodes >= 3")
    asyncio.run(main(ns))
