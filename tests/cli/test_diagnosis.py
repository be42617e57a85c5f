""""Why is there no goose?" answers itself: `ddg-node status` names the cause and the fix and
exits with the cluster's health (ddg/cli/diagnosis.py), and a node without a goose logs why.
Real Redis, real node processes; the diagnosis's pure rules on made-up answers below."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ddg.cli.diagnosis import Health, diagnose
from ddg.client import NodeStatus, Role
from ddg.client.http import Reply
from ddg.client.nodestatus import RedisInfo
from ddg.local.embedded import free_port
from ddg.registry.records import Member, Membership
from ddg_testkit import LocalCluster, wait_until
from ddg_testkit.cli import ddg

Make = Callable[..., LocalCluster]
README = Path(__file__).resolve().parents[2] / "README.md"


# ---- the rules -----------------------------------------------------------------------------

def members(*names: str) -> Membership:
    return Membership(version=len(names), cluster_id="x", members={
        n: Member(n, f"http://127.0.0.1:{4000 + i}", 0.0, n) for i, n in enumerate(names)})


def up(name: str, role: Role = Role.DUCK, goose: str | None = "a", **kw: object) -> Reply:
    return Reply(status=NodeStatus(name=name, role=role, term=3, goose=goose, version="0.2.0",
                                   security="hmac", redis=RedisInfo(connected=True), **kw))


def down(error: str = "connection refused") -> Reply:
    return Reply(error=error)


def test_the_rules() -> None:
    healthy = {"a": up("a", Role.GOOSE), "b": up("b"), "c": up("c")}
    assert diagnose("ddg", members("a", "b", "c"), healthy) == (Health.OK, ())

    nothing = diagnose("ddg", Membership(), {}, where=" at redis://127.0.0.1:6379/0")
    assert nothing.health is Health.NO_GOOSE
    assert nothing.lines == ("no cluster: cluster 'ddg' does not exist in Redis at "
                             "redis://127.0.0.1:6379/0: start one node with --bootstrap "
                             "(ddg-node --name NAME --bootstrap), then the others without it",)

    stale = diagnose("prod", members("a", "b", "c", "d", "e", "f"),
                     {"a": down(), "b": down(), "c": down(), "d": up("d", goose=None),
                      "e": up("e", goose=None), "f": up("f", goose=None)})
    assert stale.health is Health.NO_GOOSE
    assert stale.lines[0] == "no quorum: 3 of 6 members answer, 4 needed; silent: a, b, c"
    assert stale.lines[1].endswith("ddg-node remove --force a b c --cluster prod")

    dead = diagnose("ddg", members("a", "b", "c"), {**healthy, "c": down()})
    assert dead == (Health.DEGRADED,
                    ("c does not answer; if it is gone for good: ddg-node remove c",))

    gone = diagnose("ddg", members("a", "b"), {"a": down(), "b": down()})
    assert gone.health is Health.NO_GOOSE
    assert "every member is silent (a, b): this registry holds an old cluster" in gone.lines[1]

    mixed = diagnose("ddg", members("a", "b", "c"), {
        **healthy, "c": Reply(status=NodeStatus(name="c", role=Role.DUCK, term=3, goose="a",
                                                version="0.1.0", security="hmac",
                                                redis=RedisInfo(connected=False,
                                                                error="refused")))})
    assert mixed == (Health.DEGRADED, ("mixed versions: 0.1.0 (c); 0.2.0 (a, b)",
                                       "c cannot reach Redis (refused)"))

    # This command's own trust store refusing the nodes is no reason to remove them.
    tls = "TLS: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    untrusted = diagnose("ddg", members("a", "b"), {"a": down(tls), "b": down(tls)})
    assert untrusted.health is Health.NO_GOOSE
    assert untrusted.lines == ("no goose seen: 0 of 2 members answer this command, 2 cannot "
                               "be verified",
                               "cannot verify a, b over TLS (see ERROR): pass the cluster's CA "
                               "with --tls-ca FILE (and --tls-cert/--tls-key if the nodes ask "
                               "for a client certificate)")
    # ... nor with one of them down: a and b may be a goose and a duck it cannot see
    for replies in ({"a": down(tls), "b": down(tls), "c": down()},
                    {"a": down(tls), "b": up("b", goose=None), "c": down()}):
        partly = diagnose("ddg", members("a", "b", "c"), replies)
        assert not any("--force" in ln or "no quorum" in ln for ln in partly.lines), partly
        assert "c does not answer (see ERROR)" in partly.lines
    one = diagnose("ddg", members("a", "b", "c"), {**healthy, "c": down(tls)})
    assert one.health is Health.DEGRADED and not any("remove" in ln for ln in one.lines)

    electing = diagnose("ddg", members("a", "b", "c"),
                        {n: up(n, Role.CANDIDATE, None) for n in "abc"})
    assert electing.health is Health.NO_GOOSE and "election" in electing.lines[0]


# ---- real nodes ------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_cluster_that_was_never_created(make_cluster: Make) -> None:
    c = make_cluster(cluster="never")
    names = [c.add(bootstrap=False).name for _ in range(2)]
    url = c.redis_url or ""
    status = ddg("status", "--redis-url", url, "--cluster", "never")
    assert status.returncode == Health.NO_GOOSE == 4, status
    assert "no cluster: cluster 'never' does not exist in Redis" in status.stdout
    assert "start one node with --bootstrap" in status.stdout
    js = ddg("status", "--redis-url", url, "--cluster", "never", "--json")
    assert js.returncode == 4 and '"health": "no_goose"' in js.stdout
    # each node says why it has no goose, again every few seconds
    for n in names:
        wait_until(lambda n=n: c.log_tail(n, 40).count(
            "not a member: waiting to join (is there a cluster? start one node with "
            "--bootstrap)") >= 2, timeout=20, what=f"{n} to say twice why it has no goose")


@pytest.mark.integration
def test_a_node_that_cannot_reach_redis_says_why_in_every_line(make_cluster: Make) -> None:
    """Found with two test workers (a busy machine): a node that Redis kept refusing logged the
    cause in its "waiting for the registry" lines, but its "no goose for N s" reminder said
    only "not a member: waiting for Redis". The reminder carries the cause too."""
    c = make_cluster()
    c.pause_redis()  # SIGSTOP: it takes connections and never answers
    try:
        n = c.add(bootstrap=True).name
        tail = wait_until(lambda: next((t for t in [c.log_tail(n, 40)] if "no goose for" in t),
                                       None), timeout=20, what=f"{n} to say why it has no goose")
    finally:
        c.resume_redis()
    said = [ln for ln in tail.splitlines() if "no goose for" in ln]
    assert all("not a member: waiting for Redis (redis: no answer within" in ln
               for ln in said), said


@pytest.mark.integration
def test_a_registry_that_kept_an_old_cluster(make_cluster: Make) -> None:
    """The README's by-hand path with a Redis that saved its data: three dead members in the
    registry, new nodes join them: never a goose. The first new node joins (4 members, quorum
    3); the next ones wait for the dead to confirm that membership. The first says the
    registry holds an old cluster; every node says, every few seconds, why it has no goose;
    `ddg-node status` names the cause and the fix, exits 4; the fix gives a goose."""
    c = make_cluster()
    old = c.start(3)
    c.wait_goose(timeout=10)
    c.wait_confirmed(old)  # else the first new node waits for the dead to confirm, too
    for n in old:
        c.kill(n)
        c.wait(n, 5)
    first = c.add(bootstrap=True).name
    c.wait_joined([first])
    later = [c.add(bootstrap=False).name for _ in range(2)]
    log = wait_until(lambda: next((t for t in [c.log_tail(first, 60)] if "this registry" in t),
                                  None), timeout=10, what=f"{first} to say what it joined")
    assert ("none of the cluster's other 3 members answers (n1, n2, n3): this registry "
            "holds an old cluster") in log, log
    assert "ddg-node remove --force n1 n2 n3" in log
    wait_until(lambda: "no goose for" in c.log_tail(first, 40) and
               "1 of 4 members answer, 3 needed; silent: n1, n2, n3" in c.log_tail(first, 40),
               timeout=20, what=f"{first} to say why it has no goose")
    for n in later:
        wait_until(lambda n=n: "not a member: waiting for n1, n2, n3 to confirm"
                   in c.log_tail(n, 40), timeout=20, what=f"{n} to say why it has no goose")
    url = c.redis_url or ""
    status = ddg("status", "--redis-url", url)
    assert status.returncode == 4, status
    assert "no quorum: 1 of 4 members answer, 3 needed; silent: n1, n2, n3" in status.stdout
    assert "ddg-node remove --force n1 n2 n3" in status.stdout
    print(f"\n{status.stdout}")
    for n in old:  # the fix (one name at a time: what every version takes)
        removed = ddg("remove", "--force", n, "--redis-url", url)
        assert removed.returncode == 0, removed
    c.wait_joined([first, *later], timeout=20)
    c.wait_goose(timeout=15)
    healthy = wait_until(lambda: (r := ddg("status", "--redis-url", url)).returncode == 0
                         and r, timeout=15, what="status to exit 0")
    assert healthy.stdout.count(" goose ") == 1


@pytest.mark.integration
def test_the_readmes_by_hand_redis_saves_nothing(tmp_path: Path) -> None:
    """The README's line that starts Redis, run twice in the same directory with a cluster
    made in between: the second Redis starts empty (no dump.rdb, no appendonly file), so the
    second try-out bootstraps a new cluster rather than joining the dead one."""
    [line] = [ln for ln in README.read_text().splitlines()
              if "find_redis_server" in ln and "--port 6379" in ln]
    for run in range(2):
        port = free_port()
        proc = subprocess.Popen(["sh", "-c", "exec " + line.replace("6379", str(port))
                                 .removesuffix("&").strip()], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                     f"{os.environ.get('PATH', '')}"})
        try:
            r = redis.Redis(port=port)
            wait_until(lambda r=r: _pings(r), timeout=10, what="the README's Redis")
            assert r.dbsize() == 0, f"run {run}: Redis started with the last run's data"
            c = LocalCluster(redis_url=f"redis://127.0.0.1:{port}/0")
            try:
                c.start(1)
                c.wait_goose(timeout=10)
            finally:
                c.close()
            r.close()
        finally:
            proc.terminate()  # redis-server saves on SIGTERM when it has save points
            proc.wait(10)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], "Redis wrote files"


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False
