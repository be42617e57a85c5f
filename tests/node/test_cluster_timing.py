"""Timing is cluster state, with real Redis and real node processes: --bootstrap writes the
record, nodes run it (or refuse to start with flags that disagree), `ddg-node config set`
changes it online, and a member that is down holds a change in its safe, joint form."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ddg.cli.node import main
from ddg.client import NodeStatus
from ddg.election.timing import TIMINGS, TimingRecord
from ddg.local.embedded import free_port
from ddg_testkit import LocalCluster
from ddg_testkit.cli import ddg, one_line_error

Make = Callable[..., LocalCluster]
pytestmark = pytest.mark.integration
DEFAULT, FAST = TIMINGS["default"].resolved(), TIMINGS["fast"].resolved()


def record(c: LocalCluster, cluster: str = "ddg") -> TimingRecord | None:
    assert c.redis_url is not None
    with redis.Redis.from_url(c.redis_url) as r:
        raw = r.get(f"ddg:{cluster}:timing")
    return None if raw is None else TimingRecord.from_json(raw.decode())


def runs(c: LocalCluster, names: list[str], epoch: int, labels: tuple[str, ...]) -> None:
    def done() -> bool:
        sts = c.statuses(names)
        return all(s is not None and s.timing.epoch == epoch and s.timing.timings == labels
                   and s.timing.confirmed for s in sts.values())
    c.wait_for(done, timeout=10, what=f"every node on timing epoch {epoch} ({labels})")


def settled(c: LocalCluster, names: list[str]) -> tuple[str, int]:
    """Every node a member of all NAMES, in one term, following one goose: (goose, term)."""
    terms: set[int] = set()

    def members_in_one_term(goose: str, sts: dict[str, NodeStatus]) -> bool:
        terms.clear()
        terms.update(s.term for s in sts.values())
        return len(terms) == 1 and all(list(s.members) == sorted(names) for s in sts.values())
    goose = c.wait_followed(names, timeout=15, also=members_in_one_term,
                            what="the cluster to settle on one goose")
    return goose, terms.pop()


def test_bootstrap_writes_the_flags_others_run_them_and_disagreeing_flags_are_refused(
        make_cluster: Make, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = make_cluster()
    c.add("n1", extra_args=("--timing", "fast"))  # --bootstrap: the cluster's timing
    c.add("n2")  # no timing flags: runs the cluster's
    c.add("n3", extra_args=("--timing", "fast"))  # the same as the cluster's: fine
    c.wait_goose(timeout=10)
    assert record(c) == TimingRecord.first(FAST)
    runs(c, ["n1", "n2", "n3"], 1, ("fast",))
    st = c.status("n2")
    assert st is not None
    assert (st.timing.heartbeat_ms, st.timing.election_timeout_ms, st.timing.lease_ms) == (
        15, (60, 120), 30.0)
    assert st.timing.source == "cluster" and st.timing.target == "fast"
    # flags that disagree: one line with both timings; the node never becomes a member
    url = c.redis_url
    assert url is not None
    err = one_line_error(ddg("--name", "n4", "--port", str(free_port()), "--redis-url", url,
                             "--data-dir", str(tmp_path / "n4"), "--lease-ms", "100"), code=1)
    assert "timing flags say heartbeat 50 ms, election 150-300 ms, lease 100 ms" in err
    assert "cluster timing in Redis is fast (epoch 1)" in err
    err = one_line_error(ddg("--name", "n4", "--port", str(free_port()), "--redis-url", url,
                             "--data-dir", str(tmp_path / "n4"), "--timing", "default"), code=1)
    assert "say default" in err and "is fast" in err
    with redis.Redis.from_url(url) as r:
        assert r.hkeys("ddg:ddg:members") and b"n4" not in r.hkeys("ddg:ddg:members")
    config_bad_input_is_one_line_and_changes_nothing(c, capsys)


def test_online_changes_start_no_election_and_wait_for_a_member_that_is_down(
        make_cluster: Make) -> None:
    """Default -> a slower timing -> default: no election, the same goose. Then to fast (the
    no-election check with fast is the fault scenario's, which tells a change's election from
    fast's own on a busy machine: docs/faults.md, timing-change), and back with a duck down."""
    c = make_cluster()
    names = c.start(3)
    goose, term = settled(c, names)
    runs(c, names, 1, ("default",))
    assert settled(c, names) == (goose, term)
    url = c.redis_url
    assert url is not None
    # the parts given change the cluster's current timing; the lease follows them
    done = ddg("config", "set", "--heartbeat-ms", "100", "--election-timeout-ms", "300-600",
               "--wait", "--redis-url", url)
    assert done.returncode == 0, done.stderr
    slower = "heartbeat 100 ms, election 300-600 ms, lease 160 ms"
    assert f"timing change to {slower} as epoch 2" in done.stdout
    assert f"every member runs {slower} (epoch 3)" in done.stdout
    runs(c, names, 3, (slower,))
    done = ddg("config", "set", "--timing", "default", "--wait", "--redis-url", url)
    assert done.returncode == 0, done.stderr
    runs(c, names, 5, ("default",))
    # only the timing changed: no election, the same goose
    sts = c.statuses(names)
    assert all(s is not None and s.term == term and s.goose == goose for s in sts.values()), \
        c.describe()
    again = ddg("config", "set", "--timing", "default", "--redis-url", url)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    rec = record(c)
    assert rec is not None and rec.epoch == 5  # nothing written
    done = ddg("config", "set", "--timing", "fast", "--wait", "--redis-url", url)
    assert done.returncode == 0 and "every member runs fast (epoch 7)" in done.stdout, done
    runs(c, names, 7, ("fast",))
    a_member_that_is_down_holds_the_change_in_its_joint_form(c, names)


def a_member_that_is_down_holds_the_change_in_its_joint_form(c: LocalCluster,
                                                             names: list[str]) -> None:
    """A duck killed, then a change (fast -> default): the others run both timings' joint
    timing and say they wait for it; back, it runs the record and the change completes."""
    goose = c.wait_goose(timeout=10)
    duck = next(n for n in names if n != goose)
    c.kill(duck)
    c.wait(duck, 10)
    url = c.redis_url
    assert url is not None
    changed = ddg("config", "set", "--timing", "default", "--redis-url", url)
    assert changed.returncode == 0, changed.stderr
    up = [n for n in names if n != duck]
    runs(c, up, 8, ("default", "fast"))
    c.wait_for(lambda: all(s is not None and s.timing.waiting_for == (duck,)
                           for s in c.statuses(up).values()),
               timeout=5, what=f"the nodes to say they wait for {duck}")
    st = c.status(goose)
    assert st is not None
    # the joint timing: the shortest heartbeat and lease, the longest stickiness and wait
    assert (st.timing.heartbeat_ms, st.timing.election_timeout_ms, st.timing.lease_ms,
            st.timing.lease_wait_ms) == (15, (150, 300), 30.0, 100.0)
    shown = ddg("config", "show", "--redis-url", url)
    assert shown.returncode == 0, shown.stderr
    assert f"changing to default from fast (epoch 8); waiting for {duck} to confirm" \
        in shown.stdout
    assert "every node runs the joint timing until all confirm: heartbeat 15 ms" in shown.stdout
    data = json.loads(ddg("config", "show", "--json", "--redis-url", url).stdout)
    assert data["record"]["waiting_for"] == [duck] and data["record"]["changing"]
    assert data["record"]["in_force"]["lease_wait_ms"] == 100.0
    assert "error" in data["members"][duck]
    status = ddg("status", "--redis-url", url)
    assert f"timing: changing to default from fast (epoch 8); waiting for {duck}" in status.stdout
    # back: it runs the record (its data dir's was older) and the change completes
    c.restart(duck)
    runs(c, names, 9, ("default",))


def test_redis_losing_the_record_gets_it_back_and_an_old_cluster_gets_one(
        make_cluster: Make) -> None:
    c = make_cluster()
    names = c.start(3)
    c.wait_goose(timeout=10)
    assert ddg("config", "set", "--timing", "fast", "--wait", "--redis-url",
               str(c.redis_url)).returncode == 0
    runs(c, names, 3, ("fast",))
    url = c.redis_url
    assert url is not None
    with redis.Redis.from_url(url) as r:
        r.delete("ddg:ddg:timing", "ddg:ddg:timing_seen")
    c.wait_for(lambda: record(c) == TimingRecord(3, (FAST,), FAST), timeout=10,
               what="a member to put the record back")
    # Redis gone: a node (re)started runs the record in its data dir, and refuses flags that
    # disagree with it; Redis back empty gets the record back from the members.
    c.kill_redis()
    c.terminate("n1")
    c.wait("n1", 10)
    refused = ddg("--name", "n1", "--port", str(c.spec("n1").port), "--redis-url", url,
                  "--data-dir", str(c.data_dir("n1")), "--timing", "default")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    err = refused.stderr.strip().splitlines()[-1]  # after the log line about Redis
    assert err.startswith("ddg-node: error: this node's timing flags say default, but cluster "
                          "timing in this node's data dir is fast (epoch 3)"), refused.stderr
    c.restart("n1")
    c.wait_for(lambda: (s := c.status("n1")) is not None and s.timing.epoch == 3
               and s.timing.timings == ("fast",), timeout=10, what="n1 on its data dir's record")
    c.start_redis()
    c.wait_for(lambda: record(c) == TimingRecord(3, (FAST,), FAST), timeout=15,
               what="the members to put the record back in an empty Redis")
    runs(c, names, 3, ("fast",))
    # A cluster made before timing records: nodes without one run their flags' timing
    # (the default here) and the goose writes a record of it.
    for n in names:
        c.terminate(n)
        c.wait(n, 10)
        (c.data_dir(n) / "timing.json").unlink()
    with redis.Redis.from_url(url) as r:
        r.delete("ddg:ddg:timing", "ddg:ddg:timing_seen")
    for n in names:
        c.restart(n)
    c.wait_goose(timeout=10)
    c.wait_for(lambda: record(c) == TimingRecord.first(DEFAULT), timeout=10,
               what="the goose to write the record")
    runs(c, names, 1, ("default",))


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """main() as `ddg-node ARGS` runs it (the subprocess tests above show it is the same)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


def config_bad_input_is_one_line_and_changes_nothing(
        c: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """`ddg-node config` with bad input: one line, a non-zero exit, nothing written."""
    url = c.redis_url
    assert url is not None
    before = record(c)
    gone = f"redis://127.0.0.1:{free_port()}/0"
    for args, code, needle in [
        (["set", "--heartbeat-ms", "100"], 1, "at least twice the heartbeat"),
        (["set", "--election-timeout-ms", "soon"], 1, "must look like MIN-MAX"),
        (["set", "--timing", "fast", "--lease-ms", "60"], 1,
         "at most the minimum election timeout"),
        (["set", "--timing", "fast", "--cluster", "nope"], 1,
         "cluster 'nope' has no timing record"),
        (["set", "--timing", "fast", "--timeout", "0"], 2, "--timeout must be more than 0"),
        (["set"], 2, "give the new timing"),
        (["set", "--timing", "warp"], 2, "invalid choice: 'warp'"),
        (["show", "--cluster", "nope"], 1, "cluster 'nope' does not exist"),
        (["show", "--timeout", "x"], 2, "invalid float value"),
    ]:
        got, err = in_process(capsys, "config", *args, "--redis-url", url)
        assert got == code and len(err.splitlines()) == 1, (args, err)
        assert needle in err and err.startswith("ddg-node: error: "), (args, err)
    assert record(c) == before
    got, err = in_process(capsys, "config", "frob")
    assert got == 2 and "invalid choice: 'frob'" in err
    assert "cannot reach Redis" in one_line_error(
        ddg("config", "show", "--redis-url", gone), code=1)
    assert "cannot reach Redis" in one_line_error(
        ddg("config", "set", "--timing", "fast", "--redis-url", gone), code=1)
    assert record(c) == before


def test_a_fresh_node_waits_for_the_timing_record_redis_lost(make_cluster: Make) -> None:
    """Redis lost the timing record (its members, frozen, cannot put it back yet) and a node
    with a fresh data dir starts: it must not run its own default beside a fast cluster; it
    waits, and joins on the cluster's once the members are back."""
    c = make_cluster()
    names = [c.add(extra_args=("--timing", "fast")).name for _ in range(3)]
    settled(c, names)
    runs(c, names, 1, ("fast",))
    for n in names:
        c.pause(n)
    url = c.redis_url
    assert url is not None
    with redis.Redis.from_url(url) as r:
        r.delete("ddg:ddg:timing", "ddg:ddg:timing_seen")
    fresh = c.add("n4").name  # no timing flags
    try:
        c.wait_for(lambda: (s := c.status(fresh)) is not None and s.state == "joining"
                   and "timing record" in (s.joining or ""), timeout=15,
                   what=f"{fresh} to wait for the timing record")
    finally:
        for n in names:
            c.resume(n)
    runs(c, [*names, fresh], 1, ("fast",))
    log = c.log_tail(fresh, 200)
    assert "running on cluster timing fast (epoch 1)" in log
    assert "running on this node's" not in log  # never on its own default
