"""Failover benchmark: real ddg-node clusters (and, on request, etcd beside them), the leader
hit N times per mode, the time from the signal to another member answering that it leads.

Modes (each timed separately, --kills N times, the member brought back after each):
  crash     SIGKILL the goose; the time until another node answers `goose` on GET /
  freeze    SIGSTOP the goose (for longer than the election timeout's maximum); the time until
            another node answers `goose`; then SIGCONT and wait for one stable goose
  graceful  SIGTERM the goose (it hands over before it exits); the time until another answers

The times are what an outside poller sees (every --poll-ms plus the request's own time; the
table says what that costs and adds). At each size (--nodes 5,9,25) it also prints the cold
start (spawn -> first goose) and the steady state: each node's CPU share and RSS.

    .venv/bin/python -m benchmarks.failover [--nodes 5,9,25] [--mode crash,freeze,graceful]
        [--kills 40] [--node-arg=--heartbeat-ms=20 ...] [--peer etcd,elect] [--json FILE]

from the repository root: it uses the test kit (ddg_testkit), which is not installed. With
--on says where the nodes run, one or more of (default loopback):
  loopback      every node on 127.0.0.1, plain HTTP, no secret
  netns         (root) every node on a host of its own, a network namespace of the multi-host
                bed (ddg_testkit.hosts), with the bed's cluster secret; the poller watches
                from the bed's switch namespace
  +tls          (loopback+tls, netns+tls) HTTPS with mutual TLS between the nodes, from a CA
                the run makes (ddg_testkit.certs); the poller verifies the nodes against it
e.g. --on loopback,netns+tls puts the plain loopback figure next to the secured multi-host one,
from the same run.
--peer needs etcd and etcdctl (benchmarks/setup.sh installs Debian's); see benchmarks/etcd.py
and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ddg.client import NodeClient, NodeStatus, Role
from ddg.local.embedded import redis_server
from ddg.net.tls import TlsConfig
from ddg_testkit import LocalCluster
from ddg_testkit.certs import LOOPBACK, Pki
from ddg_testkit.hosts import Bed, BedConfig

from . import common
from .common import MODES, Probe, Resources, Row


class DdgSystem:
    """A LocalCluster as the failover loop sees it (common.System). Only its public face is
    used: GET / for who leads, /status for a settled cluster, signals for the hits."""

    def __init__(self, cluster: LocalCluster, client: NodeClient,
                 spawn: Callable[[Sequence[str]], object] | None = None,
                 label: str = "ddg") -> None:
        self.label = label
        self.c = cluster
        self.client = client
        # how to start one more node with these extra ddg-node arguments
        self.spawn = spawn or (lambda extra: cluster.add(extra_args=extra))
        self._timing: tuple[int, tuple[int, int]] | None = None

    @property
    def members(self) -> list[str]:
        return self.c.names

    @property
    def election_max(self) -> float:
        assert self._timing is not None, "wait_stable() first"
        return self._timing[1][1] / 1000

    @property
    def timing(self) -> str:
        if self._timing is None:
            return ""
        hb, (lo, hi) = self._timing
        return f"heartbeat {hb} ms, election timeout {lo}-{hi} ms"

    def probe(self, name: str) -> Probe:
        address = self.c.address(name)

        async def leads() -> bool:
            return await self.client.role(address) is Role.GOOSE
        return leads

    async def _statuses(self) -> list[NodeStatus | None]:
        replies = await asyncio.gather(*(self.client.poll(self.c.address(n))
                                         for n in self.members))
        return [r.status for r in replies]

    async def wait_stable(self, within: float) -> str:
        deadline = time.monotonic() + within
        while True:
            goose = self._stable(await self._statuses())
            if goose is not None:
                return goose
            if time.monotonic() >= deadline:
                raise TimeoutError(f"ddg: no stable goose after {within} s\n"
                                   f"{await asyncio.to_thread(self.c.describe)}")
            await asyncio.sleep(0.02)

    def _stable(self, statuses: Sequence[NodeStatus | None]) -> str | None:
        """All nodes answer, one goose, everyone following it with full membership, and
        every duck holding its crash-hint stream to the goose (a hit before that would time
        the election timeout instead: the streams open after the goose's first heartbeat)."""
        sts = [st for st in statuses if st is not None]
        if len(sts) < len(self.members):
            return None
        geese = {st.goose for st in sts}
        roles = [st.role for st in sts]
        if len(geese) != 1 or None in geese or roles.count(Role.GOOSE) != 1 or not all(
                len(st.members) == len(sts) for st in sts):
            return None
        leader = next(st for st in sts if st.role is Role.GOOSE)
        if leader.hint_streams < len(sts) - 1:
            return None
        self._timing = (leader.timing.heartbeat_ms, leader.timing.election_timeout_ms)
        return leader.name

    def hit(self, name: str, mode: str) -> None:
        if mode == "crash":
            self.c.kill(name)
        elif mode == "freeze":
            self.c.pause(name)
        else:
            self.c.terminate(name)

    async def recover(self, name: str, mode: str) -> str | None:
        if mode == "freeze":
            self.c.resume(name)
            return None
        problem = None
        if await asyncio.to_thread(self.c.wait, name, common.EXIT_WAIT) is None:
            problem = (f"{name} still ran {common.EXIT_WAIT:.0f} s after its "
                       f"{common.MODE_SIGNAL[mode]}: SIGKILLed; its log ends:\n"
                       f"{self.c.log_tail(name) or '(empty)'}")
            self.c.kill(name)
            await asyncio.to_thread(self.c.wait, name, 5)
        self.c.restart(name)
        return problem

    def pids(self) -> dict[str, int]:
        return self.c.pids


async def cold_start(system: DdgSystem, n: int, node_args: Sequence[str],
                     interval: float) -> float:
    """Spawn N nodes; ms from the first spawn to the first `goose` answer."""
    t0 = time.monotonic()
    for _ in range(n):
        system.spawn(node_args)
    probes = {name: system.probe(name) for name in system.members}
    hit, _ = await common.first_leader(probes, t0 + 30, interval)
    if hit is None:
        raise RuntimeError(f"no goose 30 s after spawning {n} nodes")
    return 1000 * (hit[1] - t0)


PLACES = ("loopback", "netns", "loopback+tls", "netns+tls")


async def run_ddg(size: int, place: str, args: argparse.Namespace, rng: random.Random
                  ) -> tuple[list[Row], Resources]:
    async with contextlib.AsyncExitStack() as stack:
        tls: TlsConfig | None = None
        node_tls: Callable[[str], TlsConfig] | None = None
        if place.endswith("+tls"):
            pki = Pki(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ddg-pki-"))))
            bed_addresses = Bed(BedConfig(nodes=size)).net.node_addresses
            tls = pki.client("bench")  # the observer's: names no node

            def named(name: str) -> TlsConfig:  # a node's own: peers take only its sender's
                return pki.tls(name, *LOOPBACK, *bed_addresses)
            node_tls = named
        client = NodeClient(timeout=0.5, max_connections=max(64, 2 * size), tls=tls)
        stack.push_async_callback(client.aclose)
        label = "ddg" if place == "loopback" else f"ddg {place}"
        if place.startswith("netns"):
            bed = Bed(BedConfig(nodes=size, log_level="WARNING", tls=tls, node_tls=node_tls))
            stack.callback(bed.close)
            bed.start(nodes=[])
            hosts = iter(bed.names)
            system = DdgSystem(bed.cluster, client,
                               lambda extra: bed.add(next(hosts), extra_args=extra), label)
        else:
            system = DdgSystem(stack.enter_context(LocalCluster(log_level="WARNING", tls=tls,
                                                                node_tls=node_tls)),
                               client, label=label)
        cold = await cold_start(system, size, args.node_arg, args.poll)
        print(f"{label} n={size}: first goose {cold:.0f} ms after spawning {size} processes",
              flush=True)
        res = await common.steady_state(system, args.steady_seconds)
        res.cold_start_ms, res.timing = cold, system.timing
        rows = [await common.measure_failovers(system, mode, args.kills, rng=rng,
                                               interval=args.poll)
                for mode in args.mode]
        return rows, res


def csv_of(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items
    return parse


def sizes(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("sizes look like 5,9,25") from None
    if not out or min(out) < 3:
        raise argparse.ArgumentTypeError("every size must be at least 3")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=40, help="leader hits per mode (default 40)")
    p.add_argument("--nodes", type=sizes, default=[5], help="cluster sizes, e.g. 5,9,25")
    p.add_argument("--mode", type=csv_of(MODES), default=list(MODES),
                   help="crash,freeze,graceful (default all)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="passed to every ddg-node, e.g. --node-arg=--heartbeat-ms=20 "
                        "(repeatable)")
    p.add_argument("--peer", type=csv_of(("etcd", "elect")), default=[],
                   help="also measure etcd (same modes, 5 members) and/or `etcdctl elect`")
    p.add_argument("--elect-crash-kills", type=int, default=2,
                   help="SIGKILLs of the etcdctl elect winner; each waits out its session "
                        "TTL, 60 s (default 2)")
    p.add_argument("--ddg", action=argparse.BooleanOptionalAction, default=True,
                   help="measure ddg (--no-ddg: the peers only)")
    p.add_argument("--poll-ms", dest="poll", type=lambda s: float(s) / 1000,
                   default=common.POLL_INTERVAL, help="poll interval (default 10)")
    p.add_argument("--seed", type=int, default=1, help="seed for the kill timing")
    p.add_argument("--steady-seconds", type=float, default=5.0,
                   help="window for the CPU and memory figures (default 5)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--on", type=csv_of(PLACES), default=["loopback"],
                   help="where the nodes run: loopback, netns (root), loopback+tls, netns+tls "
                        "(comma-separated, measured in that order; default loopback)")
    return p


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    if args.peer:
        from . import etcd  # only with --peer: it needs the etcd binaries
        etcd.binaries()  # before the long ddg runs, not after
    rows: list[Row] = []
    res: list[Resources] = []
    if args.ddg:
        for place in args.on:
            for size in args.nodes:
                ddg_rows, ddg_res = await run_ddg(size, place, args, rng)
                rows += ddg_rows
                res.append(ddg_res)
    extra: dict[str, object] = {"node_args": args.node_arg, "kills_per_mode": args.kills}
    if args.ddg:
        extra["redis-server"] = redis_server().describe()  # the embedded Redis's binary
    if args.peer:
        peer_rows, peer_res, info = await etcd.run_peers(args, rng)
        rows += peer_rows
        res += peer_res
        extra.update(info)
    text, data = common.report(rows, res, interval=args.poll, extra=extra)
    print("\n" + text)
    if args.json:
        common.write_json(args.json, data)
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    ns = parser().parse_args()
    if ns.kills < 1:
        parser().error("need --kills >= 1")
    try:
        asyncio.run(main(ns))
    except KeyboardInterrupt:
        sys.exit(130)  # every cluster's context manager has stopped its processes by now
