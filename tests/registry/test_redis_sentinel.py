"""Redis as operators run it, on real processes: a Sentinel failover under a running cluster,
and a membership change the failover lost (docs/operations.md, "Redis")."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from ddg.errors import RegistryUnavailable
from ddg.registry.records import Membership
from ddg.registry.redisconn import RedisOptions
from ddg.registry.registry import Registry
from ddg_testkit import LocalCluster, wait_until
from ddg_testkit.procs import gone
from ddg_testkit.sentinel import SentinelSet

pytestmark = pytest.mark.integration

PASSWORD = "sentinel-and-master-pw"


@pytest.fixture
def sentinels(request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    kwargs = getattr(request, "param", {})
    with SentinelSet(**kwargs) as s:
        pids = [srv.proc.pid for srv in s.servers.values()]
        yield s
    assert all(gone(pid) for pid in pids), "a redis-server outlived the test"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ddg", *args], capture_output=True, text=True,
                          timeout=30, check=False)


def read_registry(url: str, cluster: str) -> Membership:
    async def go() -> Membership:
        registry = Registry(RedisOptions.from_env(url), cluster, timeout=2.0)
        try:
            return await registry.read()
        finally:
            await registry.close()
    return asyncio.run(go())


def all_on_redis(c: LocalCluster, names: list[str], also: Callable[[], bool] = lambda: True,
                 ) -> bool:
    sts = c.statuses(names)
    return also() and all(st is not None and st.redis.connected and st.redis.error is None
                          and st.redis.problem is None for st in sts.values())


def settled(c: LocalCluster, names: list[str]) -> bool:
    """Every node on Redis, a member (not still `joining`: a node started before the first
    one created the cluster waits for it, and is on Redis meanwhile) and following one goose."""
    sts = c.statuses(names)
    geese = {st.goose if st else None for st in sts.values()}
    return all_on_redis(c, names) and len(geese) == 1 and None not in geese and all(
        st is not None and st.joining is None and sorted(st.members) == sorted(names)
        for st in sts.values())


@pytest.mark.parametrize("sentinels", [{"password": PASSWORD}], indirect=True)
def test_nodes_follow_a_sentinel_failover_and_keep_their_goose(
        sentinels: SentinelSet, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one password for sentinels and master, from the environment as operators pass it.
    monkeypatch.setenv("DDG_REDIS_PASSWORD", PASSWORD)
    url = sentinels.url
    with LocalCluster(cluster="sent", redis_url=url) as c:
        names = c.start(3)
        c.wait_for(lambda: settled(c, names), timeout=20,
                   what="every node on Redis, a member, following the goose")
        goose = c.wait_followed(names)  # the one they follow now (not one taken before)
        term = c.status(goose).term  # type: ignore[union-attr]
        for st in c.statuses().values():
            assert st is not None and st.redis.url == url and PASSWORD not in str(st.to_json())

        sentinels.servers["a"].kill()
        killed = time.monotonic()
        seen_down: set[str] = set()

        def promoted_and_reconnected() -> bool:
            sts = c.statuses(names)
            for n, st in sts.items():
                assert st is not None, f"{n} stopped answering"
                assert (st.term, st.goose) == (term, goose), (
                    f"{n} moved to term {st.term} goose {st.goose} in a Redis failover\n"
                    f"{c.log_tail(n, 40)}")
                if not st.redis.connected:
                    seen_down.add(n)
            master = sentinels.master()
            return (master is not None and master.name == "b"
                    and all_on_redis(c, names))

        c.wait_for(promoted_and_reconnected, timeout=30, interval=0.05,
                   what="the replica promoted and every node on it")
        took_ms = (time.monotonic() - killed) * 1000
        print(f"\nSentinel failover: master killed -> {len(names)} nodes healthy on the new "
              f"master in {took_ms:.0f} ms (down-after {sentinels.down_after_ms} ms; nodes "
              f"seen disconnected meanwhile: {sorted(seen_down)})")

        # A membership change after the promotion, through the new master.
        added = c.add().name
        every = [*names, added]
        c.wait_for(lambda: all(st is not None and added in st.members
                               for st in c.statuses(every).values()),
                   timeout=20, what=f"{added} joined through the new master")
        status = cli("status", "--redis-url", url, "--cluster", "sent")
        assert status.returncode == 0, status.stderr
        assert all(n in status.stdout for n in every) and PASSWORD not in status.stdout
        removed = cli("remove", added, "--redis-url", url, "--cluster", "sent")
        assert removed.returncode == 0, removed.stderr
        c.wait_for(lambda: not c.running(added) and all(
            st is not None and added not in st.members for st in c.statuses(names).values()),
            timeout=20, what=f"{added} removed and gone")
        assert read_registry(url, "sent").names == frozenset(names)
        for n, st in c.statuses(names).items():
            assert st is not None and (st.term, st.goose) == (term, goose), (
                f"{n}: term {st and st.term} goose {st and st.goose}, was {term} {goose}\n"
                + "\n".join(f"--- {m}\n{c.log_tail(m, 60)}" for m in every))


@pytest.mark.parametrize("sentinels", [{"down_after_ms": 1000}], indirect=True)
def test_a_join_the_failover_lost_is_restored_by_the_nodes(sentinels: SentinelSet) -> None:
    url = sentinels.url
    with LocalCluster(cluster="lost", redis_url=url) as c:
        names = c.start(3)
        c.wait_for(lambda: settled(c, names), timeout=20,
                   what="every node on Redis, a member, following the goose")

        # Acknowledged by the master, never replicated: the replica cannot reconnect.
        sentinels.cut_replication()
        late = c.add().name
        every = [*names, late]
        c.wait_for(lambda: all(st is not None and late in st.members
                               for st in c.statuses(every).values()),
                   timeout=20, what=f"every node knowing {late}")
        known = max(st.membership_version or 0 for st in c.statuses(every).values() if st)
        with sentinels.servers["b"].client() as replica:
            assert replica.hget("ddg:lost:members", late) is None, "the write was replicated"
            lost_version = int(replica.get("ddg:lost:version") or 0)
        assert lost_version < known

        sentinels.servers["a"].kill()
        wait_until(lambda: (m := sentinels.master()) is not None and m.name == "b",
                   timeout=30, what="the replica promoted")

        # The promoted registry lacked the join; the nodes' cached membership puts it back.
        def restored() -> Membership | None:
            try:
                m = read_registry(url, "lost")
            except RegistryUnavailable:  # the sentinels do not all name the new master yet
                return None
            return m if late in m.members and m.version > known else None
        m = c.wait_for(restored, timeout=30, what=f"{late} restored in the promoted registry")
        assert m.names == frozenset(every)
        c.wait_for(lambda: all_on_redis(c, every), timeout=20, what="every node on Redis")
        # One goose, followed by all four. Not necessarily `goose`: this test runs 30-40 s
        # and a loaded machine moved leadership in one run; that a Redis failover moves
        # nothing is test_nodes_follow_a_sentinel_failover_and_keep_their_goose's, which
        # watches the term and the goose at every look through the failover.
        c.wait_followed(every, timeout=15)
        assert any("the registry lost data" in c.log_tail(n, 200) for n in every)


def test_a_manual_failover_moves_the_nodes_at_once(sentinels: SentinelSet) -> None:
    """After `SENTINEL FAILOVER` the old master lives on and answers as a master for about
    10 s, until Sentinel turns it into a replica. Nodes that kept their connections to it
    read a stale registry meanwhile, and a change written there is lost: they must follow the
    sentinels' new master as soon as the sentinels name it."""
    url = sentinels.url
    with LocalCluster(cluster="manual", redis_url=url) as c:
        names = c.start(3)
        c.wait_goose()
        c.wait_for(lambda: settled(c, names), timeout=20,
                   what="every node on Redis, a member, following the goose")
        old = sentinels.servers["a"]
        with sentinels.sentinels[0].client() as s:
            s.execute_command("SENTINEL", "FAILOVER", sentinels.master_name)
        wait_until(lambda: (m := sentinels.master()) is not None and m.name == "b",
                   timeout=20, what="the replica promoted")
        promoted = time.monotonic()
        added = c.add().name  # joins through the new master: a fresh connection finds it
        every = [*names, added]
        c.wait_for(lambda: all(st is not None and added in st.members
                               for st in c.statuses(every).values()),
                   timeout=20, what=f"every node knowing {added}")
        took = time.monotonic() - promoted
        with old.client() as a:
            old_role = a.execute_command("ROLE")[0]
        print(f"\nmanual failover: every node saw the join {took * 1000:.0f} ms after the "
              f"promotion; the old master's role then: {old_role!r}")
        assert took < 5.0, f"the nodes saw the join only after {took:.1f} s"
        c.wait_for(lambda: all_on_redis(c, every), timeout=20, what="every node on Redis")
        assert read_registry(url, "manual").names == frozenset(every)


def test_a_sentinel_that_never_answers_does_not_keep_nodes_off_redis(
        sentinels: SentinelSet) -> None:
    """A sentinel host that is down without refusing (a black-holed address; here a socket
    that accepts and never answers) listed first: every master lookup must still fit in one
    Redis call's deadline, so the nodes ask the other sentinels in time."""
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        dead.bind(("127.0.0.1", 0))
        dead.listen(64)
        url = sentinels.url.replace("redis+sentinel://",
                                    f"redis+sentinel://127.0.0.1:{dead.getsockname()[1]},")
        with LocalCluster(cluster="blackhole", redis_url=url) as c:
            names = c.start(3)
            c.wait_for(lambda: settled(c, names), timeout=20,
                       what="every node on Redis, a member, following the goose")
    finally:
        dead.close()
