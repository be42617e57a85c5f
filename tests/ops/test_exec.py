"""`--exec -- CMD` runs CMD only on the goose, and `--on-change` hooks: real ddg-node processes,
a real CMD (a small Python program that records its own start and stop), /proc as the judge
of what is still running.

The guarantee: while the old goose's node runs, its CMD gets SIGTERM the moment it stops being
the goose (its lease ran out, a higher term, a hand-over, removal, SIGTERM to the node) and
SIGKILL a grace later, and the new goose's CMD starts only after an election, so two CMDs
overlap by at most the grace; a dead node's CMD, and everything CMD started, dies with it (its
guard, ddg.ops.lifeline: test_a_forking_job_and_its_hooks_never_outlive_their_node). What it
is not: a node that is frozen (SIGSTOP, a paused VM) cannot stop its CMD, which runs on beside
the new goose's until the node resumes; only the fencing token (DDG_TERM) makes that safe
(test_a_frozen_node_cannot_stop_its_job_and_the_fencing_token_tells_the_writes_apart).

DDG_EXEC_KILLS (default 4) and DDG_EXEC_NODES (default 3) size the kill loop; the issue's bar
is DDG_EXEC_KILLS=50 DDG_EXEC_NODES=5.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from ddg.cli import node as cli
from ddg.client import Role
from ddg.errors import ConfigError
from ddg.ops.changes import Change, View
from ddg.ops.job import GUARD, HookConfig, Hooks, Job, JobConfig
from ddg_testkit import LocalCluster, wait_until, wait_until_async
from ddg_testkit.jobtree import (
    TREE_SIZE,
    Sampler,
    find,
    kill_all,
    kill_geese,
    tree_running,
    write_tree,
)
from ddg_testkit.procs import alive, gone

Make = Callable[..., LocalCluster]
GRACE_MS = 100
# How long a dead node's job and hooks may outlive it here. The goal is 100 ms (measured by
# benchmarks/exec_kill.py: tens of ms on 2 shared, loaded cores, worst seen 140 ms); this bound
# leaves a busy CI machine room, and still fails on a process that survives.
GONE_BOUND_MS = 1000

# The CMD: records "start|stop TERM NODE PID MONOTONIC_NS" (CLOCK_MONOTONIC is system-wide, so
# the records of all nodes' CMDs compare); SIGTERM records stop and exits. One process, no
# children. argv[1] is the record file, and marks the process for the /proc scan.
JOB = textwrap.dedent("""\
    import os, signal, sys, time
    term, node = os.environ["DDG_TERM"], os.environ["DDG_NODE_NAME"]
    def record(what):
        with open(sys.argv[1], "a") as f:
            f.write(f"{what} {term} {node} {os.getpid()} {time.monotonic_ns()}\\n")
    def stop(*_):
        record("stop")
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    record("start")
    while True:
        signal.pause()
""")


@dataclass
class Run:
    term: int
    node: str
    pid: int
    start: int  # monotonic ns
    stop: int | None = None


def oom_score_adj(pid: int) -> str:
    return Path(f"/proc/{pid}/oom_score_adj").read_text().strip()


def may_lower_oom_score() -> bool:
    """CAP_SYS_RESOURCE (24) in our effective set: root in a container may lack it."""
    status = Path("/proc/self/status").read_text()
    eff = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:"))
    return bool(int(eff, 16) >> 24 & 1)


def runs(path: Path) -> list[Run]:
    """The CMDs in the order they started, with their stops."""
    out: dict[int, Run] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        what, term, node, pid, ns = line.split()
        if what == "start":
            out[int(pid)] = Run(term=int(term), node=node, pid=int(pid), start=int(ns))
        elif int(pid) in out:  # (a CMD told to stop as it started may record only its stop)
            out[int(pid)].stop = int(ns)
    return sorted(out.values(), key=lambda r: r.start)


def exec_args(tmp: Path, *extra: str) -> list[str]:
    script = tmp / "job.py"
    script.write_text(JOB)
    return [*extra, "--exec-grace-ms", str(GRACE_MS), "--exec", "--", sys.executable, "-I",
            "-S", str(script), str(tmp / "runs.txt")]


def goose_and_run(c: LocalCluster, path: Path, names: list[str],
                  exclude: Sequence[str] = ()) -> tuple[str, Run]:
    """The one goose among NAMES (but EXCLUDE) and its CMD for its term, looked at together:
    on a busy machine a goose can lose its quorum before its CMD starts, and another take over
    (CI, two test workers: n1 won term 1 and lost it 160 ms later, n2 won term 2)."""
    def find() -> tuple[str, Run] | None:
        geese = c.geese([n for n in names if n not in exclude])
        if len(geese) != 1 or (st := c.status(geese[0])) is None or st.role != "goose":
            return None
        run = next((r for r in runs(path) if r.node == geese[0] and r.term == st.term
                    and r.stop is None and alive(r.pid)), None)
        return None if run is None else (geese[0], run)
    return c.wait_for(find, timeout=10, what=f"one goose among {names} and its CMD")


def follows(c: LocalCluster, name: str) -> bool:
    """NAME answers and knows a goose: back in the cluster. Not a given goose: on a busy
    machine the new goose may lose its quorum while NAME restarts, and another take over."""
    return (s := c.status(name)) is not None and s.goose is not None


def overlaps_ms(done: list[Run], ends: dict[int, int]) -> list[float]:
    """For each CMD after the first: how long the previous one still ran after it started
    (negative: the gap between them). ENDS: a stop seen from outside (the kill of its node)."""
    out = []
    for prev, nxt in itertools.pairwise(done):
        end = prev.stop if prev.stop is not None else ends[prev.pid]
        out.append((end - nxt.start) / 1e6)
    return out


# ---- real clusters -------------------------------------------------------------------------


@pytest.mark.integration
def test_the_job_follows_the_goose_through_kills(make_cluster: Make, tmp_path: Path) -> None:
    kills = int(os.environ.get("DDG_EXEC_KILLS", "4"))
    n = int(os.environ.get("DDG_EXEC_NODES", "3"))
    c = make_cluster()
    args = exec_args(tmp_path)
    path, marker = tmp_path / "runs.txt", str(tmp_path / "job.py")
    names = [c.add(extra_args=args).name for _ in range(n)]
    c.wait_joined(names)  # one join at a time: all in before a goose is killed
    ends: dict[int, int] = {}  # pid -> when its node was SIGKILLed
    gone_after_ms: list[float] = []
    for i in range(kills):
        goose, run = goose_and_run(c, path, names)
        if i % 2 == 0:  # SIGKILL: the CMD dies with its node
            killed = time.monotonic_ns()
            c.kill(goose)
            wait_until(partial(gone, run.pid), timeout=2,
                       what=f"CMD {run.pid} to die with its node", interval=0.002)
            ends[run.pid] = time.monotonic_ns()  # seen gone: an upper bound of its end
            gone_after_ms.append((ends[run.pid] - killed) / 1e6)
            c.wait(goose, 5)
        else:  # SIGTERM: a hand-over, and the CMD records its stop
            c.terminate(goose)
            assert c.wait(goose, 5) == 0, c.log_tail(goose)
        goose_and_run(c, path, names, exclude=[goose])
        c.restart(goose)
        c.wait_for(partial(follows, c, goose), timeout=10, what=f"{goose} back, following a goose")
    done = runs(path)
    c.close()
    assert find([marker]) == [], "a CMD outlived the cluster"
    terms = [r.term for r in done]
    assert terms == sorted(set(terms)), f"terms do not strictly increase: {terms}"
    assert len(done) >= kills + 1, done
    overlaps = overlaps_ms(done, ends)
    print(f"\n{kills} goose kills on {n} nodes: CMD overlap max {max(overlaps):.1f} ms "
          f"(negative: a gap; min gap {-max(overlaps):.1f} ms, max gap {-min(overlaps):.1f} "
          f"ms); a SIGKILLed node's CMD was seen gone within {max(gone_after_ms or [0]):.1f} ms")
    assert max(overlaps) <= GRACE_MS, overlaps


@pytest.mark.integration
def test_a_partitioned_goose_stops_its_job_before_the_new_one_starts(
        make_cluster: Make, tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text(f'echo "$DDG_NODE_NAME $1 $2 $3" >> {tmp_path / "hooks.txt"}\n')
    c = make_cluster(allow_fault_injection=True)
    args = exec_args(tmp_path, "--on-change", f"sh {hook}")
    path = tmp_path / "runs.txt"
    names = [c.add(extra_args=args).name for _ in range(3)]
    c.wait_joined(names)
    goose, old = goose_and_run(c, path, names)
    resp = httpx.post(c.address(goose) + "/admin/partition", json={"all": True}, timeout=5)
    assert resp.status_code == 200
    _, new = goose_and_run(c, path, names, exclude=[goose])
    stopped = wait_until(lambda: next((r.stop for r in runs(path) if r.pid == old.pid
                                       and r.stop is not None), None),
                         timeout=5, what="the partitioned goose's CMD to stop")
    margin_ms = (new.start - stopped) / 1e6
    print(f"\npartitioned goose: its CMD stopped {margin_ms:.1f} ms before the new goose's "
          "CMD started")
    assert new.term > old.term
    assert stopped <= new.start + GRACE_MS * 1_000_000, f"overlap {-margin_ms:.1f} ms"
    # the hook ran for each role change of the old goose: goose, then no longer. (On a busy
    # machine a goose may answer duck for one slow round and goose again in the same term
    # before the partition: each is a role change, with its run.)

    def hooked() -> list[list[str]] | None:
        lines = (tmp_path / "hooks.txt").read_text().splitlines()
        mine = [ln.split(" ") for ln in lines if ln.startswith(goose + " ")]
        roles = [m[1] for m in mine]
        return mine if "goose" in roles and roles[-1] != "goose" else None

    mine = wait_until(hooked, timeout=5, what="the old goose's hooks")
    assert ["goose", str(old.term), goose] in [m[1:] for m in mine], mine
    assert all(int(m[2]) <= old.term for m in mine if m[1] == "goose"), mine
    httpx.post(c.address(goose) + "/admin/heal", json={}, timeout=5)
    c.close()
    assert find([str(tmp_path / "job.py")]) == [], "a CMD outlived the cluster"


@pytest.mark.integration
def test_a_frozen_node_cannot_stop_its_job_and_the_fencing_token_tells_the_writes_apart(
        make_cluster: Make, tmp_path: Path) -> None:
    """SIGSTOP of the goose's node: the guarantee does NOT hold. Its CMD runs on beside the
    new goose's until the node thaws (then it is stopped at once): the overlap is as long as
    the freeze. What stays true is the fencing token: the frozen goose's CMD has the smaller
    DDG_TERM, so a store that remembers the largest term it has seen refuses its writes."""
    c = make_cluster()
    path = tmp_path / "runs.txt"
    names = [c.add(extra_args=exec_args(tmp_path)).name for _ in range(3)]
    c.wait_joined(names)
    goose, old = goose_and_run(c, path, names)
    c.pause(goose)
    try:
        _, new = goose_and_run(c, path, names, exclude=[goose])
        assert alive(old.pid), "the frozen node's CMD still runs: nothing can stop it"
        assert new.term > old.term, "but its fencing token is the smaller one"
    finally:
        thawed = time.monotonic_ns()
        c.resume(goose)
    stopped = wait_until(lambda: next((r.stop for r in runs(path) if r.pid == old.pid
                                       and r.stop is not None), None),
                         timeout=5, what="the thawed node to stop its CMD")
    took_ms = (stopped - thawed) / 1e6
    print(f"\nthawed goose: its CMD stopped {took_ms:.1f} ms after SIGCONT")
    assert took_ms < 1000
    c.close()
    assert find([str(tmp_path / "job.py")]) == [], "a CMD outlived the cluster"


@pytest.mark.integration
def test_a_forking_job_and_its_hooks_never_outlive_their_node(make_cluster: Make,
                                                              tmp_path: Path) -> None:
    """The issue's job: its long-lived program started without `exec`, a grandchild that calls
    setsid() and forks again; the same tree as an --on-change hook. The goose's node is killed
    (SIGKILL as the OOM killer does, and a crash); a sampler reads /proc every 10 ms. Every
    process of the dead node's job and hooks is gone at once, no moment has two instances of
    the job, and a graceful stop of every node leaves nothing. DDG_EXEC_TREE_KILLS (default 8)
    sizes it; benchmarks/exec_kill.py runs the issue's 30 and prints the figures."""
    kills = int(os.environ.get("DDG_EXEC_TREE_KILLS", "8"))
    job, hook = write_tree(tmp_path / "job"), write_tree(tmp_path / "hook")
    markers = [job.marker, hook.marker]
    c = make_cluster()
    args = ["--on-change", shlex.join(hook.argv), "--on-change-timeout-ms", "3000",
            "--exec-grace-ms", str(GRACE_MS), "--exec", "--", *job.argv]
    names = [c.add(extra_args=args).name for _ in range(3)]
    c.wait_joined(names)
    sampler = Sampler(job.marker).start()
    try:
        done = kill_geese(c, names, job, hook, kills,
                          signals=(signal.SIGKILL, signal.SIGKILL, signal.SIGSEGV))
        sampler.stop()
        c.close()  # a graceful stop of every node: the last goose's job tree goes too
        after_close = find(markers)
    finally:
        sampler.stop()
        c.close()
        kill_all(markers)
    gone = [k.gone.all_ms for k in done if k.gone.all_ms is not None]
    print(f"\n{kills} goose kills: job and hooks (guards included) gone "
          f"{min(gone, default=0):.1f}-{max(gone, default=0):.1f} ms after the signal; "
          f"{sum(k.hooked for k in done)} kills hit a running hook tree; {sampler.samples} "
          f"samples, {len(sampler.doubles)} with two instances")
    assert [k for k in done if k.gone.left] == [], "processes outlived their node"
    assert sampler.doubles == [], "two instances of the job ran at once"
    assert after_close == [], "processes outlived a graceful stop"
    assert any(k.hooked for k in done), "no kill found a hook running"
    assert max(gone) < GONE_BOUND_MS, gone


@pytest.mark.integration
def test_the_sampler_counts_only_the_trees_own_processes(tmp_path: Path) -> None:
    """Found on three test workers: a node's fork, its command line read before it exec'd a
    hook's guard and its environment after (DDG_TERM of the hook), was counted as a second
    instance of the job for the 3 s the hook ran. Here a process that carries the job's
    marker and a DDG_TERM but is no tree process (as the node, a guard, or such a fork) runs
    beside a real tree of another term: one instance."""
    tree = write_tree(tmp_path / "job")
    env = {**os.environ, "DDG_NODE_NAME": "n1"}
    sleeper = "import time; time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", sleeper, "--exec", "--", *tree.argv],
                              env={**env, "DDG_TERM": "1"}),  # a node's fork, read halfway
             subprocess.Popen(tree.argv, env={**env, "DDG_TERM": "2"}, start_new_session=True)]
    try:
        wait_until(tree_running(tree.marker, "n1", 2), timeout=10, what="the tree")

        def one_instance() -> bool:
            # A sample and find() look at different moments, and the tree may still fork
            # and exec (fresh clone G2: one pid more in find()); ask until they agree. The
            # old sampler never agrees: it counts the fork, term 1, as a second instance.
            seen = {term: sorted(pids) for term, pids in Sampler(tree.marker).sample().items()}
            return seen == {2: sorted(p.pid for p in find([tree.marker])
                                      if p.tree and p.term == 2)}
        wait_until(one_instance, timeout=10, what="one instance of the job, term 2")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        kill_all([tree.marker])


@pytest.mark.integration
def test_the_hook_fires_for_real_changes_and_a_duck_learns_its_goose(
        make_cluster: Make, tmp_path: Path) -> None:
    """The rule (README, docs/operations.md): HOOK ROLE TERM GOOSE runs when this node becomes
    the goose, stops being it, or (not the goose) first follows a goose, or another one than it
    last said. Never `duck 0 ""` before the node knows anything; a duck that lost an election
    is told the winner's name once it learns it."""
    out = tmp_path / "hooks.txt"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'echo "$DDG_NODE_NAME $1 $2 $3 $DDG_PREVIOUS_ROLE" >> {out}\n')
    c = make_cluster()
    names = [c.add(extra_args=["--on-change", f"sh {hook}"]).name for _ in range(3)]
    c.wait_joined(names)

    def last_runs(expect: dict[str, str]) -> dict[str, list[str]] | None:
        """Each node's last run, once each names the goose EXPECT says for it."""
        if not out.exists():
            return None
        last: dict[str, list[str]] = {}
        for line in out.read_text().splitlines():
            node, *rest = line.split(" ")
            last[node] = rest
        ok = all(last.get(n, [None, None, None])[2] == g for n, g in expect.items())
        return last if ok else None

    def agreed(among: list[str]) -> tuple[str, dict[str, list[str]]] | None:
        """The one goose among AMONG once every hook there names it, looked at together (a
        goose may lose its quorum before the hooks name it, and another take over)."""
        geese = c.geese(among)
        last = last_runs({n: geese[0] for n in among}) if len(geese) == 1 else None
        return None if last is None else (geese[0], last)

    goose, last = c.wait_for(lambda: agreed(names), timeout=10,
                             what="every node's hook to name the goose")
    assert last[goose][0] == "goose"
    assert all(last[n][0] == "duck" for n in names if n != goose), last
    check_runs(out.read_text(), names)
    c.kill(goose)
    rest = [n for n in names if n != goose]
    c.wait_for(lambda: agreed(rest), timeout=10,
               what="the surviving ducks' hooks to name the new goose")
    check_runs(out.read_text(), names)


def check_runs(text: str, names: list[str]) -> None:
    """Each node's runs: never one without a goose's name but right after its own goose run
    (it stepped down: said at once), never the same run twice in a row, the previous role
    the run before's."""
    mine = [ln.split(" ") for ln in text.splitlines()]
    for node in names:
        runs = [m[1:] for m in mine if m[0] == node]
        assert runs, f"{node}'s hook never ran"
        for before, run in zip([None, *runs], runs, strict=False):
            said = "" if before is None else before[0]
            assert run[3] == said, f"{node}: DDG_PREVIOUS_ROLE {run[3]!r}: {runs}"
            assert run[2] or said == "goose", f"{node}: a run without the goose: {runs}"
            assert before is None or run[:3] != before[:3], f"{node}: a repeated run: {runs}"


def test_bad_exec_flags_fail_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--port", "1", "--data-dir", str(tmp_path)]
    for argv, words in (([*base, "--exec"], "needs a command"),
                        ([*base, "--", "sleep", "1"], "after --exec"),
                        ([*base, "--exec-grace-ms", "0", "--exec", "--", "true"], "1-600000"),
                        ([*base, "--exec-log", "x"], "need --exec"),
                        ([*base, "--on-change", "'unclosed"], "--on-change")):
        assert cli.main(argv) == 1, argv
        assert words in capsys.readouterr().err, argv


# ---- the runner in-process, with real processes ----------------------------------------------


def change(i: int, role: Role, term: int) -> Change:
    view = View(role=role, state=role.value, term=term, goose="a" if role is Role.GOOSE else None,
                members=("a",), version=1)
    return Change(id=i, at=float(i), wall=float(i), view=view, previous=None)


@pytest.mark.integration
async def test_a_job_that_exits_is_restarted_with_the_backoff_only_while_goose(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = Job(JobConfig(command=("sh", "-c", f'echo "$DDG_TERM $(date +%s%N)" >> {out}; '
                                             'echo "to the log $DDG_NODE_NAME"; exit 3'),
                        restart_min_ms=50, restart_max_ms=400, log_file=tmp_path / "log"),
              node="a", cluster="c")
    job.open_log()
    task = asyncio.create_task(job.run())
    try:
        job.on_change(change(1, Role.GOOSE, 7))
        await wait_until_async(lambda: out.exists() and len(out.read_text().splitlines()) >= 5,
                               timeout=10, what="five runs")
        job.on_change(change(2, Role.DUCK, 8))
        count = len(out.read_text().splitlines())
        await asyncio.sleep(0.6)  # not a synchronization: the window in which nothing may run
        lines = out.read_text().splitlines()
        assert len(lines) == count, "restarted while not the goose"
        assert {ln.split()[0] for ln in lines} == {"7"}
        stamps = [int(ln.split()[1]) for ln in lines]
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
        assert gaps[-1] > gaps[0], f"no backoff: {gaps}"
        assert (tmp_path / "log").read_text().splitlines()[0] == "to the log a"  # --exec-log
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await job.close()


@pytest.mark.integration
async def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job = Job(JobConfig(command=("sh", "-c", f"trap '' TERM; echo $$ > {pid_file}; "
                                             "exec sleep 1000"), grace_ms=100),
              node="a", cluster="c")
    task = asyncio.create_task(job.run())
    try:
        job.on_change(change(1, Role.GOOSE, 3))
        pid = await wait_until_async(lambda: pid_file.exists() and pid_file.read_text().strip()
                                     and int(pid_file.read_text()), timeout=5, what="the job")
        await wait_until_async(lambda: job.pid == pid, timeout=5, what="the job's pid")
        t0 = time.monotonic()
        job.on_change(change(2, Role.DUCK, 4))
        # Blocking until the job is gone would take the 100 ms grace: half of it is the bound
        # (a call of microseconds; 5 ms was a bound a loaded machine's scheduler can break).
        assert time.monotonic() - t0 < 0.05 and alive(pid), "the listener must not block"
        await wait_until_async(lambda: not alive(pid), timeout=3, what="SIGKILL", interval=0.005)
        took = time.monotonic() - t0
        assert 0.09 <= took < 0.5, f"killed after {took * 1000:.0f} ms"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await job.close()


def test_the_hook_rule_says_each_role_and_goose_once() -> None:
    hooks = Hooks(HookConfig(command=("true",)), node="n1", cluster="c")
    said = []
    for i, (role, goose) in enumerate([
            (Role.DUCK, None),  # just started: nothing known yet
            (Role.CANDIDATE, None),  # an election: not said
            (Role.DUCK, "b"),  # follows b: said
            (Role.DUCK, "b"),  # b again in a later term: known already
            (Role.DUCK, None),  # b lost: not said until the next goose is known
            (Role.DUCK, "c"),  # said: another goose
            (Role.GOOSE, "n1"),  # said
            (Role.DUCK, None),  # stepped down: said at once
            (Role.CANDIDATE, None),  # not said
            (Role.DUCK, "c")], start=1):  # said
        view = View(role=role, state=role.value, term=i, goose=goose, members=("n1",),
                    version=1)
        hooks.on_change(Change(id=i, at=i, wall=i, view=view, previous=None))
    said = [(c.view.role.value, c.view.goose, before) for c, before in hooks._queue]
    assert said == [("duck", "b", ""), ("duck", "c", "duck"), ("goose", "n1", "duck"),
                    ("duck", None, "goose"), ("duck", "c", "duck")]


@pytest.mark.integration
async def test_hooks_run_one_at_a_time_are_killed_on_timeout_and_drop_the_oldest(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "hook.sh"
    script.write_text(f'echo "start $1 $2 $3 $DDG_NODE_NAME" >> {out}\n'
                      f'[ "$2" = 1 ] && sleep 1000\n'
                      f'echo "end $1 $2" >> {out}\n')
    hooks = Hooks(HookConfig(command=("sh", str(script)), timeout_ms=300, queue_size=2),
                  node="n1", cluster="c")
    task = asyncio.create_task(hooks.run())
    try:
        hooks.on_change(change(1, Role.GOOSE, 1))  # hangs: killed at the timeout
        await wait_until_async(lambda: out.exists(), timeout=5, what="the first hook")
        t0 = time.monotonic()
        for i, role in enumerate([Role.DUCK, Role.GOOSE, Role.DUCK, Role.GOOSE], start=2):
            hooks.on_change(change(i, role, i))  # 4 role changes into a queue of 2
        same = Change(id=6, at=6, wall=6, view=change(6, Role.GOOSE, 6).view,
                      previous=change(5, Role.GOOSE, 5).view)
        hooks.on_change(same)  # not a role change: no hook
        # waiting for the hanging hook would take its 300 ms timeout: half of it is the bound
        assert time.monotonic() - t0 < 0.15, "queueing never waits for a hook"
        await wait_until_async(lambda: out.read_text().count("end") == 2, timeout=5,
                               what="the queued hooks")
        lines = out.read_text().splitlines()
        assert lines[0] == "start goose 1 a n1"
        assert "end goose 1" not in lines, "the hung hook was killed"
        assert lines[1:] == ["start duck 4  n1", "end duck 4", "start goose 5 a n1",
                             "end goose 5"]
        assert hooks.dropped == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await hooks.close()


@pytest.mark.integration
async def test_a_job_tree_gets_sigterm_then_sigkill_setsid_escapees_included(
        tmp_path: Path) -> None:
    """No longer the goose: SIGTERM to every process of the tree, not only CMD's group (its
    program records it), SIGKILL after the grace to what ignores it (the escapee, which left
    the group and the session)."""
    tree = write_tree(tmp_path / "job")
    job = Job(JobConfig(command=tree.argv, grace_ms=GRACE_MS), node="a", cluster="c")
    task = asyncio.create_task(job.run())
    try:
        job.on_change(change(1, Role.GOOSE, 3))
        await wait_until_async(tree_running(tree.marker, "a", 3), timeout=10,
                               what="the job's tree", interval=0.01)
        program = await wait_until_async(
            lambda: next((int(r[1]) for r in tree.records() if r[0] == "program"), None),
            timeout=10, what="the program's record", interval=0.01)
        procs = find([tree.marker])
        ours = oom_score_adj(os.getpid())
        # The guard keeps clear of the OOM killer where it may; CMD's tree does not.
        assert [oom_score_adj(p.pid) for p in procs if p.tree] == [ours] * TREE_SIZE
        guard = next(p.pid for p in procs if p.guard)
        assert oom_score_adj(guard) == ("-1000" if may_lower_oom_score() else ours)
        t0 = time.monotonic()
        job.on_change(change(2, Role.DUCK, 4))
        await wait_until_async(lambda: not find([tree.marker]), timeout=5,
                               what="the whole tree to go", interval=0.005)
        took = time.monotonic() - t0
        assert ["sigterm", str(program)] in [r[:2] for r in tree.records()]
        assert GRACE_MS / 1000 * 0.9 <= took < 1.0, f"gone after {took * 1000:.0f} ms"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await job.close()
        kill_all([tree.marker])


@pytest.mark.integration
async def test_a_stop_cut_short_by_regained_leadership_still_ends_the_whole_tree(
        tmp_path: Path) -> None:
    """Duck for one slow round, then goose again in the same term (a busy goose does this):
    the SIGTERM went out at once and cannot be taken back, so the node sees the stop through
    (the escapee, deaf to SIGTERM, gets SIGKILL after the grace) and starts CMD again."""
    tree = write_tree(tmp_path / "job")
    job = Job(JobConfig(command=tree.argv, grace_ms=GRACE_MS), node="a", cluster="c")
    task = asyncio.create_task(job.run())
    try:
        job.on_change(change(1, Role.GOOSE, 3))
        await wait_until_async(tree_running(tree.marker, "a", 3), timeout=10,
                               what="the job's tree", interval=0.01)
        first = {p.pid for p in find([tree.marker])}
        job.on_change(change(2, Role.DUCK, 3))
        job.on_change(change(3, Role.GOOSE, 3))
        await wait_until_async(lambda: not first & {p.pid for p in find([tree.marker])},
                               timeout=5, what="the first tree to go", interval=0.005)
        await wait_until_async(tree_running(tree.marker, "a", 3), timeout=10,
                               what="the job's tree again", interval=0.01)
        assert job.starts == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await job.close()
        kill_all([tree.marker])


@pytest.mark.integration
async def test_a_guard_killed_by_hand_takes_cmd_and_the_node_says_what_may_be_left(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The residual risk (README): SIGKILL to the guard itself leaves it no time to clean up.
    CMD dies with it (its own parent-death signal); the node logs an error; what CMD started
    runs on, which is what this test cleans up after."""
    tree = write_tree(tmp_path / "job")
    job = Job(JobConfig(command=tree.argv, grace_ms=GRACE_MS, restart_min_ms=10_000),
              node="a", cluster="c")
    task = asyncio.create_task(job.run())
    try:
        job.on_change(change(1, Role.GOOSE, 3))
        await wait_until_async(tree_running(tree.marker, "a", 3), timeout=10,
                               what="the job's tree", interval=0.01)
        cmd = job.pid
        assert cmd is not None
        guard = next(p.pid for p in find([tree.marker]) if p.guard)
        os.kill(guard, signal.SIGKILL)
        await wait_until_async(lambda: gone(cmd), timeout=5, what="CMD to die with its guard",
                               interval=0.005)
        await wait_until_async(lambda: "may still run" in caplog.text, timeout=5,
                               what="the error")
        assert f"the guard (pid {guard}) of sh killed by SIGKILL" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await job.close()
        kill_all([tree.marker])


@pytest.mark.integration
async def test_a_hook_leaves_nothing_when_it_exits_or_times_out(tmp_path: Path) -> None:
    """A hook that exits leaving a setsid'd, double-forked child, and one that runs past its
    timeout: in both cases the whole tree is gone when the run ends."""
    quick = write_tree(tmp_path / "quick", life=0)
    slow = write_tree(tmp_path / "slow")
    runs = [Hooks(HookConfig(command=quick.argv, timeout_ms=10_000), node="a", cluster="c"),
            Hooks(HookConfig(command=slow.argv, timeout_ms=2000), node="a", cluster="c")]
    tasks = [asyncio.create_task(h.run()) for h in runs]
    try:
        for hooks in runs:
            hooks.on_change(change(1, Role.GOOSE, 3))
        for tree in (quick, slow):
            await wait_until_async(lambda t=tree: any(r[0] == "escapee" for r in t.records()),
                                   timeout=10, what=f"{tree.dir.name}'s escapee")
        await wait_until_async(lambda: not find([quick.marker, slow.marker]), timeout=5,
                               what="both hooks' trees to go", interval=0.005)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hooks in runs:
            await hooks.close()
        kill_all([quick.marker, slow.marker])


@pytest.mark.integration
async def test_a_command_that_cannot_start_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = Job(JobConfig(command=(str(tmp_path / "missing"),), restart_min_ms=10_000),
              node="a", cluster="c")
    task = asyncio.create_task(job.run())
    try:
        job.on_change(change(1, Role.GOOSE, 3))
        await wait_until_async(lambda: "cannot start" in caplog.text, timeout=10,
                               what="the error")
        assert f"cannot start {tmp_path / 'missing'}: No such file or directory" in caplog.text
        assert job.pid is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await job.close()


@pytest.mark.integration
def test_the_guard_refuses_a_bad_command_line() -> None:
    """Only ddg-node starts the guard; anyone else gets one line and exit 2, and nothing runs."""
    for argv in ([], ["1", "2", "x", "true"], ["x", "3", "--", "true"],
                 [str(os.getpid()), "99", "--", "true"]):
        done = subprocess.run([*GUARD, *argv], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, argv
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_job_configs_are_validated() -> None:
    for bad in ({"command": ()}, {"command": ("",)}, {"command": ("x",), "grace_ms": 0},
                {"command": ("x",), "restart_min_ms": 10, "restart_max_ms": 5}):
        with pytest.raises(ConfigError):
            JobConfig(**bad)
    with pytest.raises(ConfigError):
        HookConfig(command=("x",), timeout_ms=0)
