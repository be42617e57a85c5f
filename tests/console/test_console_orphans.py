"""No orphans: a console that dies hard takes its demo with it, and a demo leaves a Redis it was
given exactly as it found it. Real processes, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis

from ddg.local.embedded import EmbeddedRedis, free_port
from ddg.local.supervisor import OWNER_FILE, remove_stale_dirs
from ddg_testkit import LocalCluster, wait_until, wait_until_async
from ddg_testkit.cli import own_env
from ddg_testkit.procs import gone, proc_stat
from ddg_tui.demo import TEMP_PREFIX, Demo, DemoConfig

pytestmark = pytest.mark.integration

CONSOLE = [sys.executable, "-m", "ddg_tui"]
ENV = own_env()






def children(pid: int) -> dict[int, list[str]]:
    """PID's live children, with their command lines."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := proc_stat(int(entry.name))) and f[0] != "Z" \
                and int(f[1]) == pid:
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (
                    Path(f"/proc/{entry.name}/cmdline").read_bytes().decode().split("\0"))
    return out


def demo_dir(kids: dict[int, list[str]]) -> Path:
    """The demo's temp dir, from its nodes' --data-dir (<dir>/data/<name>)."""
    dirs = {Path(cmd[cmd.index("--data-dir") + 1]).parent.parent
            for cmd in kids.values() if "--data-dir" in cmd}
    assert len(dirs) == 1, dirs
    return dirs.pop()


@dataclass
class PtyConsole:
    """ddg-console in a pseudo-terminal, as a person runs it; its screen bytes collected."""

    proc: subprocess.Popen[bytes]
    master: int
    output: bytearray = field(default_factory=bytearray)

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output.extend(data)


@contextlib.contextmanager
def console_in_pty(*args: str) -> Iterator[PtyConsole]:
    master, slave = pty.openpty()
    env = {**ENV, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "36"}
    proc = subprocess.Popen([*CONSOLE, *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, start_new_session=True)
    os.close(slave)
    console = PtyConsole(proc, master)
    reader = threading.Thread(target=console.drain, daemon=True)
    reader.start()
    try:
        yield console
    finally:
        kids = children(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, signal.SIGKILL)
        os.close(master)
        reader.join(5)


def demo_up(console: PtyConsole, nodes: int) -> dict[int, list[str]]:
    """Wait for the console's Redis and NODES nodes, and for the app to show the last node.
    A child counts once it runs its own program: between fork and exec its command line is
    still the console's (the app shows a node it starts from the fork on)."""
    last = f"n{nodes}".encode()

    def up() -> dict[int, list[str]] | None:
        kids = children(console.proc.pid)
        execd = (sum("redis-server" in cmd[0] for cmd in kids.values()) == 1
                 and sum("--data-dir" in cmd for cmd in kids.values()) == nodes)
        return kids if len(kids) == nodes + 1 and execd and last in console.output else None

    return wait_until(up, timeout=20, interval=0.05,
                      what=f"Redis + {nodes} nodes and the console showing them")


def test_a_console_killed_hard_takes_its_demo_with_it() -> None:
    with console_in_pty("--demo", "3") as console:
        kids = demo_up(console, 3)
        assert sum("redis-server" in cmd[0] for cmd in kids.values()) == 1
        assert sum("--data-dir" in cmd for cmd in kids.values()) == 3
        stale = demo_dir(kids)
        assert stale.name.startswith(f"{TEMP_PREFIX}{console.proc.pid}-"), \
            "the demo's temp dir carries its console's pid"
        assert (stale / OWNER_FILE).read_text().split()[0] == str(console.proc.pid)

        t0 = time.monotonic()
        console.proc.kill()  # SIGKILL: no cleanup code runs in the console
        wait_until(lambda: all(gone(k) for k in kids), timeout=1.0, interval=0.002,
                   what=f"the nodes and Redis {sorted(kids)} to die with their console")
        took = time.monotonic() - t0
        console.proc.wait(5)
        print(f"\nnodes and Redis gone {took * 1000:.0f} ms after the console's SIGKILL")
        assert stale.is_dir(), "nothing could remove the temp dir of a console killed hard"

    # The next demo start removes it (and says so), and still cleans up after itself.
    with console_in_pty("--demo", "1") as console:
        kids = demo_up(console, 1)
        assert not stale.exists()
        assert f"removed {stale}".encode() in console.output
        own = demo_dir(kids)
        console.proc.send_signal(signal.SIGTERM)
        assert console.proc.wait(15) == 128 + signal.SIGTERM
        assert all(gone(k) for k in kids)
        assert not own.exists()


def test_stale_dirs_of_live_owners_and_of_others_are_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-a"
    live = tmp_path / f"{TEMP_PREFIX}1-b"  # pid 1 lives as long as the machine
    other = tmp_path / f"{TEMP_PREFIX}abc"  # not a die_with_parent dir
    # a pid reused by another process: the start time in the owner mark tells them apart
    reused = tmp_path / f"{TEMP_PREFIX}1-c"
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone_dir = tmp_path / f"{TEMP_PREFIX}{dead.pid}-d"
    for d in (mine, live, other, reused, gone_dir):
        d.mkdir()
        (d / "data").mkdir()
    (reused / OWNER_FILE).write_text("1 999999999999\n")
    removed = remove_stale_dirs(TEMP_PREFIX, tmp_path)
    assert sorted(removed) == sorted([reused, gone_dir])
    assert mine.is_dir() and live.is_dir() and other.is_dir()


def _keys(client: redis.Redis) -> set[bytes]:
    return {k.encode() if isinstance(k, str) else k for k in client.keys("*")}


def test_demo_on_a_given_redis_deletes_the_cluster_it_created() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.set("not-ours", "1")
        client.hset("ddg:other:members", "x", "{}")
        before = _keys(client)
        demo = Demo(DemoConfig(nodes=2, redis_url=server.url))
        try:
            demo.launch()
            wait_until(lambda: len(client.hkeys("ddg:demo:members")) == 2, timeout=15,
                       what="the demo's nodes to register")
            assert {b"ddg:demo:members", b"ddg:demo:version", b"ddg:demo:id"} <= _keys(client)
            # a removal leaves a tombstone (ddg:demo:removed): that key goes too
            assert demo.supervisor.remove("n2").returncode == 0
            wait_until(lambda: not demo.running("n2"), timeout=15, what="n2 to leave")
            assert b"ddg:demo:removed" in _keys(client)
        finally:
            demo.close()
        assert _keys(client) == before, "the Redis is left exactly as the demo found it"
        assert client.get("not-ours") == b"1"
        client.close()


def test_demo_never_deletes_the_keys_of_a_cluster_that_existed() -> None:
    with LocalCluster(cluster="demo", name_prefix="x") as owner:
        owner.start(1)
        url = owner.redis_url
        assert url is not None
        client = redis.Redis.from_url(url, socket_timeout=2)
        wait_until(lambda: client.hkeys("ddg:demo:members") == [b"x1"], timeout=15,
                   what="x1 to create cluster demo")
        cluster_id = client.get("ddg:demo:id")
        demo = Demo(DemoConfig(nodes=2, redis_url=url))
        try:
            demo.launch()
            wait_until(lambda: len(client.hkeys("ddg:demo:members")) == 3, timeout=15,
                       what="the demo's nodes to join cluster demo")
        finally:
            demo.close()
        assert client.hkeys("ddg:demo:members") == [b"x1"], "only the demo's nodes left"
        assert client.get("ddg:demo:id") == cluster_id
        assert client.exists("ddg:demo:version") == 1
        assert owner.running("x1")
        client.close()


def start_web_console(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*CONSOLE, "--web", "--port", str(port), "--demo", "2"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=ENV,
                                start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_a_web_console_that_ends_stops_every_tab_and_its_demo(tmp_path: Path,
                                                                    sig: int) -> None:
    """SIGTERM: the server tells each tab's console to quit (and its tree SIGTERM) and waits for
    it: the console quits cleanly, its temp dir goes. SIGKILL: the console a tab runs is under a
    guard (ddg.ops.lifeline) that sees the server die and SIGKILLs the tab's whole tree; the
    next demo removes the temp dir it left. Either way its nodes and Redis stop. The "browser"
    here is aiohttp's websocket client on textual-serve's /ws (no Chromium needed)."""
    port = free_port()
    log = tmp_path / "server.log"
    server = start_web_console(port, log)
    tab: int | None = None
    kids: dict[int, list[str]] = {}

    async def pause(seconds: float) -> None:
        await asyncio.sleep(seconds)

    try:
        async with aiohttp.ClientSession() as http:
            ws = None
            deadline = time.monotonic() + 15
            while ws is None:
                assert server.poll() is None, log.read_text()
                try:
                    ws = await http.ws_connect(
                        f"ws://127.0.0.1:{port}/ws?width=120&height=36")
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline, "the web server did not come up"
                    await asyncio.sleep(0.05)
            async def read() -> None:
                # as a browser does: take the screen updates, answer the close handshake
                async for _msg in ws:
                    pass

            async with ws:
                reader = asyncio.create_task(read())
                guard = (await wait_until_async(lambda: list(children(server.pid)),
                                                timeout=10, what="the tab's guard",
                                                pause=pause))[0]
                tab = (await wait_until_async(lambda: list(children(guard)), timeout=10,
                                              what="the tab's console", pause=pause))[0]
                kids = await wait_until_async(
                    lambda: (k if len(k := children(tab)) == 3 else None), timeout=20,
                    what="the tab's Redis and 2 nodes", pause=pause)
                own = demo_dir(kids)
                t0 = time.monotonic()
                server.send_signal(sig)
                await wait_until_async(lambda: gone(tab) and all(gone(k) for k in kids),
                                       timeout=15, what="the tab's console and its demo to end",
                                       pause=pause)
                took = time.monotonic() - t0
                assert await asyncio.to_thread(server.wait, 5) == (
                    0 if sig == signal.SIGTERM else -signal.SIGKILL)
                server_took = time.monotonic() - t0
                await reader
        print(f"\nafter {signal.Signals(sig).name} to the web server, the tab's console and "
              f"demo ended in {took * 1000:.0f} ms, the server in {server_took * 1000:.0f} ms")
        if sig == signal.SIGTERM:
            assert not own.exists(), "the tab's console quit cleanly: its temp dir is gone"
        else:
            assert own in remove_stale_dirs(TEMP_PREFIX, own.parent), "the next demo removes it"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
        for pid in [*(p for p in [tab] if p is not None), *kids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
