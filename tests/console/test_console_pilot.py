"""Pilot tests of the console against a real embedded Redis and real ddg-node processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from ddg.registry.registry import Registry
from ddg_testkit.fake_source import FakeSource, healthy_cluster
from ddg_testkit.pilot import until
from ddg_testkit.procs import alive
from ddg_tui.app import ConsoleApp
from ddg_tui.demo import Demo, DemoConfig
from ddg_tui.poller import LiveSource
from ddg_tui.source import FixedClock
from ddg_tui.views import header_view
from ddg_tui.widgets.table import NodeTable

pytestmark = pytest.mark.integration




def role_cell(app: ConsoleApp, name: str) -> str:
    return app.query_one(NodeTable).get_cell(name, "role").plain


def table_names(app: ConsoleApp) -> set[str]:
    return set(app.query_one(NodeTable).names)


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    d = Demo(DemoConfig(nodes=3, cluster="pilot"))
    d.launch()
    try:
        yield d
    finally:
        d.close()


async def test_demo_add_kill_failover_remove_and_quit(demo: Demo) -> None:
    assert demo.redis_url is not None and demo.dir is not None
    source = LiveSource(redis_url=demo.redis_url, cluster="pilot", timeout=0.4)
    app = ConsoleApp(source=source, fleet=demo)
    pids: list[int] = list(demo.pids.values())
    async with app.run_test(size=(120, 36)) as pilot:
        # The demo comes up with exactly one goose shown.
        await until(pilot, lambda: table_names(app) == {"n1", "n2", "n3"}, "3 rows", 10)
        await until(pilot, lambda: app.model.live_goose() is not None, "a goose", 10)

        def geese_shown() -> list[str]:
            app.render_now()
            return [n for n in ("n1", "n2", "n3") if "GOOSE" in role_cell(app, n)]

        await until(pilot, geese_shown, "a goose on the screen", 5)
        assert len(geese_shown()) == 1, geese_shown()
        assert header_view(app.model, time.monotonic()).banner is None

        # a: a new node joins and gets a row.
        await pilot.press("a")
        await until(pilot, lambda: "n4" in table_names(app), "row n4", 10)
        await until(pilot, lambda: role_cell(app, "n4") == "duck", "n4 answering as duck", 10)
        pid4 = demo.pid("n4")
        assert pid4 is not None
        pids.append(pid4)

        # g then k: kill the goose; another goose appears within a couple of seconds.
        old = app.model.live_goose()
        assert old is not None
        await pilot.press("g")
        assert app.query_one(NodeTable).selected() == old
        t0 = time.monotonic()
        await pilot.press("k")
        await until(pilot, lambda: app.model.live_goose() not in (None, old), "a new goose",
                    3)
        assert time.monotonic() - t0 < 3
        fo = app.model.failovers[-1]
        assert fo.old == old and fo.cause == f"{old} killed"
        assert 0 < fo.duration_ms < 3000
        await until(pilot, lambda: role_cell(app, old) == "✗ killed", "killed row", 2)
        assert not demo.running(old)
        assert any(f"{old} killed → {fo.new} goose after" in e.text for e in app.model.events)
        # The row of the killed node stays: it is still a member.
        assert old in table_names(app)

        # t: the killed node starts again, and says so in one event, not as `goose → duck`.
        app.query_one(NodeTable).select(old)
        await pilot.press("t")
        await until(pilot, lambda: any(e.text.startswith(f"{old} started as ")
                                       for e in app.model.events), f"{old} to start", 10)
        assert not any(f"{old}: goose → duck" in e.text for e in app.model.events)
        new_pid = demo.pid(old)
        assert new_pid is not None
        pids.append(new_pid)

        # A SIGKILL from outside the console is not an exit "by itself".
        outsider = next(n for n in sorted(table_names(app))
                        if n not in (old, app.model.live_goose()))
        outside_pid = demo.pid(outsider)
        assert outside_pid is not None
        os.kill(outside_pid, signal.SIGKILL)
        await until(pilot, lambda: any(
            e.text == f"{outsider} was killed by SIGKILL, not by this console "
                      f"(pid {outside_pid})" for e in app.model.events), "the outside kill", 5)
        assert not any(f"{outsider} exited by itself" in e.text for e in app.model.events)

        # r then y: remove a live duck; its row goes and the registry shrinks.
        victim = next(n for n in sorted(table_names(app))
                      if n not in (old, app.model.live_goose()))
        app.query_one(NodeTable).select(victim)
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await until(pilot, lambda: victim not in table_names(app), f"{victim}'s row to go", 5)
        reg = Registry(demo.redis_url, "pilot")
        try:
            members = (await reg.read()).names
        finally:
            await reg.close()
        assert victim not in members and len(members) == 3
        await until(pilot, lambda: not demo.running(victim), f"{victim} to exit", 8)

        await pilot.press("q")
    # Quitting the console and closing the demo leaves no process and no temp dir.
    demo_dir = demo.dir
    redis_pid = demo.supervisor.redis_pid
    assert redis_pid is not None
    demo.close()
    assert not demo_dir.exists()
    for pid in [*pids, redis_pid]:
        assert not alive(pid), f"pid {pid} survived"


async def test_a_stop_is_one_line_and_a_start_is_no_redis_recovery(demo: Demo) -> None:
    """Each node of a fresh demo answers before it first reaches Redis: no "reaches Redis
    again" (it never lost it). A stop is two lines, in time order: the SIGTERM, then the
    exit with its code and how long it took; not a third one for the exit."""
    assert demo.redis_url is not None
    app = ConsoleApp(source=LiveSource(redis_url=demo.redis_url, cluster="pilot", timeout=0.4),
                     fleet=demo)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: table_names(app) == {"n1", "n2", "n3"}, "3 rows", 10)
        await until(pilot, lambda: app.model.live_goose() is not None, "a goose", 10)
        await until(pilot, lambda: all(
            o.reply.status is not None and o.reply.status.redis.connected
            for o in app.model.latest.values()), "every node connected to Redis", 10)
        # The nodes' Redis lines; not the console's own read (CI, two test workers: it once
        # took over its 0.5 s, and the console said so, then that it was back: both true).
        assert not [e.text for e in app.model.events if "Redis" in e.text and e.node], (
            app.model.events)
        duck = next(n for n in sorted(table_names(app)) if n != app.model.live_goose())
        pid = demo.pid(duck)
        app.query_one(NodeTable).select(duck)
        await pilot.press("s")
        proc = app.model.procs[duck]
        await until(pilot, lambda: proc.code is not None and any(
            e.text.startswith(f"{duck} stopped: ") for e in app.model.events),
            "the stop's end, and its exit reaped", 10)
        about = [e for e in app.model.events if e.node == duck and e.kind == "action"]
        assert [e.text.split(":")[0] for e in about] == [
            f"stopping {duck} (SIGTERM, pid {pid})", f"{duck} stopped"], [e.text for e in about]
        assert about[1].text.startswith(f"{duck} stopped: pid {pid} exited with code 0 after ")
        walls = [e.wall for e in app.model.events]
        assert walls == sorted(walls)


async def test_attached_mode_does_not_touch_processes() -> None:
    source: FakeSource = healthy_cluster()
    app = ConsoleApp(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: len(app.model.latest) == 3, "3 answers", 5)
        await pilot.press("a", "k", "s", "t")
        text = [e.text for e in app.model.events]
        assert any("adding nodes needs demo mode" in t for t in text)
        assert any(t.startswith("cannot kill n1: it was not started by this console") for t in text)
        assert any(t.startswith("cannot stop n1") for t in text)
        assert any(t.startswith("cannot start n1") for t in text)
        # Isolate and heal go to the node's admin API, whoever started it.
        await pilot.press("p")
        await until(pilot, lambda: source.admin_calls, "the partition call", 2)
        await pilot.press("h")
        await until(pilot, lambda: len(source.admin_calls) == 2, "the heal call", 2)
        assert [c[1] for c in source.admin_calls] == ["/admin/partition", "/admin/heal"]
        assert source.admin_calls[0][2] == {"all": True}
        # Escape cancels a removal.
        await pilot.press("r", "escape")
        await pilot.pause()
        assert sorted(source.members) == ["n1", "n2", "n3"]
        assert any(t == "remove n1: cancelled" for t in (e.text for e in app.model.events))
