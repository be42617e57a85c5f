"""Cost at rest, side by side in one run: CPU (% of one core) and RSS of the leader and of the
followers of a DuckDuckGoose, an etcd and a PySyncObj cluster, at each size (--nodes 5,25).

Each cluster is started, left to settle (--settle s after it is stable), then each member's
utime+stime (/proc/PID/stat) is read at both ends of a window (--window s) during which nothing
polls it; RSS is /proc/PID/status VmRSS at the window's end. The leader must be the same at
both ends (else the window is measured again, up to 3 times).

  ddg        real ddg-node processes on the embedded Redis (the test kit's LocalCluster),
             default timing (heartbeat 50 ms, election timeout 150-300 ms)
  etcd       Debian's etcd 3.4 (benchmarks/etcd.py): election timeout 150 ms (randomized to
             300), heartbeat 30 ms, pre-vote
  pysyncobj  PySyncObj 0.3.17 (benchmarks/pysyncobj_node.py, in benchmarks/.peers-venv):
             election timeout 150-300 ms, AppendEntries every 30 ms, its 50 ms tick thread
  floor      benchmarks/floor_node.py: asyncio processes that exchange ddg's messages at
             rest (one to each follower every 50 ms, each answered) and do nothing else: the
             floor under a Python node's cost on this machine (this venv's Python)

    .venv/bin/python -m benchmarks.idle [--nodes 5,25] [--window 20] [--settle 5]
        [--only ddg,etcd,pysyncobj,floor] [--skip-missing] [--node-arg=ARG ...] [--json FILE]

A peer that is not installed stops the run with one line (benchmarks/setup.sh installs both)
unless --skip-missing, which leaves its rows out and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ddg.client import NodeClient
from ddg.election.timing import Timing
from ddg.errors import DdgError
from ddg.local.embedded import free_port, redis_server
from ddg.local.launcher import spawn_bound
from ddg_testkit import LocalCluster, tools
from ddg_testkit.procs import stop

from . import common
from .common import Probe
from .failover import DdgSystem, csv_of, sizes

SYSTEMS = ("ddg", "etcd", "pysyncobj", "floor")
HERE = Path(__file__).resolve().parent
PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
PYSYNCOBJ_NODE = HERE / "pysyncobj_node.py"
FLOOR_NODE = HERE / "floor_node.py"
HOST = "127.0.0.1"
LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER
WINDOW_TRIES = 3
# 25 Python processes starting at once on 2 busy cores take a while before they all agree.
START_WITHIN = 180.0  # a window in which the leader changed is measured again, this often


@dataclass(kw_only=True, slots=True)
class Cost:
    """One cluster at rest: each member's CPU share over the window and its RSS at the end."""

    system: str
    nodes: int
    window_s: float
    leader: str
    cpu_percent: dict[str, float]
    rss_mib: dict[str, float]
    timing: str
    note: str = ""

    def followers(self, d: dict[str, float]) -> list[float]:
        return [v for n, v in d.items() if n != self.leader]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process first (they stop side by side), then wait for each."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        stop(proc, 5)


# ---- PySyncObj ------------------------------------------------------------------------------

def pysyncobj_version() -> str:
    """The PySyncObj the venv holds, or SystemExit-worthy text saying why there is none."""
    if not PEERS_PYTHON.exists():
        raise DdgError(f"PySyncObj: no {PEERS_PYTHON.relative_to(HERE.parent)}: run "
                       "benchmarks/setup.sh")
    out = subprocess.run([str(PEERS_PYTHON), "-c", "import importlib.metadata as m; "
                          "print(m.version('pysyncobj'))"], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise DdgError("PySyncObj: not installed in benchmarks/.peers-venv: run "
                       "benchmarks/setup.sh")
    return out.stdout.strip()


class SyncObjCluster:
    """N pysyncobj_node.py processes on loopback, bound to this process; each one's Raft state
    is read from its stdout as it changes (no polling). A common.System, minus the hits."""

    def __init__(self, size: int, version: str) -> None:
        self.label = f"pysyncobj {version}"
        self._addrs = {f"p{i}": f"{HOST}:{free_port(HOST)}" for i in range(1, size + 1)}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._state: dict[str, int] = {}
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        for name, addr in self._addrs.items():
            others = [a for n, a in self._addrs.items() if n != name]
            proc = spawn_bound([str(PEERS_PYTHON), str(PYSYNCOBJ_NODE), addr, *others],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
            self._procs[name] = proc
            assert proc.stdout is not None
            t = threading.Thread(target=self._read, args=(name, proc.stdout), daemon=True,
                                 name=f"pysyncobj-{name}")
            t.start()
            self._readers.append(t)

    def _read(self, name: str, out: IO[bytes]) -> None:
        for line in out:  # ends when the process does
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"state":
                self._state[name] = int(parts[1])

    def close(self) -> None:
        stop_all(self._procs.values())
        for t in self._readers:
            t.join(5)

    @property
    def members(self) -> list[str]:
        return list(self._addrs)

    def probe(self, name: str) -> Probe:
        async def leads() -> bool:
            return self._state.get(name) == LEADER_STATE
        return leads

    async def wait_stable(self, within: float) -> str:
        deadline = time.monotonic() + within
        while True:
            states = [self._state.get(n) for n in self.members]
            if states.count(LEADER_STATE) == 1 and all(s == 0 for s in states
                                                         if s != LEADER_STATE):
                return self.members[states.index(LEADER_STATE)]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"pysyncobj: no stable leader after {within} s: {states}")
            await asyncio.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items() if p.poll() is None}


class FloorCluster:
    """benchmarks/floor_node.py: a leader and N-1 followers exchanging ddg's messages at rest
    on asyncio and nothing else (the floor under a Python node's cost, on this machine)."""

    label = "asyncio floor"

    def __init__(self, size: int, heartbeat_ms: int) -> None:
        self._ports = {f"f{i}": free_port(HOST) for i in range(2, size + 1)}
        self._heartbeat_ms = heartbeat_ms
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, *args: object) -> None:
        proc = spawn_bound([sys.executable, str(FLOOR_NODE), *map(str, args)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
        self._procs[name] = proc
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"floor node {name} did not start")

    def start(self) -> None:
        for name, port in self._ports.items():
            self._spawn(name, "follower", port)
        self._spawn("f1", "leader", self._heartbeat_ms, *self._ports.values())

    def close(self) -> None:
        stop_all(self._procs.values())

    async def wait_stable(self, within: float) -> str:
        return "f1"

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._procs.items() if p.poll() is None}


# ---- the measurement ------------------------------------------------------------------------

async def cost(system: Any, *, settle: float, window: float, timing: str) -> Cost:
    """Each member's CPU over WINDOW s (after SETTLE s of a stable cluster) and RSS at the
    end; measured again if the leader changed during the window."""
    leader = await system.wait_stable(START_WITHIN)
    await asyncio.sleep(settle)
    for attempt in range(1, WINDOW_TRIES + 1):
        leader = await system.wait_stable(60)
        pids = system.pids()
        before = {n: common.cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        await asyncio.sleep(window)  # nothing polls the members meanwhile
        span = time.monotonic() - t0
        after = {n: common.cpu_seconds(p) for n, p in pids.items()}
        rss = {n: common.rss_mib(p) for n, p in pids.items()}
        now = await system.wait_stable(60)
        if now == leader or attempt == WINDOW_TRIES:
            # After as many tries, the last window stands, marked: the leader's figure is
            # then that of the node that led at the end, a follower for part of the window.
            return Cost(system=system.label, nodes=len(pids), window_s=span, leader=now,
                        cpu_percent={n: 100 * (after[n] - before[n]) / span for n in pids},
                        rss_mib=rss, timing=timing,
                        note="" if now == leader else f"leader changed ({leader} -> {now}) "
                             f"in each of {WINDOW_TRIES} windows")
        print(f"  {system.label}: the leader changed during the window ({leader} -> {now}); "
              "measuring again", flush=True)
    raise AssertionError("unreachable")


async def run_ddg(size: int, args: argparse.Namespace) -> Cost:
    client = NodeClient(timeout=0.5, max_connections=max(64, 2 * size))
    try:
        with LocalCluster(log_level="WARNING") as cluster:
            system = DdgSystem(cluster, client)
            t0 = time.monotonic()
            for _ in range(size):
                system.spawn(args.node_arg)
            await system.wait_stable(START_WITHIN)
            print(f"ddg n={size}: stable {time.monotonic() - t0:.1f} s after spawning",
                  flush=True)
            return await cost(system, settle=args.settle, window=args.window,
                              timing=system.timing)
    finally:
        await client.aclose()


async def run_etcd(size: int, args: argparse.Namespace) -> Cost:
    import httpx  # only the etcd rows ask etcd's gateway (benchmarks/etcd.py)

    from .etcd import EtcdCluster
    etcd, _ = tools.etcd()
    timing = Timing()
    async with httpx.AsyncClient(timeout=0.5, trust_env=False) as http:
        with EtcdCluster(etcd, timing, http, size=size) as cluster:
            cluster.start()
            print(f"etcd n={size}: started", flush=True)
            return await cost(cluster, settle=args.settle, window=args.window,
                              timing=f"heartbeat {cluster.heartbeat_ms} ms, election timeout "
                                     f"{timing.election_timeout_min_ms}-"
                                     f"{2 * timing.election_timeout_min_ms} ms")


async def run_floor(size: int, args: argparse.Namespace) -> Cost:
    heartbeat_ms = Timing().heartbeat_ms
    cluster = FloorCluster(size, heartbeat_ms)
    try:
        await asyncio.to_thread(cluster.start)
        print(f"floor n={size}: started", flush=True)
        return await cost(cluster, settle=args.settle, window=args.window,
                          timing=f"one message to each follower every {heartbeat_ms} ms, "
                                 "each answered (ddg's default heartbeat)")
    finally:
        await asyncio.to_thread(cluster.close)


async def run_pysyncobj(size: int, args: argparse.Namespace, version: str) -> Cost:
    cluster = SyncObjCluster(size, version)
    try:
        cluster.start()
        print(f"pysyncobj n={size}: started", flush=True)
        return await cost(cluster, settle=args.settle, window=args.window,
                          timing="AppendEntries 30 ms (50 ms tick), election timeout "
                                 "150-300 ms")
    finally:
        await asyncio.to_thread(cluster.close)


# ---- output -------------------------------------------------------------------------------

def table(costs: list[Cost]) -> str:
    head = (f"{'system':<18} {'nodes':>5} | {'CPU % leader':>12} {'follower med':>12} "
            f"{'max':>5} {'cluster':>7} | {'RSS MiB leader':>14} {'follower med':>12} "
            f"{'max':>5} {'cluster':>7}")
    lines = [head, "-" * len(head)]
    for c in costs:
        fc, fr = c.followers(c.cpu_percent), c.followers(c.rss_mib)
        lines.append(
            f"{c.system:<18} {c.nodes:>5} | {c.cpu_percent[c.leader]:>12.2f} "
            f"{statistics.median(fc):>12.2f} {max(fc):>5.2f} "
            f"{sum(c.cpu_percent.values()):>7.1f} | {c.rss_mib[c.leader]:>14.1f} "
            f"{statistics.median(fr):>12.1f} {max(fr):>5.1f} "
            f"{sum(c.rss_mib.values()):>7.0f}" + (f"  * {c.note}" if c.note else ""))
    lines += ["", "timing:", *sorted({f"  {c.system}: {c.timing}" for c in costs})]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=sizes, default=[5, 25], help="cluster sizes (default 5,25)")
    p.add_argument("--window", type=float, default=20.0,
                   help="the measuring window in s (default 20)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="s of a stable cluster before the window (default 5)")
    p.add_argument("--only", type=csv_of(SYSTEMS), default=list(SYSTEMS),
                   help="ddg,etcd,pysyncobj,floor (default all four)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out a peer that is not installed (default: stop with an error)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="passed to every ddg-node (repeatable)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    return p


def find_peers(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """What each system runs (for the report), and the lines saying which were skipped; a
    missing peer ends the run with one line unless --skip-missing."""
    found: dict[str, str] = {}
    skipped: list[str] = []
    finders = {"etcd": lambda: tools.etcd()[0].describe(), "pysyncobj": pysyncobj_version,
               "ddg": lambda: f"ddg-node, redis-server {redis_server().describe()}",
               "floor": lambda: f"benchmarks/floor_node.py on {sys.version.split()[0]}"}
    for system in args.only:
        try:
            found[system] = finders[system]()
        except DdgError as exc:
            if not args.skip_missing or system == "ddg":
                raise SystemExit(f"benchmarks/idle.py: {exc} (or --skip-missing)") from None
            skipped.append(f"{system}: skipped ({exc})")
    return found, skipped


async def main(args: argparse.Namespace) -> None:
    found, skipped = find_peers(args)
    costs: list[Cost] = []
    failed: list[str] = []
    for size in args.nodes:
        for system in args.only:
            if system not in found:
                continue
            try:
                if system == "ddg":
                    c = await run_ddg(size, args)
                elif system == "etcd":
                    c = await run_etcd(size, args)
                elif system == "floor":
                    c = await run_floor(size, args)
                else:
                    c = await run_pysyncobj(size, args, found[system])
            except (TimeoutError, RuntimeError) as exc:  # a row that says so; the others run
                first = str(exc).splitlines()[0]
                print(f"  {system} n={size}: {first}", flush=True)
                failed.append(f"{system} n={size}: not measured: {first}")
                continue
            costs.append(c)
            print(f"  {c.system} n={size}: leader {c.cpu_percent[c.leader]:.2f} %, "
                  f"cluster {sum(c.cpu_percent.values()):.1f} % of a core", flush=True)
    m = common.machine()
    text = "\n".join([
        f"machine: {m['cpu']}, {m['cores']} cores, {m['python']}, {m['kernel']}, "
        f"load {m['load_average']} (at the end), {m['date']}",
        *(f"{k}: {v}" for k, v in found.items()), *skipped,
        f"at rest: CPU % of one core over {args.window:.0f} s after {args.settle:.0f} s "
        "settled; RSS (VmRSS) at the window's end", "",
        table(costs), *failed])
    print("\n" + text)
    if args.json:
        common.write_json(args.json, {"machine": m, "systems": found, "skipped": skipped,
                                      "window_s": args.window, "settle_s": args.settle,
                                      "costs": [c.to_json() for c in costs],
                                      "not_measured": failed})
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    ns = parser().parse_args()
    if ns.window <= 0 or ns.settle < 0:
        parser().error("need --window > 0 and --settle >= 0")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(ns))
        sys.exit(0)
    sys.exit(130)
