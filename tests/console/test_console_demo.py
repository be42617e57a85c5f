"""The console's demo cluster on a Redis it was given: it leaves that Redis as it found it."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import redis

from ddg.local.embedded import EmbeddedRedis
from ddg_testkit import wait_until
from ddg_testkit.procs import node_name
from ddg_tui.demo import Demo, DemoConfig

pytestmark = pytest.mark.integration


def test_demo_on_a_given_redis_deregisters_its_nodes_and_leaves_redis_running() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        # a registry from before cluster ids: the demo's first node adopts it
        client.hset("ddg:demo:members", "keep", '{"address": "http://127.0.0.1:1"}')
        client.set("ddg:demo:version", 1)
        demo = Demo(DemoConfig(nodes=2, redis_url=server.url))
        try:
            assert demo.launch() == server.url
            assert not demo.supervisor.owns_redis
            wait_until(lambda: len(client.hkeys("ddg:demo:members")) >= 2, timeout=10,
                       what="the first demo node to register")
            # `keep` (of a version before membership confirmations, and not running) never
            # confirms: of two members both must, so the second node waits, and says why
            url = demo.supervisor.address("n2") + "/status"

            def n2_waits_for_keep() -> bool:
                try:  # n2 may not listen yet
                    joining = httpx.get(url, timeout=2).json().get("joining")
                except httpx.HTTPError:
                    return False
                return "keep" in (joining or "")
            wait_until(n2_waits_for_keep, timeout=10, what="n2 to wait for keep")
            pids = list(demo.pids.values())
        finally:
            demo.close()
        assert sorted(k.decode() for k in client.hkeys("ddg:demo:members")) == ["keep"]
        assert client.ping(), "a Redis the demo did not start must keep running"
        assert server.running
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        client.close()


def test_closing_a_demo_counts_the_nodes_it_really_stopped() -> None:
    demo = Demo(DemoConfig(nodes=3, cluster="counts"))
    try:
        demo.launch()
        demo.kill("n2")
        wait_until(lambda: not demo.running("n2"), timeout=5, what="n2 to die")
    finally:
        stopped = demo.close()
    assert stopped == ["n1", "n3"]  # n2 was dead already: the quit message says 2
    assert demo.close() == []


def test_demo_nodes_are_ddg_node_in_ps_without_a_secret_or_a_password() -> None:
    """`ps` shows the demo's nodes as ddg-node and their names; the cluster secret and the
    Redis URL's password reach them by the environment, never by the command line."""
    password, secret = "redis-pw-4711", "hunter2hunter2"
    with EmbeddedRedis(args=("--requirepass", password), userinfo=f":{password}") as server:
        demo = Demo(DemoConfig(nodes=2, redis_url=server.url, secret=secret, cluster="ps"))
        try:
            demo.launch()
            for name, pid in demo.pids.items():
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                assert comm == "ddg-node", (comm, argv)
                assert node_name(argv) == name and argv[1].endswith("/ddg-node"), argv
                shown = " ".join(argv)
                assert password not in shown and secret not in shown, shown
                assert "--redis-url redis://127.0.0.1:" in shown, shown
            # and the password did reach them: they run a cluster on that Redis
            url = demo.supervisor.address("n1") + "/status"

            def goose() -> str | None:
                try:  # n1 may not listen yet
                    return httpx.get(url, timeout=2).json().get("goose")
                except httpx.HTTPError:
                    return None
            wait_until(goose, timeout=15, what="a goose, on the password-protected Redis")
        finally:
            demo.close()
