"""The Supervisor against real processes: real redis-server, real ddg-node."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ddg.errors import ConfigError, DdgError
from ddg.local.embedded import EmbeddedRedis, free_port
from ddg.local.launcher import NodeSpec
from ddg.local.supervisor import NodeExit, Supervisor, SupervisorConfig
from ddg_testkit import wait_until
from ddg_testkit.procs import gone


def serving(sup: Supervisor, names: Iterable[str]) -> bool:
    """Every node answers GET / (its signal handlers are installed by then)."""
    for name in names:
        try:
            httpx.get(sup.address(name) + "/", timeout=0.5, trust_env=False)
        except httpx.HTTPError:
            return False
    return True


def rclient(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor(SupervisorConfig(cluster="sup"))
    try:
        yield s
    finally:
        s.close()


def test_config_is_checked_at_construction() -> None:
    with pytest.raises(ConfigError):
        SupervisorConfig(redis_url="redis://127.0.0.1:1/0", redis_port=6379)
    with pytest.raises(ConfigError):
        SupervisorConfig(stop_timeout=0)
    with pytest.raises(ConfigError):
        SupervisorConfig(cluster="")
    with pytest.raises(ConfigError):
        NodeSpec(name="n1", port=0, redis_url="redis://x/0", cluster="c", data_dir=Path("d"))


@pytest.mark.integration
def test_exits_the_supervisor_caused_are_expected_and_others_are_not(sup: Supervisor) -> None:
    sup.add("n2")
    names = [sup.add().name, "n2", sup.add().name]
    assert names == ["n1", "n2", "n3"], "a name in use is skipped, never reused"
    # the first node the supervisor ever started creates the cluster, whatever its name
    assert [sup.spec(n).bootstrap for n in names] == [False, True, False]
    wait_until(lambda: serving(sup, names), timeout=20, what="3 nodes serving")
    pids = {n: sup.pid(n) for n in names}
    assert sup.reap() == []

    assert sup.kill("n1") == pids["n1"]
    assert sup.wait("n1", 5) == -signal.SIGKILL
    outside = pids["n2"]
    assert outside is not None
    os.kill(outside, signal.SIGKILL)  # not the supervisor's doing: a crash
    assert sup.wait("n2", 5) == -signal.SIGKILL
    assert sup.stop("n3", 5) == 0
    exits = {ex.name: ex for ex in sup.reap()}
    assert exits == {
        "n1": NodeExit(name="n1", pid=pids["n1"], code=-signal.SIGKILL, expected=True),
        "n2": NodeExit(name="n2", pid=outside, code=-signal.SIGKILL, expected=False),
        "n3": NodeExit(name="n3", pid=pids["n3"], code=0, expected=True),
    }
    assert sup.reap() == [], "an exit is reported once"

    # Started again: same name and port, a new process whose exit is unexpected until the
    # supervisor causes it. An exit that a restart replaced before reap() is still reported.
    port = sup.spec("n1").port
    assert sup.restart("n1").port == port
    with pytest.raises(DdgError, match="already running"):
        sup.restart("n1")
    wait_until(lambda: serving(sup, ["n1"]), timeout=20, what="n1 serving again")
    first = sup.pid("n1")
    assert first is not None and first != pids["n1"]
    sup.kill("n1")
    sup.wait("n1", 5)
    sup.restart("n1")
    assert [(ex.name, ex.pid, ex.expected) for ex in sup.reap()] == [("n1", first, True)]
    wait_until(lambda: serving(sup, ["n1"]), timeout=20, what="n1 serving again")
    again = sup.pid("n1")
    assert again is not None
    os.kill(again, signal.SIGKILL)
    sup.wait("n1", 5)
    assert [(ex.name, ex.expected) for ex in sup.reap()] == [("n1", False)]
    every = [p for p in (*pids.values(), first, again) if p is not None]
    sup.close()
    assert all(gone(p) for p in every)


@pytest.mark.integration
def test_kill_restart_binds_the_same_port_at_once(sup: Supervisor) -> None:
    """SIGKILL and an immediate restart: the port is free at once (SO_REUSEADDR) although
    connections of the killed process still linger on it, and the kill is an expected exit."""
    name = sup.add().name
    wait_until(lambda: serving(sup, [name]), timeout=20, what=f"{name} serving")
    old = sup.pid(name)
    with httpx.Client(trust_env=False, timeout=2) as client:
        for _ in range(3):  # kept-alive connections the killed process leaves behind
            client.get(sup.address(name) + "/status")
        port = sup.spec(name).port
        t0 = time.monotonic()
        assert sup.kill_restart(name).port == port
        took = time.monotonic() - t0
    new = sup.pid(name)
    assert new is not None and new != old and sup.running(name)
    assert took < 5, f"kill + reap + spawn took {took:.2f} s"
    wait_until(lambda: serving(sup, [name]), timeout=20, what=f"{name} serving again")
    assert [(ex.name, ex.pid, ex.expected) for ex in sup.reap()] == [(name, old, True)]
    assert "cannot listen" not in sup.log_tail(name, 50)


@pytest.mark.integration
def test_close_stops_five_nodes_at_once_and_leaves_nothing(sup: Supervisor) -> None:
    names = [sup.add().name for _ in range(5)]
    wait_until(lambda: serving(sup, names), timeout=30, what="5 nodes serving")
    assert sup.pause("n2"), "a frozen node is stopped too (SIGCONT before SIGTERM)"
    pids = dict(sup.pids)
    redis_pid = sup.redis_pid
    base = sup.base_dir
    assert len(pids) == 5 and redis_pid is not None and base.is_dir()
    t0 = time.monotonic()
    codes = sup.stop_all()
    took = time.monotonic() - t0
    print(f"\nstop_all of 5 nodes (one frozen): {took:.3f} s")
    # One by one, each stop may take up to stop_timeout (5 s); at once, the slowest one, and
    # no stop stalls (benchmarks/stops.py: the slowest of 500 exits is well under 1 s).
    assert took < 2.0, f"stopping 5 nodes took {took:.2f} s"
    assert codes == dict.fromkeys(names, 0), "every node exits 0 on SIGTERM"
    assert all(gone(p) for p in pids.values())
    assert sorted((ex.name, ex.code, ex.expected) for ex in sup.reap()) == [
        (n, 0, True) for n in names]
    assert sup.close() == names
    assert sup.close() == [], "close() is idempotent"
    assert gone(redis_pid)
    assert not base.exists()
    with pytest.raises(DdgError, match="closed"):
        sup.add()


@pytest.mark.integration
def test_embedded_redis_pauses_resumes_dies_and_comes_back_empty_on_its_port() -> None:
    port = free_port()
    sup = Supervisor(SupervisorConfig(redis_port=port))
    try:
        url = sup.start_redis()
        assert sup.owns_redis and sup.redis_port == port and url.endswith(f":{port}/0")
        client = rclient(url)
        client.set("k", "v")
        assert sup.pause_redis()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert sup.resume_redis()
        wait_until(lambda: client.get("k") == b"v", timeout=5,
                   what="Redis answering again, its data intact")
        pid = sup.redis_pid
        assert pid is not None
        sup.kill_redis()
        assert gone(pid) and sup.redis_pid is None
        assert not sup.pause_redis() and not sup.resume_redis()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert sup.start_redis() == url, "the same port again"
        fresh = rclient(url)
        assert fresh.dbsize() == 0, "a Redis started again is empty"
        fresh.close()
        client.close()
    finally:
        sup.close()


@pytest.mark.integration
def test_an_external_redis_is_left_as_it_was_found(tmp_path: Path) -> None:
    with EmbeddedRedis() as server:
        client = rclient(server.url)
        client.set("not-ours", "1")
        sup = Supervisor(SupervisorConfig(cluster="ext", redis_url=server.url,
                                          base_dir=tmp_path))
        try:
            assert not sup.owns_redis and sup.redis_pid is None
            with pytest.raises(DdgError):
                sup.pause_redis()
            with pytest.raises(DdgError):
                sup.kill_redis()
            # one node in a cluster of its own, to show each node leaves its own cluster
            sup.add("n1")
            sup.add("n2")
            sup.add("solo", cluster="ext-solo", bootstrap=True)
            wait_until(lambda: (len(client.hkeys("ddg:ext:members")) == 2
                                and client.hkeys("ddg:ext-solo:members") == [b"solo"]),
                       timeout=20, what="the nodes to register")
            pids = list(sup.pids.values())
        finally:
            stopped = sup.close()
        assert sorted(stopped) == ["n1", "n2", "solo"]
        assert client.hkeys("ddg:ext:members") == []
        assert client.hkeys("ddg:ext-solo:members") == []
        assert client.get("not-ours") == b"1"
        assert server.running, "a Redis the supervisor did not start keeps running"
        assert all(gone(p) for p in pids)
        assert tmp_path.is_dir() and (tmp_path / "logs" / "n1.log").is_file(), \
            "a base dir that was given is left in place"
        client.close()


def test_a_url_password_goes_to_the_child_decoded() -> None:
    """The child gets the password by DDG_REDIS_PASSWORD, which is taken as it is: a URL's
    percent-encoded one must be decoded first, as the URL's own reader would."""
    from ddg.local.launcher import split_password

    assert split_password("redis://:p%40ss%2Fw@h:6379/0") == ("redis://h:6379/0", "p@ss/w")
    assert split_password("redis://u:pw@h/0") == ("redis://u@h/0", "pw")
    assert split_password("redis://h/0") == ("redis://h/0", None)
