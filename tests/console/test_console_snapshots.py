"""Snapshot tests of the console screens, fed by the deterministic fake cluster.

Every screen is taken at the sizes a terminal has: 80x24 (the smallest the console supports:
the header, the columns that matter and the footer fit), 120x30 and 200x50.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from ddg_testkit import wait_until_async
from ddg_testkit.fake_source import FakeFleet, FakeSource, healthy_cluster, troubled_cluster
from ddg_tui.app import ConsoleApp
from ddg_tui.source import FixedClock
from ddg_tui.widgets.wrapped import WrappedLog

SIZES = [(80, 24), (120, 30), (200, 50)]
SIZE = (120, 30)
# A fixed place, so that the path shown in the detail screen's log panel is always the same.
LOG_DIR = Path(tempfile.gettempdir()) / "ddg-console-snapshots"
# As long as a node's: the detail screen wraps them, whole, and shows the newest.
LOG_LINES = [f"2026-01-01 00:00:0{i}.000 INFO    [n1] ddg.node.member: line {i} of the node's "
             f"log, as long as a real one: now answering duck (term 3)" for i in range(6)]


class LoggingFleet(FakeFleet):
    """A FakeFleet whose nodes have log files (a demo's nodes do)."""

    def log_path(self, name: str) -> Path | None:
        return LOG_DIR / f"{name}.log" if self.owns(name) else None


def make_app(source: FakeSource, *, attached: bool = False) -> ConsoleApp:
    fleet = None if attached else LoggingFleet(sorted(source.members))
    return ConsoleApp(source=source, fleet=fleet, clock=FixedClock())


def settled(app: ConsoleApp, then: Callable[[Pilot[int]], object] | None = None
            ) -> Callable[[Pilot[int]], object]:
    async def run_before(pilot: Pilot[int]) -> None:
        await app.wait_for_membership()
        await wait_until_async(lambda: len(app.model.latest) == len(app.model.members),
                               timeout=5, what="every node's first answer", pause=pilot.pause)
        app.render_now()
        await pilot.pause()
        if then is not None:
            result = then(pilot)
            if result is not None:
                await result  # type: ignore[misc]
    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_healthy(snap_compare, size: tuple[int, int]) -> None:
    """A healthy 3-node demo: n1 is the goose."""
    app = make_app(healthy_cluster())
    assert snap_compare(app, terminal_size=size, run_before=settled(app))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_troubled(snap_compare, size: tuple[int, int]) -> None:
    """Two geese, a node down, an isolated node and a candidate: the loud banners, the state
    column (which says why) and the toast, inside the panels' borders."""
    app = make_app(troubled_cluster())
    assert snap_compare(app, terminal_size=size, run_before=settled(app))


def test_attached_at_80_columns(snap_compare) -> None:
    """Attach mode: the keys that need demo mode (a, k, s, t) are not offered."""
    app = make_app(healthy_cluster(), attached=True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled(app))


def test_fifteen_nodes_scrolled_to_the_last(snap_compare) -> None:
    """15 nodes at 120x30: End moves to n15, the table scrolls, and its title says how many
    nodes are out of view."""
    app = make_app(healthy_cluster(15))
    assert snap_compare(app, press=["end"], terminal_size=SIZE, run_before=settled(app))


def test_filter_and_sort(snap_compare) -> None:
    """`/` filters by name (n1, n10-n15), S sorts by the next column (role: the goose first)."""
    app = make_app(healthy_cluster(15, goose="n12"))
    assert snap_compare(app, press=["slash", "n", "1", "enter", "S"], terminal_size=SIZE,
                        run_before=settled(app))


def test_help_screen(snap_compare) -> None:
    app = make_app(healthy_cluster())
    assert snap_compare(app, press=["question_mark"], terminal_size=SIZE,
                        run_before=settled(app))


def test_confirm_remove_dialog(snap_compare) -> None:
    app = make_app(healthy_cluster())
    assert snap_compare(app, press=["down", "r"], terminal_size=SIZE, run_before=settled(app))


@pytest.mark.parametrize("size", [(80, 24), (120, 30)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_node_detail(snap_compare, size: tuple[int, int]) -> None:
    """Enter on n1: every /status field, the console's events about n1, the tail of its log."""
    LOG_DIR.mkdir(exist_ok=True)
    (LOG_DIR / "n1.log").write_text("\n".join(LOG_LINES) + "\n")
    app = make_app(healthy_cluster())

    async def open_detail(pilot: Pilot[int]) -> None:
        await pilot.press("enter")
        await wait_until_async(
            lambda: app.screen.query_one("#detail-log", WrappedLog).line_count == len(LOG_LINES),
            timeout=5, what="the log's tail", pause=pilot.pause)
        app.render_now()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=settled(app, open_detail))
