"""The views operators expect, driven by the keyboard against the fake cluster: the node table
that scrolls and filters and sorts, a node's detail screen, keys that say whether they apply,
counts and wording that stay true, and a layout that follows the terminal's size."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ddg.client import Reply
from ddg.registry.records import Member
from ddg_testkit.fake_source import FakeFleet, LoggingFleet, healthy_cluster
from ddg_testkit.pilot import settled, texts, until
from ddg_tui.app import ConsoleApp, FilterInput
from ddg_tui.screens import NodeDetailScreen, status_fields
from ddg_tui.source import Exit, FixedClock
from ddg_tui.widgets.eventlog import EventLog
from ddg_tui.widgets.header import Banner, ClusterHeader
from ddg_tui.widgets.keybar import KeyBar
from ddg_tui.widgets.table import NodeTable
from ddg_tui.widgets.wrapped import WrappedLog


def footer(app: ConsoleApp) -> str:
    return app.query_one("#keys", KeyBar).render().plain


class QueuedExits(FakeFleet):
    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.queue: list[Exit] = []

    def exits(self) -> list[Exit]:
        out, self.queue = self.queue, []
        return out


# ---- the node table ---------------------------------------------------------------------


async def test_fifteen_nodes_at_120x30_scroll_with_the_cursor_and_say_what_is_hidden() -> None:
    app = ConsoleApp(source=healthy_cluster(15), fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 30)) as pilot:
        table = await settled(app, pilot)
        assert table.row_count == 15
        for i in range(14):
            await pilot.press("down")
            name = f"n{i + 2}"
            assert table.selected() == name
            above, below = table.out_of_view()
            shown = table.row_count - above - below
            # the cursor's row is on screen, whatever the height
            assert above <= table.cursor_row < above + shown, name
        above, below = table.out_of_view()
        assert above > 0 and below == 0
        assert table.border_title == f"nodes 15 · {above} out of view: ↑{above} ↓0"
        await pilot.press("home")
        assert table.selected() == "n1" and table.out_of_view() == (0, above)
        await pilot.press("end")
        assert table.selected() == "n15"


async def test_filter_by_name_sort_by_column_and_clear() -> None:
    app = ConsoleApp(source=healthy_cluster(15, goose="n12"), fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 30)) as pilot:
        table = await settled(app, pilot)
        await pilot.press("slash")
        assert isinstance(app.focused, FilterInput)
        await pilot.press("n", "1")
        assert table.names == ["n1", "n10", "n11", "n12", "n13", "n14", "n15"]
        assert table.border_title is not None and "filter “n1”" in table.border_title
        await pilot.press("enter")
        assert app.focused is table and table.filter_text == "n1"
        await pilot.press("S")  # by role: the goose first
        assert table.sort_column == ("role", False)
        assert table.names[0] == "n12"
        assert table.get_cell("n12", "role").plain == "★ GOOSE"
        await pilot.press("S", "S", "S", "S", "S")  # term, state, poll, uptime, back to name
        assert table.sort_column == ("name", False)
        assert table.names == ["n1", "n10", "n11", "n12", "n13", "n14", "n15"]
        await pilot.press("escape")  # on the table: clears the filter
        assert table.row_count == 15 and table.filter_text == ""
        await pilot.press("slash", "n", "9", "escape")  # in the box: clears it too
        assert table.row_count == 15 and app.focused is table


# ---- a node's details -------------------------------------------------------------------


async def test_a_redraw_before_the_detail_screen_is_composed_does_not_crash() -> None:
    """The app redraws on a timer; one that came between Enter and the detail screen's
    compose queried widgets not there yet and the console crashed (NoMatches, seen in CI)."""
    app = ConsoleApp(source=healthy_cluster(), fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(app, pilot)
        app.action_detail()  # pushed, not composed yet
        app.render_now()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeDetailScreen)
        await until(pilot, lambda: screen.query_one("#detail-events", EventLog).lines,
                    "the detail screen drawn")


async def test_enter_shows_every_status_field_the_nodes_events_and_its_log_live(
        tmp_path: Path) -> None:
    source = healthy_cluster()
    (tmp_path / "n2.log").write_text("".join(f"old line {i}\n" for i in range(3)))
    fleet = LoggingFleet(sorted(source.members), tmp_path)
    app = ConsoleApp(source=source, fleet=fleet, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(app, pilot)
        await pilot.press("down", "enter")
        screen = app.screen
        assert isinstance(screen, NodeDetailScreen) and screen.node == "n2"
        fields = screen.query_one("#detail-fields").render().plain  # type: ignore[attr-defined]
        st = source.replies["n2"].status
        assert st is not None
        for field, value in status_fields(st):
            assert f"{field}  " in fields and value in fields
        events = screen.query_one("#detail-events", EventLog)
        await until(pilot, lambda: events.lines, "n2's events")
        assert any("n2 is duck" in line for line in events.lines)
        assert not any("n1 is goose" in line for line in events.lines)
        log = screen.query_one("#detail-log", WrappedLog)
        await until(pilot, lambda: log.line_count == 3, "the log's tail")
        with (tmp_path / "n2.log").open("a") as f:
            f.write("a new line, written while the screen is open\n")
        await until(pilot, lambda: "a new line" in log.entries[-1], "the new log line")
        # ] shows the next node; Escape goes back
        await pilot.press("right_square_bracket")
        assert screen.node == "n3"
        await until(pilot, lambda: any("n3 is duck" in line for line in events.lines),
                    "n3's events")
        # the console's keys act on the node shown; the main screen's do nothing here
        await pilot.press("slash", "S", "k")
        assert app.screen is screen and ("kill", "n3") in fleet.calls
        assert ("kill", "n2") not in fleet.calls
        await pilot.press("g")  # the goose's details
        assert screen.node == "n1"
        await pilot.press("escape")
        assert not isinstance(app.screen, NodeDetailScreen)
        assert app.query_one(NodeTable).selected() == "n1"  # g moved the cursor too
        await pilot.press("down", "enter")  # the same screen again, for n2 now
        assert app.screen is screen and screen.node == "n2"
        await until(pilot, lambda: not any("n1 is goose" in line for line in events.lines),
                    "n1's events to go")
        assert table_filter_untouched(app)


def table_filter_untouched(app: ConsoleApp) -> bool:
    table = app.query_one(NodeTable)
    return table.filter_text == "" and table.sort_column == ("name", False)


# ---- keys that cannot apply are not offered ----------------------------------------------


async def test_attach_mode_hides_the_demo_keys_and_still_says_why_if_pressed() -> None:
    app = ConsoleApp(source=healthy_cluster(), fleet=None, clock=FixedClock())
    async with app.run_test(size=(200, 40)) as pilot:
        await settled(app, pilot)
        for action in ("add", "kill", "stop", "start"):
            assert app.check_action(action, ()) is False
        keys = footer(app)
        assert "Kill" not in keys and "Add" not in keys and "Remove" in keys
        assert app.check_action("heal", ()) is None  # nothing to heal: dimmed
        await pilot.press("k")
        assert texts(app)[-1].startswith("cannot kill n1: it was not started by this console")


async def test_demo_keys_follow_the_selected_node() -> None:
    source = healthy_cluster()
    app = ConsoleApp(source=source, fleet=FakeFleet(sorted(source.members)),
                     clock=FixedClock())
    async with app.run_test(size=(200, 40)) as pilot:
        await settled(app, pilot)
        assert (app.check_action("kill", ()), app.check_action("start", ())) == (True, None)
        await pilot.press("k")
        assert (app.check_action("kill", ()), app.check_action("start", ())) == (None, True)
        await pilot.press("k")  # dimmed, and says why
        assert texts(app)[-1] == "n1 is not running; nothing to kill"
        await pilot.press("p")
        await until(pilot, lambda: app.isolated_here, "the isolation")
        assert app.check_action("heal", ()) is True


async def test_isolate_and_heal_are_dimmed_when_the_console_cannot_sign() -> None:
    source = healthy_cluster()
    for name, reply in source.replies.items():
        assert reply.status is not None
        source.replies[name] = replace(reply, status=replace(reply.status, security="hmac"))
    app = ConsoleApp(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(200, 40)) as pilot:
        await settled(app, pilot)
        assert app.check_action("isolate", ()) is None
        await pilot.press("p")
        assert "the cluster signs its messages" in texts(app)[-1]
        assert source.admin_calls == []


async def test_a_second_isolate_says_it_already_is() -> None:
    source = healthy_cluster()
    app = ConsoleApp(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(app, pilot)
        await pilot.press("p")
        await until(pilot, lambda: "n1" in app.isolated_here, "the isolation")
        await pilot.press("p")
        assert texts(app)[-1] == "n1 is already isolated from all peers (h heals)"
        assert len(source.admin_calls) == 1


# ---- counts and wording that stay true ----------------------------------------------------


def mode_shown(app: ConsoleApp) -> str:
    header = app.query_one(ClusterHeader)
    return header.render().plain.splitlines()[0]


async def test_nodes_started_here_follow_add_and_remove() -> None:
    source = healthy_cluster()
    fleet = FakeFleet(sorted(source.members))
    app = ConsoleApp(source=source, fleet=fleet, clock=FixedClock())
    async with app.run_test(size=(200, 40)) as pilot:
        await settled(app, pilot)
        assert "demo: 3 nodes started here" in mode_shown(app)
        await pilot.press("a")
        # the new node registers itself: the fake registry learns of it
        source.members["n4"] = Member("n4", "http://127.0.0.1:7104", 0.0)
        source.version += 1
        source._changed.set()
        await until(pilot, lambda: "n4" in app.model.members, "n4 to join")
        app.render_now()
        assert "demo: 4 nodes started here" in mode_shown(app)
        # n4 has not answered yet: starting, not "no answer"
        await until(pilot, lambda: "n4" in app.model.latest, "a poll of n4")
        app.render_now()
        assert app.query_one(NodeTable).get_cell("n4", "role").plain == "… starting"
        assert not any("n4 does not answer" in t for t in texts(app))
        app.query_one(NodeTable).select("n2")
        await pilot.press("r", "y")
        await until(pilot, lambda: "n2" not in app.model.members, "n2 to leave")
        app.render_now()
        assert "demo: 3 nodes started here" in mode_shown(app)


async def test_an_outside_sigkill_is_not_exited_by_itself() -> None:
    source = healthy_cluster()
    fleet = QueuedExits(sorted(source.members))
    app = ConsoleApp(source=source, fleet=fleet, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(app, pilot)
        fleet.queue.append(Exit(name="n2", code=-9, expected=False))
        source.replies["n2"] = Reply(error="connection refused", latency_ms=0.2)
        await until(pilot, lambda: any("n2 was killed by SIGKILL" in t for t in texts(app)),
                    "the exit's event")
        assert not any("exited by itself" in t for t in texts(app))
        await until(pilot, lambda: not app.model.latest["n2"].reply.ok, "n2's failed poll")
        app.render_now()
        state = app.query_one(NodeTable).get_cell("n2", "state").plain
        assert state.startswith("killed by SIGKILL") and "not from this console" in state


# ---- the layout follows the terminal -------------------------------------------------------


@pytest.mark.parametrize("start", [(200, 50), (80, 24)])
async def test_a_resize_rewraps_the_event_log_and_refits_everything(
        start: tuple[int, int]) -> None:
    app = ConsoleApp(source=healthy_cluster(), fleet=None, clock=FixedClock())
    async with app.run_test(size=start) as pilot:
        await settled(app, pilot)
        app.report("a long line that the event log has to wrap on a narrow terminal, and "
                   "unwrap again on a wide one: " + "word " * 20, notify=False)
        app.render_now()
        for size in [(80, 24), (200, 50), (100, 30)]:
            await pilot.resize_terminal(*size)
            log = app.query_one(EventLog)

            def fits(log: EventLog = log) -> bool:
                width = log.scrollable_content_region.width
                return bool(log.lines) and all(len(line) <= width for line in log.lines) \
                    and any(len(line) > width - 12 for line in log.lines)

            await until(pilot, fits, f"the event log wrapped at {size}")
            header = app.query_one(ClusterHeader).render().plain.splitlines()
            assert all(len(line) <= size[0] for line in header)
            assert "members 3" in header[1] and "goose ★ n1" in header[1]
            table = app.query_one(NodeTable)
            assert {"name", "role", "term", "follows", "state"} <= set(table.visible_columns())
            assert len(footer(app)) <= size[0]


async def test_the_no_quorum_banner() -> None:
    source = healthy_cluster()
    app = ConsoleApp(source=source, fleet=None, clock=FixedClock())
    async with app.run_test(size=(120, 36)) as pilot:
        await settled(app, pilot)
        for name in ("n1", "n2"):
            source.replies[name] = Reply(error="connection refused", latency_ms=0.2)
        await until(pilot, lambda: sum(o.reply.ok for o in app.model.latest.values()) == 1,
                    "two failed polls")
        app.render_now()
        banner: Any = app.query_one(Banner).text
        assert banner is not None and "no quorum: 1 of 3 members answer, 2 needed" in banner


def test_read_tail_follows_a_growing_and_restarted_log(tmp_path: Path) -> None:
    from ddg_tui.screens import LOG_TAIL_BYTES, read_tail

    path = tmp_path / "n1.log"
    assert read_tail(path, None) == ([], 0)  # no log yet
    path.write_text("x" * (LOG_TAIL_BYTES + 10) + "\nkept 1\nkept 2\npartial")
    lines, pos = read_tail(path, None)
    assert lines == ["kept 1", "kept 2"]  # the line cut by the tail's start is left out
    with path.open("a") as f:
        f.write(" line\nnext\n")
    lines, pos = read_tail(path, pos)
    assert lines == ["partial line", "next"]
    path.write_text("restarted\n")  # shorter than where we were: read from its start
    assert read_tail(path, pos)[0] == ["restarted"]
