"""The peer rows of the failover benchmark: a real etcd cluster, and `etcdctl elect` on it.

etcd: 5 members on 127.0.0.1 (distinct ports, a temp dir), with ddg's default timing
(ddg.election.timing.Timing): --election-timeout = the election timeout's minimum (etcd randomizes
each timeout in [T, 2T), as ddg's default range is [min, 2 x min]); --heartbeat-interval = the
heartbeat, except that etcd refuses an election timeout under 5 heartbeats, so with ddg's 50/150 ms
it beats every 150/5 = 30 ms (the election timeout, which governs the failover, is kept equal;
etcd's steady-state CPU is then that of a faster heartbeat than ddg's). And
--pre-vote=true (ddg pre-votes too). Its leader is hit like ddg's goose
(crash: SIGKILL, freeze: SIGSTOP, graceful: SIGTERM, on which etcd transfers its leadership)
and the time is kill -> another member reports itself leader (POST /v3/maintenance/status on
its client port: leader == its own member id), polled from outside as ddg's nodes are.

etcdctl elect: one `etcdctl elect NAME PROPOSAL` campaigner process per member, all on the
etcd cluster; the winner prints its proposal. Hit the winning campaigner, time until another
prints its proposal (read from its stdout as it happens: no polling). graceful (SIGTERM):
etcdctl resigns, which deletes its key at once. crash (SIGKILL): nothing revokes the
campaigner's lease, so the next one wins only when that lease expires: the session TTL,
60 s in etcdctl 3.4, which has no flag to change it. A campaigner whose host is lost is the
same case: bounded by the TTL. Each such kill takes a minute (--elect-crash-kills).

    .venv/bin/python -m benchmarks.failover --no-ddg --peer etcd,elect --kills 10

Needs etcd and etcdctl: DDG_ETCD and DDG_ETCDCTL name them (paths or commands), else the ones
on PATH (ddg_testkit.tools.etcd); benchmarks/setup.sh installs Debian's etcd-server and
etcd-client. The figures say which etcd ran (its version and path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from ddg.election.timing import Timing
from ddg.errors import DdgError
from ddg.local.embedded import free_port
from ddg.local.launcher import spawn_bound
from ddg.local.tools import Tool
from ddg_testkit import tools
from ddg_testkit.procs import stop

from . import common
from .common import Probe, Resources, Row

HOST = "127.0.0.1"
MEMBERS = 5
ELECTION = "ddg-bench"
ETCDCTL_SESSION_TTL = 60.0  # s: concurrency.NewSession's default; etcdctl 3.4 cannot set it
# etcd refuses --election-timeout < 5 x --heartbeat-interval ("should be at least as 5 times")
ETCD_MIN_BEATS_PER_TIMEOUT = 5
STOP_TIMEOUT = 5.0  # SIGTERM -> SIGKILL when the benchmark ends


def binaries() -> tuple[Tool, Tool]:
    """etcd and etcdctl (ddg_testkit.tools.etcd), or exit with the one line that says why not."""
    try:
        return tools.etcd()
    except DdgError as exc:
        raise SystemExit(f"benchmarks/etcd.py: {exc}") from None


def etcd_heartbeat_ms(timing: Timing) -> int:
    """ddg's heartbeat, or the longest etcd accepts with ddg's minimum election timeout."""
    return min(timing.heartbeat_ms,
               timing.election_timeout_min_ms // ETCD_MIN_BEATS_PER_TIMEOUT)


@dataclass(kw_only=True, slots=True)
class Member:
    name: str
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"


class EtcdCluster:
    """N etcd members in a temp dir, each bound to this process (they die with it); a context
    manager that stops them all (start() them inside) and removes the dir. A common.System."""

    def __init__(self, etcd: Tool, timing: Timing, http: httpx.AsyncClient,
                 size: int = MEMBERS) -> None:
        self.etcd = etcd.path
        self.timing = timing
        self.http = http
        self.version = etcd.version
        self.label = f"etcd {self.version}"
        self._tmp = tempfile.TemporaryDirectory(prefix="ddg-bench-etcd-",
                                                ignore_cleanup_errors=True)
        self.dir = Path(self._tmp.name)
        self._members = {f"e{i}": Member(name=f"e{i}", client_port=free_port(HOST),
                                         peer_port=free_port(HOST))
                         for i in range(1, size + 1)}
        self.heartbeat_ms = etcd_heartbeat_ms(timing)
        self._ids: dict[str, str] = {}  # member id (as etcd's JSON spells it) -> name

    # ---- processes ---------------------------------------------------------------------

    def _argv(self, m: Member) -> list[str]:
        cluster = ",".join(f"{o.name}={o.peer_url}" for o in self._members.values())
        return [self.etcd, "--name", m.name, "--data-dir", str(self.dir / m.name),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"ddg-bench-{os.getpid()}",
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.timing.election_timeout_min_ms),
                "--pre-vote=true", "--logger=zap", "--log-level=warn"]

    def _start(self, m: Member) -> None:
        with open(self.dir / f"{m.name}.log", "ab") as log:
            m.proc = spawn_bound(self._argv(m), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT)

    def start(self) -> None:
        for m in self._members.values():
            self._start(m)

    def close(self) -> None:
        try:
            for m in self._members.values():
                if m.proc is not None and m.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        m.proc.send_signal(signal.SIGCONT)
                        m.proc.terminate()
            for m in self._members.values():
                if m.proc is not None:
                    stop(m.proc, STOP_TIMEOUT)
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self._members.values())

    # ---- common.System ---------------------------------------------------------------------

    @property
    def members(self) -> list[str]:
        return list(self._members)

    @property
    def election_max(self) -> float:
        return 2 * self.timing.election_min  # etcd: randomized in [T, 2T)

    async def status(self, name: str) -> dict[str, Any] | None:
        """The member's /v3/maintenance/status (the gRPC gateway), or None."""
        url = f"{self._members[name].client_url}/v3/maintenance/status"
        try:
            async with asyncio.timeout(0.55):
                resp = await self.http.post(url, content=b"{}")
            data = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, TimeoutError, OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _leads(st: dict[str, Any] | None) -> bool:
        return st is not None and st.get("leader") == st.get("header", {}).get("member_id")

    def probe(self, name: str) -> Probe:
        async def leads() -> bool:
            return self._leads(await self.status(name))
        return leads

    async def wait_stable(self, within: float) -> str:
        deadline = time.monotonic() + within
        while True:
            sts = await asyncio.gather(*(self.status(n) for n in self.members))
            for name, st in zip(self.members, sts, strict=True):
                if st is not None:
                    self._ids[st["header"]["member_id"]] = name
            leaders = {st.get("leader") for st in sts if st is not None}
            if None not in sts and len(leaders) == 1:
                leader = self._ids.get(str(leaders.pop()))
                if leader is not None and self._leads(sts[self.members.index(leader)]):
                    return leader
            if time.monotonic() >= deadline:
                raise TimeoutError(f"etcd: no stable leader after {within} s; logs in "
                                   f"{self.dir}")
            await asyncio.sleep(0.02)

    def hit(self, name: str, mode: str) -> None:
        proc = self._members[name].proc
        assert proc is not None
        proc.send_signal({"crash": signal.SIGKILL, "freeze": signal.SIGSTOP,
                          "graceful": signal.SIGTERM}[mode])

    async def recover(self, name: str, mode: str) -> str | None:
        m = self._members[name]
        assert m.proc is not None
        if mode == "freeze":
            m.proc.send_signal(signal.SIGCONT)
            return None
        problem = None
        try:
            await asyncio.to_thread(m.proc.wait, common.EXIT_WAIT)
        except subprocess.TimeoutExpired:
            problem = (f"{name} still ran {common.EXIT_WAIT:.0f} s after its "
                       f"{common.MODE_SIGNAL[mode]}: SIGKILLed (log: {self.dir}/{name}.log)")
            m.proc.kill()
            await asyncio.to_thread(m.proc.wait, 5)
        self._start(m)  # same data dir: it rejoins as the member it was
        return problem

    def pids(self) -> dict[str, int]:
        return {n: m.proc.pid for n, m in self._members.items()
                if m.proc is not None and m.proc.poll() is None}


# ---- etcdctl elect ------------------------------------------------------------------------

Win = tuple[str, float]  # a campaigner's name, and the monotonic time it printed it


class Campaigner:
    """One `etcdctl elect ELECTION NAME` process; a reader thread stamps the moment it prints
    NAME (it won) and hands that to WINS on LOOP."""

    def __init__(self, etcdctl: str, endpoints: str, name: str,
                 wins: asyncio.Queue[Win], loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.proc = spawn_bound([etcdctl, "--endpoints", endpoints, "elect", ELECTION, name],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL,
                                env={**os.environ, "ETCDCTL_API": "3"})
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout, wins, loop),
                                        name=f"elect-{name}", daemon=True)
        self._reader.start()

    def _read(self, out: IO[bytes], wins: asyncio.Queue[Win],
              loop: asyncio.AbstractEventLoop) -> None:
        for line in out:  # ends when the process does
            if line.strip().decode(errors="replace") == self.name:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(wins.put_nowait, (self.name, time.monotonic()))

    def stop(self) -> None:
        stop(self.proc, STOP_TIMEOUT)
        self._reader.join(5)


class Campaign:
    """N campaigners; replaces the ones hit; stops them all at the end."""

    def __init__(self, etcdctl: str, endpoints: str, n: int) -> None:
        self.etcdctl, self.endpoints = etcdctl, endpoints
        self.wins: asyncio.Queue[Win] = asyncio.Queue()
        self.running: dict[str, Campaigner] = {}
        self.winner: str | None = None
        self._loop = asyncio.get_running_loop()
        self._count = 0
        for _ in range(n):
            self.spawn()

    def spawn(self) -> None:
        self._count += 1
        name = f"c{self._count}"
        self.running[name] = Campaigner(self.etcdctl, self.endpoints, name, self.wins,
                                        self._loop)

    async def next_win(self, within: float) -> Win | None:
        try:
            async with asyncio.timeout(within):
                return await self.wins.get()
        except TimeoutError:
            return None

    def close(self) -> None:
        for c in self.running.values():
            c.stop()


async def measure_elect(campaign: Campaign, mode: str, kills: int, *, rng: random.Random,
                        nodes: int) -> Row:
    sig = {"crash": signal.SIGKILL, "graceful": signal.SIGTERM}[mode]
    bound = ETCDCTL_SESSION_TTL + 15 if mode == "crash" else 10.0
    row = Row(system="etcdctl elect", nodes=nodes, mode=mode,
              what=f"{common.MODE_SIGNAL[mode]} winning campaigner -> another prints its "
                   "proposal",
              note=("bounded by the session TTL (60 s): lease never revoked"
                    if mode == "crash" else "resigns: key deleted at once"))
    if campaign.winner is None:
        first = await campaign.next_win(30)
        if first is None:
            raise RuntimeError("etcdctl elect: no campaigner won within 30 s")
        campaign.winner = first[0]
    winner = campaign.winner
    for i in range(kills):
        await asyncio.sleep(common.SETTLE_DELAY + rng.uniform(0, common.SETTLE_JITTER))
        t_hit = time.monotonic()
        campaign.running[winner].proc.send_signal(sig)
        won = await campaign.next_win(bound)
        if won is None:
            raise RuntimeError(f"etcdctl elect {mode} {i + 1}: no new winner in {bound} s")
        row.times_ms.append(1000 * (won[1] - t_hit))
        print(f"  etcdctl elect {mode} {i + 1:3d}: {winner} -> {won[0]} after "
              f"{row.times_ms[-1]:.0f} ms", flush=True)
        campaign.running.pop(winner).stop()
        campaign.spawn()  # a fresh campaigner queues behind the others
        winner = campaign.winner = won[0]
    return row


# ---- the peer rows --------------------------------------------------------------------------

async def run_peers(args: argparse.Namespace, rng: random.Random
                    ) -> tuple[list[Row], list[Resources], dict[str, object]]:
    """etcd's rows (args.mode, args.kills) and etcdctl elect's (crash, graceful) for
    `--peer etcd,elect`; also its steady state and what was run."""
    etcd, etcdctl = binaries()
    timing = Timing()  # ddg's defaults, from the one place that holds them
    rows: list[Row] = []
    res: list[Resources] = []
    async with httpx.AsyncClient(timeout=0.5, trust_env=False) as http:
        with EtcdCluster(etcd, timing, http) as cluster:
            info: dict[str, object] = {
                "etcd": f"{etcd.describe()}, {etcdctl.describe()}, {MEMBERS} members, "
                        f"--heartbeat-interval {cluster.heartbeat_ms} --election-timeout "
                        f"{timing.election_timeout_min_ms} --pre-vote=true"}
            t0 = time.monotonic()
            cluster.start()
            await cluster.wait_stable(30)
            cold = 1000 * (time.monotonic() - t0)
            print(f"etcd: {MEMBERS} members agree on a leader {cold:.0f} ms after spawning",
                  flush=True)
            if "etcd" in args.peer:
                r = await common.steady_state(cluster, args.steady_seconds)
                r.cold_start_ms = cold
                r.timing = (f"heartbeat {cluster.heartbeat_ms} ms, election timeout "
                            f"{timing.election_timeout_min_ms}-"
                            f"{2 * timing.election_timeout_min_ms} ms")
                res.append(r)
                for mode in args.mode:
                    rows.append(await common.measure_failovers(cluster, mode, args.kills,
                                                               rng=rng, interval=args.poll))
            if "elect" in args.peer:
                rows += await run_elect(etcdctl.path, cluster, args, rng)
    return rows, res, info


async def run_elect(etcdctl: str, cluster: EtcdCluster, args: argparse.Namespace,
                    rng: random.Random) -> list[Row]:
    modes: Sequence[tuple[str, int]] = [("graceful", args.kills),
                                        ("crash", args.elect_crash_kills)]
    rows = []
    campaign = Campaign(etcdctl, cluster.endpoints, MEMBERS)
    try:
        for mode, kills in modes:
            if kills > 0 and (mode in args.mode):
                rows.append(await measure_elect(campaign, mode, kills, rng=rng,
                                                nodes=MEMBERS))
    finally:
        campaign.close()
    return rows


if __name__ == "__main__":
    raise SystemExit("run it through the failover benchmark: "
                     "python -m benchmarks.failover --no-ddg --peer etcd,elect")
