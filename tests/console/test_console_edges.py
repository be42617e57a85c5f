"""The console's rough edges, against the fake cluster: what the event log says about Redis,
where notifications go, how the detail screen shows a node's log and how the event log wraps,
read off the screen as an operator sees it."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets._toast import Toast

from ddg.client import RedisInfo, Reply, Role
from ddg.registry.records import Member
from ddg_testkit.fake_source import FakeFleet, FakeSource, LoggingFleet, healthy_cluster
from ddg_testkit.pilot import settled, texts, until
from ddg_tui.app import ConsoleApp
from ddg_tui.screens import NodeDetailScreen
from ddg_tui.source import FixedClock
from ddg_tui.widgets.eventlog import EventLog

SIZES = [(80, 24), (120, 30), (200, 50)]
STAMP = re.compile(r"\d\d:\d\d:\d\d\.\d{3}  ")  # FixedClock's: an event's first line


def screen_rows(app: ConsoleApp) -> list[str]:
    """The screen as text, one string per row: what the terminal shows."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()


def inside(app: ConsoleApp, widget: Widget) -> list[str]:
    """The rows of WIDGET's content (inside its border and padding), as shown on the screen:
    whatever covers it included."""
    rows = screen_rows(app)
    r = widget.content_region
    return [rows[y][r.x:r.right] for y in range(r.y, r.bottom)]


def squeezed(text: str) -> str:
    return "".join(text.split())


def set_status(source: FakeSource, name: str, **changes: object) -> None:
    st = source.replies[name].status
    assert st is not None
    source.replies[name] = Reply(status=replace(st, **changes),  # type: ignore[arg-type]
                                 latency_ms=1.0)


# ---- Redis: no recovery without a loss --------------------------------------------------------


async def test_a_node_that_connects_to_redis_after_its_first_answer_never_lost_it() -> None:
    """A node just started answers before its Redis connection is up: that is not a loss, so
    its connection is not "again". A real loss and its end are both logged, once each."""
    source = healthy_cluster()
    set_status(source, "n2", redis=RedisInfo(connected=False))
    app = ConsoleApp(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 30)) as pilot:
        await settled(app, pilot)
        polls = app.model.latest["n2"]
        set_status(source, "n2", redis=RedisInfo(connected=True))
        await until(pilot, lambda: app.model.latest["n2"] is not polls
                    and app.model.latest["n2"].reply.status.redis.connected,  # type: ignore
                    "n2's answer with Redis connected")
        assert not any("Redis" in t for t in texts(app)), texts(app)
        set_status(source, "n2", redis=RedisInfo(connected=False, error="timeout"))
        await until(pilot, lambda: "n2 lost Redis: timeout" in texts(app), "the loss")
        set_status(source, "n2", redis=RedisInfo(connected=True))
        await until(pilot, lambda: "n2 reaches Redis again" in texts(app), "the recovery")
        assert [t for t in texts(app) if "Redis" in t] == ["n2 lost Redis: timeout",
                                                           "n2 reaches Redis again"]


# ---- notifications cover nothing the screen shows only once ------------------------------------


def overlaps(a: Region, b: Region) -> bool:
    return a.overlaps(b)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_notifications_leave_the_history_panel_and_its_failover_line_visible(
        size: tuple[int, int]) -> None:
    """A failover's notification: over the event log (which says the same), never over the
    history panel, whose line about the last failover stays readable at every size."""
    source = healthy_cluster()
    fleet = FakeFleet(sorted(source.members))
    app = ConsoleApp(source=source, fleet=fleet, clock=FixedClock())
    async with app.run_test(size=size, notifications=True) as pilot:
        await settled(app, pilot)
        await pilot.press("k")  # n1, the goose
        source.replies["n1"] = Reply(error="connection refused", latency_ms=0.2)
        set_status(source, "n2", role=Role.GOOSE, term=4, goose="n2", heartbeat_age_ms=None,
                   lease_remaining_ms=90.0)
        set_status(source, "n3", term=4, goose="n2")
        await until(pilot, lambda: app.model.failovers, "the failover")
        await until(pilot, lambda: len(app.screen.query(Toast)) >= 2,
                    "the kill's and the failover's notifications")
        history = app.query_one("#history")
        events = app.query_one(EventLog)

        def laid_out() -> bool:
            """The second toast's first region can be a moment's (CI, two test workers: one
            row below the screen, before the toasts' rack was laid out again)."""
            app.render_now()
            return all(events.region.contains_region(t.region) for t in app.screen.query(Toast))

        await until(pilot, laid_out, "the notifications laid out over the event log")
        for toast in app.screen.query(Toast):
            assert not overlaps(toast.region, history.region), (toast.region, history.region)
            assert events.region.contains_region(toast.region), (toast.region, events.region)
        shown = squeezed("".join(inside(app, history)))
        assert squeezed("last: n1 → n2") in shown, inside(app, history)


# ---- the detail screen shows whole log lines, the newest one too -------------------------------


LONG_LINES = [
    f"2026-01-01 00:00:0{i}.000 INFO ddg.node.member n1: line {i}: now answering goose (term 3) "
    f"after an election of 212 ms, 2 of 3 votes; lease 80 ms" for i in range(8)]


@pytest.mark.parametrize("size", [(80, 24), (120, 30)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_detail_view_shows_whole_log_lines_and_the_newest_one(
        tmp_path: Path, size: tuple[int, int]) -> None:
    (tmp_path / "n1.log").write_text("\n".join(LONG_LINES) + "\n")
    source = healthy_cluster()
    app = ConsoleApp(source=source, fleet=LoggingFleet(sorted(source.members), tmp_path),
                     clock=FixedClock())
    async with app.run_test(size=size) as pilot:
        await settled(app, pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, NodeDetailScreen)
        log = screen.query_one("#detail-log")
        await until(pilot, lambda: squeezed(LONG_LINES[-1]) in squeezed("".join(
            inside(app, log))), "the newest log line, whole, on the screen")
        shown = inside(app, log)
        # every line shown is a whole line or a wrapped part of one: nothing cut at the edge
        text = squeezed("".join(shown))
        whole = [line for line in LONG_LINES if squeezed(line) in text]
        assert whole and whole[-1] == LONG_LINES[-1], shown
        # and a line written now shows too, whole
        with (tmp_path / "n1.log").open("a") as f:
            f.write(LONG_LINES[0].replace("line 0", "line 9") + "\n")
        await until(pilot, lambda: squeezed(LONG_LINES[0].replace("line 0", "line 9"))
                    in squeezed("".join(inside(app, log))), "the new line, whole")


# ---- the event log wraps under its text, not under the timestamps ------------------------------


async def test_a_wrapped_event_hangs_under_its_text_and_keeps_a_url_whole() -> None:
    source = healthy_cluster()
    app = ConsoleApp(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(80, 24)) as pilot:
        await settled(app, pilot)
        source.members["n4"] = Member("n4", "http://127.0.0.1:17409", 1_767_225_004.0)
        source.version += 1
        source._changed.set()
        await until(pilot, lambda: any(t.startswith("n4 joined") for t in texts(app)),
                    "n4 to join")
        app.render_now()
        await pilot.pause()
        log = app.query_one(EventLog)
        lines = log.lines
        first = next(i for i, line in enumerate(lines) if "n4 joined" in line)
        entry = [lines[first]]
        for line in lines[first + 1:]:
            if STAMP.match(line):
                break
            entry.append(line)
        assert len(entry) > 1, lines  # it does wrap at 80 columns
        stamp = len("00:00:00.000  ")
        assert all(line[:stamp].isspace() for line in entry[1:]), entry
        assert any("http://127.0.0.1:17409" in line for line in entry), entry
        assert squeezed("".join(entry)) == squeezed(
            "00:00:00.000 n4 joined at http://127.0.0.1:17409 (version 8)")
        # what the screen shows: the same lines
        rows = [row.rstrip() for row in inside(app, log)]
        assert any(row.strip().startswith("http://127.0.0.1:17409") and row.startswith(" " * 14)
                   for row in rows), rows
