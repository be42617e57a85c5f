"""ddg.app: leader election inside a Python app.

The proof (integration): three app processes (ddg_testkit/app_worker.py), each a member with its
own ddg-node, on one cluster and one real Redis; the goose app is SIGKILLed, or its event loop
frozen while its node is stopped (so that the goose moves while the loop is blocked), again
and again. Every job records its term, start and last step: the intervals never overlap, the
terms strictly increase, and a killed app's node is gone. In CI: 8 kills and 3 freezes
(about 25 s on 2 busy cores); `DDG_APP_KILLS=30 DDG_APP_FREEZES=10` runs the issue's full bar
by hand (about 2 minutes; figures in the README). A loop freeze alone does not move the goose
(the node is another process: that is the point), so each freeze also stops the app's node
for as long, and the goose moves while the loop is blocked.

The unit tests: bad arguments are a ConfigError (ddg.errors) before anything starts.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ddg.app import GooseTerm, MemberConfig, SyncMember, member
from ddg.app.member import CONFIRM_WAIT, _Fenced
from ddg.errors import ConfigError, DdgError, MemberClosed, MemberError, NodeExited
from ddg.local.embedded import EmbeddedRedis, free_port
from ddg_testkit.procs import gone, proc_stat
from ddg_testkit.procs import stop as stop_proc
from ddg_testkit.wait import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]

# ---- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "says"), [
    ({"name": "", "port": 4001}, "member name ''"),
    ({"name": "a b", "port": 4001}, "member name 'a b'"),
    ({"name": "a", "port": 0}, "port must be an int in 1-65535"),
    ({"name": "a", "port": 70000}, "port must be an int in 1-65535"),
    ({"name": "a", "port": "4001"}, "port must be an int in 1-65535"),
    ({"name": "a", "port": True}, "port must be an int in 1-65535"),
    ({"name": "a", "port": 4001, "redis_url": "http://x"}, "redis URL"),
    ({"name": "a", "port": 4001, "cluster": "no/slash"}, "cluster name"),
    ({"name": "a", "port": 4001, "timing": "slow"}, "timing must be one of default, fast"),
    ({"name": "a", "port": 4001, "join_timeout": 0}, "join_timeout must be a positive"),
    ({"name": "a", "port": 4001, "join_timeout": "5"}, "join_timeout must be a positive"),
    ({"name": "a", "port": 4001, "secret": ""}, "secret is empty"),
    ({"name": "a", "port": 4001, "node_args": "--timing fast"}, "node_args is a tuple"),
])
def test_bad_arguments_are_one_config_error(settings: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        MemberConfig(**settings)  # type: ignore[arg-type]
    assert isinstance(caught.value, DdgError)
    with pytest.raises(ConfigError, match=says):
        SyncMember(**settings)


async def test_member_raises_before_starting_anything() -> None:
    with pytest.raises(ConfigError, match="port must be"):
        async with member(name="a", port=-1):
            pass


def test_secrets_reach_the_node_by_environment_only(tmp_path: Path) -> None:
    config = MemberConfig(name="a", port=4001, redis_url="redis://app:hunter2@127.0.0.1:6390/0",
                          secret="s3cret", data_dir=tmp_path)
    spec, env = config.spec()
    argv = " ".join(spec.argv())
    assert "hunter2" not in argv and "s3cret" not in argv
    assert "redis://app@127.0.0.1:6390/0" in argv
    assert dict(env) == {"DDG_REDIS_PASSWORD": "hunter2"}
    assert spec.secret == "s3cret"  # NodeProcess puts it in DDG_CLUSTER_SECRET
    assert "s3cret" not in repr(config)


def test_sync_member_outside_its_block_says_so() -> None:
    me = SyncMember(name="a", port=4001)
    with pytest.raises(MemberClosed, match="use it in a with block"):
        _ = me.is_goose


# ---- the gate on the job's steps (pure: a stand-in for the member's lease) ---------------


class _Lease:
    """What _Fenced asks of a Member: holds(term) against the clock, _confirm(term) after."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self.renew = False  # what a fresh /status would say
        self.confirms = 0

    def holds(self, term: int) -> bool:
        return time.monotonic() < self.deadline

    async def _confirm(self, term: int) -> bool:
        self.confirms += 1
        await asyncio.sleep(0)
        if self.renew:
            self.deadline = math.inf
        return self.holds(term)


async def _gated(lease: _Lease, steps: list[int], expire_after: int) -> None:
    async def job(term: int) -> None:
        while True:
            steps.append(term)
            if len(steps) == expire_after:
                lease.deadline = 0.0  # the lease ends while the job waits
            await asyncio.sleep(0)

    await _Fenced(job(7), lease, 7)  # type: ignore[arg-type]


async def test_a_step_due_after_the_lease_never_runs() -> None:
    lease, steps = _Lease(), []
    with pytest.raises(asyncio.CancelledError, match="not the goose of term 7"):
        await _gated(lease, steps, expire_after=3)
    assert steps == [7, 7, 7] and lease.confirms == 1


async def test_the_gate_returns_the_jobs_value() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await _Fenced(answer(), _Lease(), 7) == 42  # type: ignore[arg-type]


async def test_a_renewed_lease_lets_the_job_go_on() -> None:
    lease, steps = _Lease(), []
    lease.renew = True
    task = asyncio.create_task(_gated(lease, steps, expire_after=3))
    await wait_until_async(lambda: len(steps) >= 10, timeout=10, what="steps", interval=0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lease.confirms == 1


# ---- a real member -------------------------------------------------------------------------


@pytest.fixture
def redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(die_with_parent=True) as server:
        yield server


@pytest.mark.integration
async def test_a_node_that_cannot_join_raises_with_its_last_words(
        redis: EmbeddedRedis, tmp_path: Path) -> None:
    # No --bootstrap and no cluster in Redis: the node waits; the member gives up in time.
    with pytest.raises(MemberError, match=r"did not join within 1\.5 s") as caught:
        async with member(name="a", port=free_port(), redis_url=redis.url, cluster="none",
                          data_dir=tmp_path / "a", join_timeout=1.5):
            pass
    assert "its log" in str(caught.value) or "see " in str(caught.value)


@pytest.mark.integration
async def test_one_member_runs_its_job_and_stops_it_on_close(
        redis: EmbeddedRedis, tmp_path: Path) -> None:
    steps: list[tuple[int, float, float | None]] = []
    async with member(name="a", port=free_port(), redis_url=redis.url, cluster="one",
                      data_dir=tmp_path / "a", bootstrap=True) as me:
        pid = me.node_pid
        assert pid is not None

        async def job(term: int) -> None:
            while True:
                steps.append((term, time.monotonic(), me.lease_deadline))
                await asyncio.sleep(0.005)

        runner = asyncio.create_task(me.run_as_goose(job))
        changes = me.changes()
        first = await anext(changes)
        assert first.term >= 0
        await _until(lambda: len(steps) >= 20)
        assert me.is_goose and me.term == steps[-1][0] >= 1
        # A task of the job's, checked against the lease as the job is.
        assert await me.fenced(me.term, asyncio.sleep(0, result=5)) == 5
        with pytest.raises(ConfigError, match="fenced needs a coroutine"):
            me.fenced(me.term, 5)  # type: ignore[arg-type]
        stale = me.fenced(me.term - 1, asyncio.sleep(0))
        with pytest.raises(asyncio.CancelledError, match="not the goose of term"):
            await stale
        await changes.aclose()
    # The block's end stopped the job first, then the node.
    with pytest.raises(MemberClosed):
        await runner
    assert gone(pid)
    for term, at, deadline in steps:
        assert term == steps[0][0]
        assert deadline is not None and at <= deadline, "a step ran past the lease"


async def _until(cond: Callable[[], bool]) -> None:
    await wait_until_async(cond, timeout=30, what="the job's steps", interval=0.01)


@pytest.mark.integration
async def test_a_frozen_node_stops_the_job_at_its_lease(redis: EmbeddedRedis,
                                                        tmp_path: Path) -> None:
    """The node stopped (SIGSTOP) while the app runs: no step after the lease's deadline,
    the job cancelled within CONFIRM_WAIT of it; continued, the node leads again and the job
    starts again."""
    steps: list[tuple[int, float, float]] = []
    ends: list[float] = []
    async with member(name="f", port=free_port(), redis_url=redis.url, cluster="frozen",
                      data_dir=tmp_path / "f", bootstrap=True) as me:
        pid = me.node_pid
        assert pid is not None

        async def job(term: int) -> None:
            try:
                while True:
                    deadline = me.lease_deadline
                    steps.append((term, time.monotonic(), -1.0 if deadline is None else deadline))
                    await asyncio.sleep(0.002)
            finally:
                ends.append(time.monotonic())

        runner = asyncio.create_task(me.run_as_goose(job))
        try:
            await _until(lambda: len(steps) >= 10)
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await _until(lambda: len(ends) >= 1)
            finally:
                os.kill(pid, signal.SIGCONT)
            before = [s for s in steps if s[1] <= stopped]
            after = [s for s in steps if s[1] > stopped]
            last_deadline = max(d for _t, _at, d in before)
            assert all(at < d for _t, at, d in steps), "a step ran past its lease"
            assert all(at < last_deadline for _t, at, _d in after)
            late_ms = (ends[0] - last_deadline) * 1000
            assert late_ms < (CONFIRM_WAIT + 0.5) * 1000, late_ms
            print(f"\nnode stopped: job cancelled {late_ms:.1f} ms after its lease's deadline")
            count = len(steps)
            await _until(lambda: len(steps) > count + 10)  # it leads again: the job again
        finally:
            runner.cancel()


@pytest.mark.integration
async def test_a_node_killed_from_outside_ends_the_member(redis: EmbeddedRedis,
                                                          tmp_path: Path) -> None:
    cancelled: list[int] = []
    async with member(name="k", port=free_port(), redis_url=redis.url, cluster="killed",
                      data_dir=tmp_path / "k", bootstrap=True) as me:
        pid = me.node_pid
        assert pid is not None
        changes = me.changes()
        await anext(changes)

        async def job(term: int) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(term)
                raise

        runner = asyncio.create_task(me.run_as_goose(job))
        await me.wait_goose()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(NodeExited, match="its node exited with code -9"):
            await asyncio.wait_for(runner, 10)
        assert cancelled and not me.is_goose
        with pytest.raises(NodeExited):
            while True:
                await anext(changes)
        await changes.aclose()


@pytest.mark.integration
def test_sync_member_for_scripts_and_threads(redis: EmbeddedRedis, tmp_path: Path) -> None:
    class Done(Exception):
        pass

    seen: list[int] = []
    with SyncMember(name="s", port=free_port(), redis_url=redis.url, cluster="sync",
                    data_dir=tmp_path / "s", bootstrap=True) as me:
        term = me.wait_goose(timeout=30)
        assert term is not None and term >= 1
        changes = me.changes()
        assert next(changes).term == term
        changes.close()

        def job(goose: GooseTerm) -> None:
            while goose.held:
                goose.check()
                seen.append(goose.term)
                if len(seen) == 20:
                    raise Done
                time.sleep(0.005)

        with pytest.raises(Done):
            me.run_as_goose(job)
        assert me.is_goose and me.lease_deadline is not None
        pid = me.node_pid
        assert pid is not None
    assert gone(pid)
    assert seen == [term] * 20
    with pytest.raises(MemberClosed):
        me.wait_goose(timeout=1)


# ---- three apps, kills and freezes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    pid: int
    term: int
    start: float
    last: float


def _read_progress(work: Path, pid: int) -> tuple[int, float, float, bool] | None:
    try:
        text = (work / f"progress-{pid}").read_text().split()
    except OSError:
        return None
    if len(text) != 4:
        return None
    return int(text[0]), float(text[1]), float(text[2]), text[3] == "1"


class Apps:
    def __init__(self, work: Path, redis_url: str) -> None:
        self.work = work
        self.redis_url = redis_url
        self.ports = {name: free_port() for name in ("a", "b", "c")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[Job] = []

    def start(self, name: str, *, bootstrap: bool = False) -> None:
        argv = [sys.executable, "-m", "ddg_testkit.app_worker", name, str(self.ports[name]),
                self.redis_url, "apps", str(self.work)]
        if bootstrap:
            argv.append("--bootstrap")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.work / f"app-{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        log.close()
        pid = self.procs[name].pid
        wait_until(lambda: (self.work / f"node-{pid}").exists(), timeout=30,
                   what=f"app {name} to join", detail=lambda: self._tail(name))

    def _tail(self, name: str) -> str:
        return (self.work / f"app-{name}.log").read_text(errors="replace")[-2000:]

    def node_pid(self, name: str) -> int:
        return int((self.work / f"node-{self.procs[name].pid}").read_text())

    def running_job(self) -> tuple[str, int] | None:
        """The app whose job runs, with the job's term (the highest active term)."""
        best: tuple[str, int] | None = None
        for name, proc in self.procs.items():
            progress = _read_progress(self.work, proc.pid)
            if progress is not None and progress[3] and (best is None or progress[0] > best[1]):
                best = (name, progress[0])
        return best

    def wait_job(self, *, after_term: int, not_app: str | None = None) -> tuple[str, int]:
        def found() -> tuple[str, int] | None:
            job = self.running_job()
            if job is None or job[1] <= after_term or job[0] == not_app:
                return None
            return job
        return wait_until(found, timeout=30, what=f"a job of a term after {after_term}")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        node = self.node_pid(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_until(lambda: gone(node), timeout=10, what=f"app {name}'s node {node} to die")
        progress = _read_progress(self.work, proc.pid)
        if progress is not None:
            term, start, last, _active = progress
            self.killed.append(Job(name, proc.pid, term, start, last))

    def close(self) -> list[int]:
        nodes = []
        for name, proc in self.procs.items():
            if proc.poll() is None:
                nodes.append(self.node_pid(name))
            stop_proc(proc, timeout=10)
        return nodes

    def jobs(self) -> list[Job]:
        """Every job that ran: a node whose lease lapsed for a moment (a quorum round acked
        late on the busy machine) has its job cancelled and started again in the same term,
        so (pid, term, start) names a job."""
        ended: dict[tuple[int, int, float], Job] = {}
        for job, _when in self.ended():
            ended[(job.pid, job.term, job.start)] = job
        for job in self.killed:
            ended.setdefault((job.pid, job.term, job.start), job)
        return sorted(ended.values(), key=lambda j: j.start)

    def ended(self) -> list[tuple[Job, float]]:
        """The jobs that ended (not killed), with when they ended."""
        path = self.work / "jobs.log"
        out = []
        text = path.read_text() if path.exists() else ""
        for line in text.split("\n")[:-1]:  # whole lines: the last may be half-written
            name, pid, term, start, last, when = line.split()
            out.append((Job(name, int(pid), int(term), float(start), float(last)), float(when)))
        return out


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_three_apps_through_kills_and_freezes_never_overlap(
        redis: EmbeddedRedis, tmp_path: Path) -> None:
    kills = int(os.environ.get("DDG_APP_KILLS", "8"))
    freezes = int(os.environ.get("DDG_APP_FREEZES", "3"))
    apps = Apps(tmp_path, redis.url)
    cancel_after_freeze: list[float] = []
    try:
        apps.start("a", bootstrap=True)
        apps.start("b")
        apps.start("c")
        # Freezes spread among the kills, the same order every run.
        every = max(1, kills // max(1, freezes))
        order: list[str] = []
        for i in range(kills):
            order.append("kill")
            if (i + 1) % every == 0 and order.count("freeze") < freezes:
                order.append("freeze")
        order += ["freeze"] * (freezes - order.count("freeze"))
        term = 0
        for what in order:
            name, term = apps.wait_job(after_term=term)
            if what == "kill":
                apps.kill(name)
                apps.start(name)
            else:
                pid = apps.procs[name].pid
                os.kill(pid, signal.SIGUSR1)
                apps.wait_job(after_term=term, not_app=name)
                freeze = tmp_path / f"freeze-{pid}"
                wait_until(freeze.exists, timeout=30, what=f"app {name}'s freeze to end")
                began, end = map(float, freeze.read_text().split())
                freeze.unlink()

                def ended(pid: int = pid, began: float = began) -> tuple[Job, float] | None:
                    """The job that ran when the freeze began, once it ended."""
                    return next(((j, when) for j, when in apps.ended()
                                 if j.pid == pid and j.start < began < when), None)
                frozen, when = wait_until(ended, timeout=10,
                                          what=f"app {name}'s job of term {term} to end")
                # Its lease ended while the loop was blocked: not one step after it.
                assert frozen.last < began, f"{frozen} stepped after its freeze at {began}"
                cancel_after_freeze.append(when - end)
    finally:
        nodes = apps.close()
    wait_until(lambda: all(gone(node) for node in nodes), timeout=10,
               what=f"the apps' nodes {nodes} to stop")

    jobs = apps.jobs()
    assert len(jobs) >= kills + freezes + 1
    gaps = []
    for prev, nxt in itertools.pairwise(jobs):
        assert prev.last < nxt.start, f"jobs overlap: {prev} and {nxt}"
        # One goose per term: a job of the same term again only from the same node.
        assert prev.term < nxt.term or (prev.term, prev.pid) == (nxt.term, nxt.pid), \
            f"terms do not increase: {prev} then {nxt}"
        if prev.term != nxt.term:  # a hand-over to another goose
            gaps.append((nxt.start - prev.last) * 1000)
    restarts = len(jobs) - len({(j.pid, j.term) for j in jobs})
    print(f"\n{kills} kills, {freezes} freezes, {len(jobs)} jobs ({restarts} started again in "
          f"the same term after a lapse), 0 overlaps; from one goose's "
          f"job's last step to the next goose's job's start: min {min(gaps):.1f} ms, median "
          f"{statistics.median(gaps):.1f}, max {max(gaps):.1f}")
    if cancel_after_freeze:
        print("after a freeze, job cancelled within (ms): "
              + ", ".join(f"{x * 1000:.1f}" for x in cancel_after_freeze))


# ---- the README's example ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    marker = "<!-- tested: tests/app/test_app.py runs this block -->\n```python\n"
    start = text.index(marker) + len(marker)
    return text[start:text.index("```\n", start)]


@pytest.mark.integration
def test_the_readme_scheduler_fires_only_on_the_goose(redis: EmbeddedRedis,
                                                       tmp_path: Path) -> None:
    script = tmp_path / "scheduler.py"
    script.write_text(_readme_example())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.out" for name in ("one", "two")}

    def start(name: str, bootstrap: bool) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(tmp_path / "state"),
                   APP_NAME=name, APP_PORT=str(free_port()), APP_REDIS_URL=redis.url,
                   APP_BOOTSTRAP="1" if bootstrap else "0")
        with open(logs[name], "ab") as out:
            procs[name] = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def fires(name: str) -> list[int]:
        return [int(line.rsplit(" ", 1)[1]) for line in logs[name].read_text().splitlines()
                if ", term " in line and " fire" in line]

    try:
        start("one", True)
        wait_until(lambda: fires("one"), timeout=30, what="one to fire",
                   detail=lambda: logs["one"].read_text())
        start("two", False)
        wait_until(lambda: "two: duck" in logs["two"].read_text(), timeout=30,
                   what="two to join as a duck", detail=lambda: logs["two"].read_text())
        assert fires("two") == []
        first = fires("one")[-1]
        assert (tmp_path / "state" / "ddg" / "ddg" / "one").is_dir()  # ddg-node's default
        nodes = _children(procs["one"].pid)
        assert len(nodes) == 1
        procs["one"].kill()
        procs["one"].wait()
        wait_until(lambda: gone(nodes[0]), timeout=10, what="the killed app's node to die")
        # Two's node needs its peer for a quorum of two: bring one back, as an operator would.
        start("one", False)
        wait_until(lambda: fires("two") or fires("one")[-1:] != [first], timeout=30,
                   what="a new goose to fire", detail=lambda: logs["two"].read_text())
        later = fires("two") + [t for t in fires("one") if t > first]
        assert min(later) > first
    finally:
        for proc in procs.values():
            stop_proc(proc, timeout=10)
