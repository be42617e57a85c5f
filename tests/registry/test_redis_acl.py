"""The ACL docs/operations.md gives a node is enough for a node, `ddg-node status/remove` and
the console's registry reader, on a real redis-server; one permission less is a one-line
error, not a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ddg.local.embedded import EmbeddedRedis, free_port
from ddg.registry.redisconn import RedisOptions
from ddg_testkit import LocalCluster
from ddg_testkit.acl import documented_acl
from ddg_tui.poller import LiveSource

pytestmark = pytest.mark.integration

PASSWORD = "acl-user-pw"


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as r:
        yield r


def cli(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    env = {**__import__("os").environ, "DDG_REDIS_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "ddg", *args], capture_output=True, text=True,
                          timeout=30, check=False, env=env)


def test_the_documented_acl_is_enough(server: EmbeddedRedis,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "ddg", *documented_acl("acl", PASSWORD))
    url = f"redis://ddg@127.0.0.1:{server.port}/0"
    monkeypatch.setenv("DDG_REDIS_PASSWORD", PASSWORD)
    with LocalCluster(cluster="acl", redis_url=url) as c:
        names = c.start(2)
        goose = c.wait_goose()
        c.wait_for(lambda: all(st is not None and st.redis.connected and st.redis.problem is None
                               and len(st.members) == 2 for st in c.statuses().values()),
                   timeout=20, what="both nodes registered and on Redis")
        status = cli("status", "--redis-url", url, "--cluster", "acl")
        assert status.returncode == 0 and goose in status.stdout, status.stderr

        async def console_reads() -> set[str]:
            source = LiveSource(redis_url=RedisOptions.from_env(url), cluster="acl", timeout=1)
            try:
                changes = source.changes(0.1)
                await anext(changes)  # subscribed to the channel
                await changes.aclose()
                return set((await source.read()).names)
            finally:
                await source.close()
        assert asyncio.run(console_reads()) == set(names)

        # the cluster's timing, changed online, under the same least ACL
        changed = cli("config", "set", "--timing", "fast", "--wait", "--redis-url", url,
                      "--cluster", "acl")
        assert changed.returncode == 0, changed.stderr
        shown = cli("config", "show", "--redis-url", url, "--cluster", "acl")
        assert shown.returncode == 0 and "cluster acl: fast (epoch 3)" in shown.stdout, shown

        duck = next(n for n in names if n != goose)
        removed = cli("remove", duck, "--redis-url", url, "--cluster", "acl")
        assert removed.returncode == 0, removed.stderr
        c.wait_for(lambda: not c.running(duck), timeout=20, what=f"{duck} gone after removal")
    with redis.Redis(port=server.port) as admin:
        # The supervisor's own bookkeeping (EXISTS on its sync client, which redis-py 8 also
        # makes send CLIENT MAINT_NOTIFICATIONS) is test tooling, not the node's path.
        refused = [e for e in admin.execute_command("ACL", "LOG")
                   if b"cmd=exists " not in e[b"client-info"]
                   and b"cmd=client " not in e[b"client-info"]]
        assert refused == [], refused


@pytest.mark.parametrize("drop", ["+publish", "+evalsha"])
def test_a_missing_permission_is_one_clear_line(server: EmbeddedRedis, tmp_path: Path,
                                                drop: str) -> None:
    rules = [r for r in documented_acl("acl", PASSWORD) if r != drop]
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "weak", *rules)
        # A cluster for the subcommands to read: made by a user that may.
        admin.execute_command("ACL", "SETUSER", "ddg", *documented_acl("acl", PASSWORD))
    url = f"redis://weak@127.0.0.1:{server.port}/0"
    node = cli("--name", "n1", "--port", str(free_port()), "--redis-url", url, "--cluster",
               "acl", "--data-dir", str(tmp_path / "n1"), "--bootstrap")
    # --force: n1 never ran (it could not start), so it never confirmed a version; without
    # it the removal would wait for that confirmation instead of reaching the refused command
    for out in (node, cli("remove", "n1", "--redis-url", url, "--cluster", "acl", "--force")):
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1, out.stderr
        assert len(lines) == 1 and lines[0].startswith("ddg-node: error:"), out.stderr
        assert "refused this client" in lines[0] and "ACL" in lines[0], lines[0]
        assert PASSWORD not in out.stderr
